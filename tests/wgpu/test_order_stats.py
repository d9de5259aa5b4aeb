"""Order statistics, runs and bucketing against PyTorch on the CPU (issue 17): nanmedian, mode,
unique_consecutive, allclose, nonzero_static (ops/order_stats.py), histogram/histogramdd/bucketize
(ops/histogram.py), segment_reduce and its backward (ops/segments.py). OpInfo samples first, then what
they never reach: NaN, +-inf, ties, all-NaN rows, empty dims, float16/bfloat16 rounding, errors."""
import pytest
import torch

from tests.wgpu import opinfo

F32, F16, BF16, I64, BOOL = torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.bool
DEV = "wgpu"
NAN, INF = float("nan"), float("inf")


def _has_ties(sample) -> bool:
    x = sample.input
    return x.numel() > 0 and torch.unique(x).numel() < x.numel()


# (OpInfo name, variant, dtypes, extra keyword arguments for opinfo.check)
CASES = [
    # The CPU's nth_element leaves which of several equal medians is returned unspecified: ties are
    # checked below by value and by the index naming an equal element.
    ("nanmedian", "", [F32, F16, I64], {"skip": _has_ties}),
    ("masked.median", "", [F32], {}),
    ("mode", "", [F32, I64, BOOL, F16], {}),
    ("unique_consecutive", "", [F32, I64, BOOL], {}),
    ("allclose", "", [F32, F16], {}),
    ("nonzero_static", "", [F32, BOOL, I64], {}),
    ("bucketize", "", [F32, I64], {}),
    ("histogram", "", [F32], {"rtol": 1e-5, "atol": 1e-5}),
    ("histogramdd", "", [F32], {"rtol": 1e-5, "atol": 1e-5}),
    ("_segment_reduce", "lengths", [F32, F16, BF16], {}),
    ("_segment_reduce", "offsets", [F32, BF16], {}),
    ("cov", "", [F32], {"rtol": 1e-4, "atol": 1e-4}),
]


@pytest.mark.parametrize("name,variant,dtypes,kw", CASES, ids=[f"{c[0]}.{c[1]}" if c[1] else c[0] for c in CASES])
def test_opinfo(name, variant, dtypes, kw):
    op = opinfo.find(name, variant)
    for dtype in dtypes:
        assert opinfo.check(op, dtype, max_samples=6, **kw) > 0, f"{name} {dtype}: no sample compared"


def _dev(*ts):
    return [t.to(DEV) for t in ts]


def _rand_with_specials(shape, gen):
    x = torch.randn(shape, generator=gen)
    flat = x.view(-1)
    k = flat.numel()
    pick = torch.randperm(k, generator=gen)[: max(3, k // 6)]
    specials = torch.tensor([NAN, INF, -INF, 0.0, -0.0, NAN])
    flat[pick] = specials[torch.arange(pick.numel()) % specials.numel()]
    return x


def _check_index_names_value(x, dim, values, indices, keepdim=False):
    """indices point at elements equal to values (NaN at NaN)."""
    idx = indices if keepdim else indices.unsqueeze(dim)
    picked = torch.gather(x, dim, idx)
    want = values if keepdim else values.unsqueeze(dim)
    same = (picked == want) | (picked.isnan() & want.isnan())
    assert bool(same.all()), (x, values, indices)


@pytest.mark.parametrize("dtype", [F32, F16, BF16])
def test_nanmedian_nan_inf_ties_and_all_nan_rows(dtype):
    gen = torch.Generator().manual_seed(7)
    x = _rand_with_specials((6, 9), gen).round().to(dtype)   # rounding makes ties
    x[2] = NAN                                                 # an all-NaN row
    x[3, :8] = NAN                                             # one number among NaNs
    for dim, keepdim in [(1, False), (0, True), (-1, True)]:
        v, i = torch.nanmedian(x.to(DEV), dim, keepdim)
        ev, _ = torch.nanmedian(x, dim, keepdim)
        torch.testing.assert_close(v.cpu(), ev, equal_nan=True, rtol=0, atol=0)
        _check_index_names_value(x, dim % 2, v.cpu(), i.cpu(), keepdim)
    torch.testing.assert_close(torch.nanmedian(x.to(DEV)).cpu(), torch.nanmedian(x), equal_nan=True, rtol=0, atol=0)
    # median (propagating NaN) stays the lower median or the row's NaN
    v, i = torch.median(x.to(DEV), 1)
    torch.testing.assert_close(v.cpu(), torch.median(x, 1).values, equal_nan=True, rtol=0, atol=0)


def test_nanmedian_long_rows_and_integers():
    gen = torch.Generator().manual_seed(8)
    x = torch.randn(3, 5000, generator=gen)   # longer than one sort tile: the merge path
    x[0, ::3] = NAN
    v, i = torch.nanmedian(x.to(DEV), 1)
    torch.testing.assert_close(v.cpu(), torch.nanmedian(x, 1).values, rtol=0, atol=0)
    _check_index_names_value(x, 1, v.cpu(), i.cpu())
    xi = torch.randint(-5, 5, (4, 11), generator=gen)
    v, i = torch.nanmedian(xi.to(DEV), 0)
    assert torch.equal(v.cpu(), torch.nanmedian(xi, 0).values)
    _check_index_names_value(xi, 0, v.cpu(), i.cpu())


def test_nanmedian_and_mode_empty_and_scalar():
    for fn in (torch.nanmedian, torch.mode):
        with pytest.raises(IndexError):
            fn(torch.zeros(2, 0, device=DEV), 1)
        v, i = fn(torch.zeros(0, 3, device=DEV), 1)
        assert v.shape == (0,) and i.shape == (0,) and i.dtype == I64
        v, i = fn(torch.tensor(5.0, device=DEV), 0)
        assert v.item() == 5.0 and i.item() == 0 and v.dim() == 0
    assert torch.nanmedian(torch.zeros(0, device=DEV)).isnan().item()


@pytest.mark.parametrize("dtype", [F32, I64, BOOL, BF16])
def test_mode_ties_smallest_value_and_last_index(dtype):
    gen = torch.Generator().manual_seed(9)
    # Rows of up to 16: the CPU's sort is stable there, so its index is exactly defined (the last one).
    x = torch.randint(0, 4, (7, 16), generator=gen).to(dtype)
    for dim, keepdim in [(1, False), (0, True)]:
        v, i = torch.mode(x.to(DEV), dim, keepdim)
        ev, ei = torch.mode(x, dim, keepdim)
        assert torch.equal(v.cpu(), ev) and torch.equal(i.cpu(), ei), (x, v, i, ev, ei)


def test_mode_nan_and_long_rows():
    x = torch.tensor([[NAN, NAN, 1.0, 1.0], [NAN, NAN, NAN, NAN], [INF, -INF, INF, 2.0], [-0.0, 0.0, 0.0, -0.0]])
    v, i = torch.mode(x.to(DEV), 1)
    ev, ei = torch.mode(x, 1)
    torch.testing.assert_close(v.cpu(), ev, equal_nan=True, rtol=0, atol=0)
    assert torch.equal(i.cpu(), ei)
    gen = torch.Generator().manual_seed(10)
    x = torch.randint(0, 30, (3, 3000), generator=gen).float()   # the CPU's index is unspecified here
    v, i = torch.mode(x.to(DEV), 1)
    assert torch.equal(v.cpu(), torch.mode(x, 1).values)
    _check_index_names_value(x, 1, v.cpu(), i.cpu())


@pytest.mark.parametrize("dim", [None, 0, 1])
def test_unique_consecutive_nan_and_dims(dim):
    x = torch.tensor([[1.0, 1.0, NAN, NAN, 2.0, INF, INF], [1.0, 1.0, 3.0, 3.0, 2.0, INF, INF],
                      [1.0, 1.0, 3.0, 3.0, 2.0, INF, INF]])
    got = torch.unique_consecutive(x.to(DEV), return_inverse=True, return_counts=True, dim=dim)
    want = torch.unique_consecutive(x, return_inverse=True, return_counts=True, dim=dim)
    for g, w in zip(got, want):
        torch.testing.assert_close(g.cpu(), w, equal_nan=True, rtol=0, atol=0)
    empty = torch.unique_consecutive(torch.zeros(0, device=DEV), return_inverse=True, return_counts=True)
    assert [t.numel() for t in empty] == [0, 0, 0]


def test_allclose_nonzero_static_bucketize_edges():
    a = torch.tensor([1.0, NAN, INF, -INF, 0.0])
    b = a + torch.tensor([1e-7, 0.0, 0.0, 0.0, 1e-9])
    for kw in ({}, {"equal_nan": True}, {"rtol": 0.0, "atol": 0.0, "equal_nan": True}):
        assert torch.allclose(*_dev(a, b), **kw) == torch.allclose(a, b, **kw), kw
    m = torch.tensor([[0.0, NAN, 1.0], [0.0, 0.0, -INF]])
    for size in (0, 2, 3, 6):
        got = torch.nonzero_static(m.to(DEV), size=size, fill_value=-4)
        assert torch.equal(got.cpu(), torch.nonzero_static(m, size=size, fill_value=-4)), size
    bounds = torch.tensor([-1.0, 0.0, 0.0, 2.0, INF])
    vals = torch.tensor([[-2.0, -1.0, 0.0, 1.0], [2.0, INF, NAN, -INF]])
    for right in (False, True):
        for out_int32 in (False, True):
            got = torch.bucketize(*_dev(vals, bounds), right=right, out_int32=out_int32)
            assert torch.equal(got.cpu(), torch.bucketize(vals, bounds, right=right, out_int32=out_int32))
    ib = torch.tensor([-1, 0, 2, 5])
    for s in (0.5, 2, -3):
        assert torch.equal(torch.bucketize(s, ib.to(DEV)).cpu(), torch.bucketize(s, ib)), s
    with pytest.raises(RuntimeError, match="1 dimension"):
        torch.bucketize(vals.to(DEV), bounds.reshape(1, -1).to(DEV))


def test_histogram_edges_nan_weights_density():
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(200, generator=gen)
    x[:5] = torch.tensor([NAN, INF, -INF, 1.0, -1.0])
    w = torch.rand(200, generator=gen)
    for kw in ({"range": (-1.0, 1.0)}, {"range": (-1.0, 1.0), "weight": w, "density": True}):
        got = torch.histogram(x.to(DEV), 8, **{k: (v.to(DEV) if torch.is_tensor(v) else v) for k, v in kw.items()})
        want = torch.histogram(x, 8, **kw)
        torch.testing.assert_close(got[0].cpu(), want[0], rtol=1e-5, atol=1e-6)
        assert torch.equal(got[1].cpu(), want[1])
    # Points exactly on the (float32 linspace) edges land in the CPU's bins; the last edge is inclusive.
    y = torch.linspace(-3, 5, 17)
    got, edges = torch.histogram(y.to(DEV), 16)
    want = torch.histogram(y, 16)
    assert torch.equal(got.cpu(), want.hist) and torch.equal(edges.cpu(), want.bin_edges)
    # Non-finite data without a range: the CPU's error.
    with pytest.raises(RuntimeError, match="not finite"):
        torch.histogram(x.to(DEV), 4)
    # An all-equal input widens the range by 0.5 each side; an empty input counts in [0, 1].
    for z in (torch.full((5,), 2.5), torch.zeros(0)):
        got = torch.histogram(z.to(DEV), 3)
        want = torch.histogram(z, 3)
        assert torch.equal(got[0].cpu(), want[0]) and torch.equal(got[1].cpu(), want[1])


def test_histogramdd_bins_tensors_and_counts():
    gen = torch.Generator().manual_seed(12)
    pts = torch.randn(4, 25, 3, generator=gen)
    pts[0, 0, 1] = NAN
    w = torch.rand(4, 25, generator=gen)
    edges = [torch.tensor([-1.0, 0.0, 1.0]), torch.tensor([-2.0, -0.5, 0.0, 0.5, 2.0]), torch.tensor([-3.0, 3.0])]
    got = torch.histogramdd(pts.to(DEV), [e.to(DEV) for e in edges], weight=w.to(DEV), density=True)
    want = torch.histogramdd(pts, edges, weight=w, density=True)
    torch.testing.assert_close(got.hist.cpu(), want.hist, rtol=1e-5, atol=1e-6)
    finite = pts[1:]
    got = torch.histogramdd(finite.to(DEV), [3, 2, 4])
    want = torch.histogramdd(finite, [3, 2, 4])
    assert torch.equal(got.hist.cpu(), want.hist)
    for g, e in zip(got.bin_edges, want.bin_edges):
        assert torch.equal(g.cpu(), e)


def _segment(dev, data, reduce, grad_out, **kw):
    d = data.detach().to(dev).requires_grad_(True)
    kw = {k: (v.to(dev) if torch.is_tensor(v) else v) for k, v in kw.items()}
    out = torch.segment_reduce(d, reduce, **kw)
    (g,) = torch.autograd.grad(out, d, grad_out.to(out.dtype).to(dev))
    return out.detach().cpu(), g.cpu()


@pytest.mark.parametrize("reduce", ["sum", "mean", "max", "min", "prod"])
def test_segment_reduce_special_values_empty_segments_initial(reduce):
    gen = torch.Generator().manual_seed(13)
    data = torch.randn(3, 7, 2, generator=gen)
    data[0, 1, 0], data[1, 2, 1], data[2, 3, 0], data[2, 4, 1] = NAN, INF, 0.0, -INF
    data[1, 0, 0] = data[1, 1, 0]   # a tie for max/min
    lengths = torch.tensor([[2, 0, 5], [3, 3, 1], [1, 2, 4]])
    offsets = torch.cat([torch.zeros(3, 1, dtype=I64), lengths.cumsum(-1)], -1)
    grad_out = torch.randn(3, 3, 2, generator=gen)
    for dtype in (F32, F16, BF16):
        for kw in ({"lengths": lengths}, {"offsets": offsets}, {"lengths": lengths, "initial": 2.0}):
            got = _segment(DEV, data.to(dtype), reduce, grad_out, axis=1, **kw)
            want = _segment("cpu", data.to(dtype), reduce, grad_out, axis=1, **kw)
            for g, w in zip(got, want):
                torch.testing.assert_close(g, w, equal_nan=True, rtol=0, atol=0)
    with pytest.raises(RuntimeError, match="sum to"):
        torch.segment_reduce(data.to(DEV), reduce, lengths=torch.tensor([[1, 1, 1]] * 3, device=DEV), axis=1)
