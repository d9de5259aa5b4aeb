"""Scans (cumsum, cumprod, logcumsumexp) and sorting/selection (sort, argsort, topk, kthvalue, median,
unique) against PyTorch on the CPU: OpInfo samples, then the paths OpInfo's small samples never reach:
rows longer than one workgroup block (multi-pass scans, multi-tile merge sorts, topk's tile pruning),
long non-last dims, more workgroups than one grid dimension holds, ties (stable order), NaN and -0.0
ordering, 64-bit keys, float16, and ops whose tie order PyTorch leaves unspecified (checked for
consistency instead of equality)."""
import pytest
import torch

import navitrain.wgpu as nw
from tests.wgpu import opinfo

F32, F16, I64 = torch.float32, torch.float16, torch.int64
DEV = "wgpu"


def _has_int64() -> bool:
    # Without shader-int64 the device computes int64 in 32 bits (values beyond are refused on upload).
    return "shader-int64" in nw.adapter_info()["features"]


def _has_ties(sample) -> bool:
    x = sample.input
    return x.numel() > 0 and torch.unique(x).numel() < x.numel()


def unstable_with_ties(sample) -> bool:
    # Where PyTorch does not promise stability, the CPU's order of equal elements is its own.
    return not sample.kwargs.get("stable", False) and _has_ties(sample)


# (OpInfo name, variant, dtypes, extra keyword arguments for opinfo.check)
CASES = [
    ("cumsum", "", [F32, I64, F16], {"rtol": 1e-4, "atol": 1e-4}),
    ("cumprod", "", [F32, I64], {"rtol": 1e-4, "atol": 1e-4}),
    # The CPU accumulates float32 scans in double; on inputs of magnitude 1e4 (one of the samples) the
    # gradient's exp(a - b) turns one float32 rounding of the forward into a 1e-3 relative difference.
    ("logcumsumexp", "", [F32], {"rtol": 1e-3, "atol": 1e-3}),
    ("sort", "", [F32, I64, F16, torch.bool], {"skip": unstable_with_ties}),
    ("argsort", "", [F32, torch.int32], {"skip": unstable_with_ties}),
    ("msort", "", [F32], {}),
    ("topk", "", [F32, F16], {"skip": _has_ties}),
    ("kthvalue", "", [F32], {"skip": _has_ties}),
    ("median", "", [F32], {"skip": _has_ties}),
]


@pytest.mark.parametrize("name,variant,dtypes,kw", CASES,
                         ids=[f"{c[0]}{'.' + c[1] if c[1] else ''}" for c in CASES])
def test_op_matches_cpu(name, variant, dtypes, kw):
    op = opinfo.find(name, variant)
    for dtype in dtypes:
        checked = opinfo.check(op, dtype, **kw)
        assert checked > 0, f"{name}: no samples for {dtype}"


def _close(got, exp, **kw):
    got = got.cpu()
    assert got.dtype == exp.dtype and got.shape == exp.shape, (got.dtype, exp.dtype, got.shape, exp.shape)
    if exp.dtype.is_floating_point:
        torch.testing.assert_close(got, exp, equal_nan=True, **kw)
    else:
        assert torch.equal(got, exp)


# -- scans -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape,dim", [((3, 100_000), 1), ((100_000, 3), 0), ((40, 3000, 2), 1), ((7, 70), 1)],
                         ids=["long-rows", "long-columns", "middle-dim", "short-rows"])
def test_cumsum_long_and_strided(shape, dim):
    torch.manual_seed(0)
    x = torch.rand(shape) - 0.5  # a running sum that stays small, so float32 rounding stays comparable
    _close(torch.cumsum(x.to(DEV), dim), torch.cumsum(x, dim), rtol=1e-4, atol=1e-4)
    t = x.transpose(0, -1)  # the same scan over a non-contiguous view
    last = len(shape) - 1
    tdim = {0: last, last: 0}.get(dim, dim)
    _close(torch.cumsum(t.to(DEV), tdim), torch.cumsum(t, tdim), rtol=1e-4, atol=1e-4)


def test_scan_with_more_workgroups_than_one_grid_dim():
    x = torch.randint(-3, 4, (4_300_000, 2), dtype=torch.int32)  # 67k workgroups of 64 row-walking threads
    _close(torch.cumsum(x.to(DEV), 1), torch.cumsum(x, 1))


def test_integer_scans_promote_and_dtype_argument():
    x = torch.randint(-4, 5, (5, 300), dtype=torch.int8)
    _close(torch.cumsum(x.to(DEV), 1), torch.cumsum(x, 1))                    # int64 result
    _close(torch.cumsum(x.bool().to(DEV), 1), torch.cumsum(x.bool(), 1))
    _close(torch.cumsum(x.to(DEV), 1, dtype=F32), torch.cumsum(x, 1, dtype=F32))
    if _has_int64():
        big = torch.full((4000,), 2**20, dtype=I64)                            # past int32
        _close(torch.cumsum(big.to(DEV), 0), torch.cumsum(big, 0))
    p = torch.randint(1, 3, (2, 40))
    _close(torch.cumprod(p.to(DEV), 1), torch.cumprod(p, 1))
    y = torch.rand(3, 8)
    yd = y.to(DEV)
    yd.cumsum_(1)
    _close(yd, y.cumsum(1))


def test_cumprod_backward_with_zeros_and_logcumsumexp_specials():
    x = torch.tensor([[2.0, 0.0, 3.0, 0.5, 0.0, 4.0], [1.5, -2.0, 0.25, 3.0, 1.0, 2.0]])
    xc, xd = x.clone().requires_grad_(), x.to(DEV).requires_grad_()
    torch.cumprod(xc, 1).sum().backward()
    torch.cumprod(xd, 1).sum().backward()
    _close(xd.grad, xc.grad)
    inf, nan = float("inf"), float("nan")
    s = torch.tensor([[-inf, -inf, 1.0, inf, 2.0], [0.0, nan, 1.0, -inf, 3.0], [-inf, -inf, -inf, -inf, -inf]])
    _close(torch.logcumsumexp(s.to(DEV), 1), torch.logcumsumexp(s, 1))
    h = torch.randn(4, 2000).half()
    _close(torch.logcumsumexp(h.to(DEV), 1), torch.logcumsumexp(h, 1), rtol=2e-3, atol=2e-3)


# -- sorting -----------------------------------------------------------------------------------------
def _same_sort(x, **kw):
    v, i = torch.sort(x.to(DEV), **kw)
    ev, ei = torch.sort(x, **kw)
    _close(v, ev)
    _close(i, ei)


@pytest.mark.parametrize("n", [5, 2048, 2049, 9000], ids=["one-tile", "full-tile", "tile-plus-one", "merge"])
def test_stable_sort_with_ties_nan_and_signed_zeros(n):
    torch.manual_seed(n)
    x = torch.randint(-6, 6, (3, n)).float()
    x[x == 5] = float("nan")
    x[x == 4] = -0.0
    x[x == 3] = float("-inf")
    for descending in (False, True):
        _same_sort(x, dim=1, stable=True, descending=descending)
    _same_sort(x.t(), dim=0, stable=True)  # along a non-last, strided dim


def test_sort_many_short_rows_and_64_bit_keys():
    torch.manual_seed(1)
    _same_sort(torch.randint(0, 4, (3000, 9)), dim=1, stable=True)         # rows packed into tiles
    span = 2**40 if _has_int64() else 2**30
    k = torch.randint(-span, span, (2, 1500))
    k[:, ::3] = 7
    _same_sort(k, dim=1, stable=True, descending=True)                     # two-word keys, ties
    _same_sort(torch.randn(4, 700).half(), dim=1, stable=True)
    _same_sort(torch.rand(3, 9) > 0.5, dim=1, stable=True)
    _same_sort(torch.tensor(2.5), dim=0)


def test_unstable_sort_and_topk_with_ties_are_consistent():
    # PyTorch leaves the order of equal elements open here: values must match and indices must point at them.
    x = torch.randint(0, 3, (4, 3000))
    v, i = torch.sort(x.to(DEV), dim=1, descending=True)
    assert torch.equal(v.cpu(), torch.sort(x, dim=1, descending=True).values)
    assert torch.equal(x.gather(1, i.cpu()), v.cpu())
    assert torch.equal(i.cpu().sort(1).values, torch.arange(3000).expand(4, 3000))
    tv, ti = torch.topk(x.to(DEV), 7, 1)
    assert torch.equal(tv.cpu(), torch.topk(x, 7, 1).values)
    assert torch.equal(x.gather(1, ti.cpu()), tv.cpu())


@pytest.mark.parametrize("n,k,largest", [(50_000, 5, True), (5000, 700, False), (3000, 1, False)],
                         ids=["pruned", "merge-sorted", "k1"])
def test_topk_long_rows(n, k, largest):
    torch.manual_seed(k)
    x = torch.randn(3, n)
    v, i = torch.topk(x.to(DEV), k, 1, largest=largest)
    ev, ei = torch.topk(x, k, 1, largest=largest)
    _close(v, ev)
    _close(i, ei)


def test_kthvalue_and_median_long_rows_and_nan():
    torch.manual_seed(2)
    x = torch.randn(3, 5001)
    for k in (1, 2500, 5001):
        v, i = torch.kthvalue(x.to(DEV), k, 1, keepdim=True)
        ev, ei = torch.kthvalue(x, k, 1, keepdim=True)
        _close(v, ev)
        _close(i, ei)
    y = torch.randn(4, 31)
    y[1, 7] = y[1, 20] = y[3, 0] = float("nan")
    v, i = torch.median(y.to(DEV), 1)
    ev, ei = torch.median(y, 1)
    _close(v, ev)
    _close(i, ei)
    _close(torch.median(y.to(DEV)), torch.median(y))
    _close(torch.median(x.to(DEV)), torch.median(x))


def test_unique_sorted_with_inverse_and_counts():
    x = torch.randint(-50, 50, (3, 2000))
    got = torch.unique(x.to(DEV), return_inverse=True, return_counts=True)
    for g, e in zip(got, torch.unique(x, return_inverse=True, return_counts=True)):
        _close(g, e)
