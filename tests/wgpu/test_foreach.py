"""`_foreach_*` list ops (one multi-tensor dispatch per op) against the CPU, and the dispatch count
that makes them worth it."""
import pytest
import torch

import navitrain.wgpu as nw
from navitrain.wgpu.runtime import runtime

SIZES = [(3,), (17, 5), (1,), (257,), (4, 4, 4), (1000,)]


def lists(k, seed, positive=False):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(k):
        ts = [torch.randn(s, generator=g) for s in SIZES]
        if positive:
            ts = [t.abs() + 0.1 for t in ts]
        out.append(ts)
    return out


def dev(ts):
    return [t.to("wgpu") for t in ts]


def check(got, want, rtol=1e-6, atol=1e-6):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.device.type == "wgpu"
        torch.testing.assert_close(g.cpu(), w, rtol=rtol, atol=atol)


CASES = [
    ("add_list_alpha", lambda a, b, c: torch._foreach_add(a, b, alpha=0.3)),
    ("add_scalar", lambda a, b, c: torch._foreach_add(a, 1.5)),
    ("add_scalarlist", lambda a, b, c: torch._foreach_add(a, [0.1 * i for i in range(len(a))])),
    ("sub_list", lambda a, b, c: torch._foreach_sub(a, b)),
    ("mul_list", lambda a, b, c: torch._foreach_mul(a, b)),
    ("mul_scalar", lambda a, b, c: torch._foreach_mul(a, -2.0)),
    ("div_list", lambda a, b, c: torch._foreach_div(a, c)),
    ("div_scalarlist", lambda a, b, c: torch._foreach_div(a, [1.0 + i for i in range(len(a))])),
    ("maximum_list", lambda a, b, c: torch._foreach_maximum(a, b)),
    ("clamp_min_scalar", lambda a, b, c: torch._foreach_clamp_min(a, 0.0)),
    ("sqrt", lambda a, b, c: torch._foreach_sqrt(c)),
    ("neg", lambda a, b, c: torch._foreach_neg(a)),
    ("exp", lambda a, b, c: torch._foreach_exp(a)),
    ("reciprocal", lambda a, b, c: torch._foreach_reciprocal(c)),
    ("addcmul_scalar", lambda a, b, c: torch._foreach_addcmul(a, b, c, value=0.5)),
    ("addcdiv_scalarlist", lambda a, b, c: torch._foreach_addcdiv(a, b, c, [0.1 * (i + 1) for i in range(len(a))])),
    ("lerp_scalar", lambda a, b, c: torch._foreach_lerp(a, b, 0.25)),
    ("lerp_list", lambda a, b, c: torch._foreach_lerp(a, b, c)),
]


@pytest.mark.parametrize("name,fn", CASES, ids=[c[0] for c in CASES])
def test_functional_foreach_matches_cpu(name, fn):
    a, b, _ = lists(3, seed=1)
    c = lists(1, seed=2, positive=True)[0]
    want = fn(a, b, c)
    got = fn(dev(a), dev(b), dev(c))
    check(got, want)


@pytest.mark.parametrize("op", ["add_", "mul_", "addcmul_", "addcdiv_", "lerp_", "sqrt_", "zero_"])
def test_inplace_foreach_matches_cpu_in_one_dispatch(op):
    a, b, _ = lists(3, seed=3)
    c = lists(1, seed=4, positive=True)[0]
    da, db, dc = dev(a), dev(b), dev(c)
    calls = {
        "add_": lambda x, y, z: torch._foreach_add_(x, y, alpha=-0.7),
        "mul_": lambda x, y, z: torch._foreach_mul_(x, 0.9),
        "addcmul_": lambda x, y, z: torch._foreach_addcmul_(x, y, y, value=0.01),
        "addcdiv_": lambda x, y, z: torch._foreach_addcdiv_(x, y, z, value=-0.1),
        "lerp_": lambda x, y, z: torch._foreach_lerp_(x, y, 0.1),
        "sqrt_": lambda x, y, z: torch._foreach_sqrt_(z),
        "zero_": lambda x, y, z: torch._foreach_zero_(x),
    }
    calls[op](a, b, c)
    rt = runtime()
    before = rt.dispatch_count
    calls[op](da, db, dc)
    assert rt.dispatch_count - before == 1, "a list op must be one dispatch for tensors in one heap"
    check(da, a)
    check(dc, c)


def test_tensor_scalar_operand_from_the_device():
    a = lists(1, seed=5)[0]
    s = torch.tensor(0.37)
    want = torch._foreach_mul(a, s)
    got = torch._foreach_mul(dev(a), s.to("wgpu"))
    check(got, want)


def test_optimizers_take_the_foreach_path_on_wgpu():
    from torch.optim.optimizer import _default_to_fused_or_foreach

    p = [torch.nn.Parameter(torch.randn(3).to("wgpu"))]
    assert _default_to_fused_or_foreach(p, differentiable=False, use_fused=False) == (False, True)


def test_many_tensors_make_several_table_chunks():
    nw.reset_fallback_counts()
    g = torch.Generator().manual_seed(6)
    a = [torch.randn(int(s), generator=g) for s in torch.randint(1, 50, (1500,), generator=g)]
    b = [torch.randn(t.shape, generator=g) for t in a]
    want = torch._foreach_add(a, b, alpha=2.0)
    got = torch._foreach_add(dev(a), dev(b), alpha=2.0)
    check(got, want)
    assert nw.fallback_report()["total_fallback_calls"] == 0


@pytest.mark.parametrize("op", ["div_", "mul_", "add_", "sub_"])
def test_list_op_broadcasts_one_element_tensors(op):
    """Capturable Adam divides each parameter-shaped tensor by a 0-dim tensor from another list; the
    multi-tensor kernel must read that single element for every position (it once read past it)."""
    (a,) = lists(1, 11)
    scalars = [torch.rand(()) + 0.5 for _ in a]
    want = [t.clone() for t in a]
    getattr(torch, f"_foreach_{op}")(want, scalars)
    got = dev(a)
    getattr(torch, f"_foreach_{op}")(got, dev(scalars))
    check(got, want)


def test_list_op_with_other_broadcasting_shapes_takes_the_per_element_path():
    (a,) = lists(1, 12)
    rows = [torch.randn(t.shape[-1:]) for t in a]  # broadcasts along the last dimension only
    want = torch._foreach_mul(a, rows)
    check(torch._foreach_mul(dev(a), dev(rows)), want)


@pytest.mark.parametrize("amsgrad", [False, True])
def test_capturable_adamw_matches_the_cpu(amsgrad):
    torch.manual_seed(5)
    params = [torch.randn(s, requires_grad=True) for s in SIZES]
    dparams = [p.detach().clone().to("wgpu").requires_grad_() for p in params]
    ocpu = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1, amsgrad=amsgrad, foreach=True)
    odev = torch.optim.AdamW(dparams, lr=1e-2, weight_decay=0.1, amsgrad=amsgrad, foreach=True, capturable=True)
    for step in range(4):
        grads = [torch.randn(s) for s in SIZES]
        for p, d, g in zip(params, dparams, grads):
            p.grad, d.grad = g.clone(), g.to("wgpu")
        ocpu.step()
        odev.step()
    for p, d in zip(params, dparams):
        torch.testing.assert_close(d.detach().cpu(), p.detach(), rtol=1e-5, atol=1e-6)


# Bases and exponents that exercise pow's special cases: negative bases with integer and fractional
# exponents (NaN), zeros of both signs, infinities and NaN on either side.
POW_BASES = torch.tensor([2.5, -1.5, -2.0, 0.0, -0.0, float("inf"), float("-inf"), float("nan"), 1.0, 0.3])
POW_EXPONENTS = torch.tensor([1.7, 3.0, 2.0, -1.0, -3.0, 0.5, 3.0, 0.0, float("nan"), float("inf")])


@pytest.mark.parametrize("overload", ["List", "Scalar", "ScalarList", "ScalarAndTensor", "List_"])
def test_foreach_pow_matches_cpu_in_one_dispatch(overload):
    g = torch.Generator().manual_seed(13)
    a = [torch.randn(s, generator=g) for s in SIZES] + [POW_BASES.clone()]
    b = [torch.randn(s, generator=g).round() for s in SIZES] + [POW_EXPONENTS.clone()]
    calls = {
        "List": lambda x, y: torch._foreach_pow(x, y),
        "Scalar": lambda x, y: torch._foreach_pow(x, 3.0),
        # (-0.5 on the special values: PyTorch's rsqrt there, not C's pow)
        "ScalarList": lambda x, y: torch._foreach_pow(x, [0.5 * i - 1.0 for i in range(len(x) - 1)] + [-0.5]),
        # capturable Adam's bias corrections: beta ** step, one step count per parameter
        "ScalarAndTensor": lambda x, y: torch._foreach_pow(0.9, y),
        "List_": lambda x, y: torch._foreach_pow_(x, y) or x,
    }
    want = calls[overload]([t.clone() for t in a], [t.clone() for t in b])
    da, db = dev(a), dev(b)
    rt = runtime()
    before = rt.dispatch_count
    got = calls[overload](da, db)
    assert rt.dispatch_count - before == 1
    assert len(got) == len(want)
    for x, y in zip(got, want):
        torch.testing.assert_close(x.cpu(), y, rtol=2e-6, atol=1e-6, equal_nan=True)


def test_capturable_adamw_computes_its_bias_corrections_as_list_ops():
    params = [torch.randn(s).to("wgpu").requires_grad_() for s in SIZES * 8]
    opt = torch.optim.AdamW(params, lr=1e-2, foreach=True, capturable=True)
    for p in params:
        p.grad = torch.randn(p.shape).to("wgpu")
    opt.step()
    rt = runtime()
    before = rt.dispatch_count
    opt.step()
    # Every list op is one dispatch: without a list pow, each parameter's beta1 ** step and beta2 ** step
    # were two dispatches more.
    assert rt.dispatch_count - before < len(params)
