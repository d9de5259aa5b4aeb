"""Ops that used to fall back to the CPU in ordinary training code (issue 17's breadth list), now GPU
kernels: each against the CPU on fresh random inputs with NaN/inf and edge values, under strict mode
(conftest: NAVITRAIN_WGPU_STRICT=1, so a CPU fallback fails the test)."""
import pytest
import torch
import torch.nn.functional as F

NAN, INF = float("nan"), float("inf")


def _close(got, exp, tol=1e-4):
    assert got.device.type == "wgpu"
    assert got.dtype == exp.dtype, (got.dtype, exp.dtype)
    torch.testing.assert_close(got.cpu(), exp, rtol=tol, atol=tol, equal_nan=True)


def _with_edges(x, edges):
    x = x.clone()
    x[: len(edges)] = torch.tensor(edges, dtype=x.dtype)
    return x


def test_special_functions_match_the_cpu():
    x = _with_edges(torch.randn(3000) * 4, [NAN, INF, -INF, 0.0, -0.0, -1.0, -2.0, 1.0, 2.0, 1e-6, 40.0])
    u = _with_edges(torch.rand(3000) * 2 - 1, [1.0, -1.0, 0.0, NAN, 1.5, -1.5, 0.9999])
    for fn, arg in ((torch.erfinv, u), (torch.lgamma, x), (torch.digamma, x), (torch.lgamma, torch.rand(500) * 3)):
        _close(fn(arg.to("wgpu")), fn(arg))
    ints = torch.randint(-5, 30, (200,))
    _close(torch.lgamma(ints.to("wgpu")), torch.lgamma(ints))  # integers give float, as on the CPU
    _close(torch.digamma(ints.to("wgpu")), torch.digamma(ints))
    _close(torch.erfinv(u.half().to("wgpu")), torch.erfinv(u.half()), 1e-3)


def test_ieee_binary_ops_match_the_cpu():
    a = _with_edges(torch.randn(3000) * 3, [NAN, 1.0, INF, -INF, 0.0, -0.0, 2.0, 5e37])
    b = _with_edges(torch.randn(3000) * 3, [2.0, NAN, NAN, 1.0, -0.0, 0.0, 2.0, 5e37])
    da, db = a.to("wgpu"), b.to("wgpu")
    for fn in (torch.fmax, torch.fmin, torch.copysign, torch.nextafter):
        _close(fn(da, db), fn(a, b), 0)  # exact: selections and bit operations
    _close(torch.hypot(da, db), torch.hypot(a, b), 1e-6)  # scaled: within an ulp or two
    assert torch.equal(torch.signbit(da).cpu(), torch.signbit(a))
    ia, ib = torch.randint(-9, 9, (100,)), torch.randint(-9, 9, (100,))
    assert torch.equal(torch.fmax(ia.to("wgpu"), ib.to("wgpu")).cpu(), torch.fmax(ia, ib))
    _close(torch.copysign(ia.to("wgpu"), ib.to("wgpu")), torch.copysign(ia, ib), 0)
    _close(torch.copysign(da, -1.5), torch.copysign(a, -1.5), 0)
    with pytest.raises(NotImplementedError, match="Long"):
        torch.hypot(ia.to("wgpu"), ib.to("wgpu"))


@pytest.mark.parametrize("decimals", [2, 0, -1])
def test_round_decimals(decimals):
    x = _with_edges(torch.randn(2000) * 300, [NAN, INF, -INF, 0.125, 2.5, -2.5, 1.005])
    _close(torch.round(x.to("wgpu"), decimals=decimals), torch.round(x, decimals=decimals), 0)


@pytest.mark.parametrize("shrink", [F.hardshrink, F.softshrink])
def test_shrink_gradients(shrink):
    x = _with_edges(torch.randn(500), [NAN, 0.5, -0.5, INF, -INF]).requires_grad_()
    g = torch.randn(500)
    (ref,) = torch.autograd.grad(shrink(x, 0.5), x, g)
    xd = x.detach().to("wgpu").requires_grad_()
    (got,) = torch.autograd.grad(shrink(xd, 0.5), xd, g.to("wgpu"))
    _close(got, ref, 0)
