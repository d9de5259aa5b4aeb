"""Ops that used to fall back to the CPU in ordinary training code (issue 17's breadth list), now GPU
kernels: each against the CPU on fresh random inputs with NaN/inf and edge values, under strict mode
(conftest: NAVITRAIN_WGPU_STRICT=1, so a CPU fallback fails the test)."""
import math

import pytest
import torch
import torch.nn.functional as F

from tests.wgpu.subnormals import cpu_like_adapter

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
    near_poles = torch.randint(-15, 0, (500,)) + (torch.rand(500) - 0.5) * 2e-3  # 1/sin, 1/tan of small values
    for fn, arg in ((torch.erfinv, u), (torch.lgamma, x), (torch.digamma, x), (torch.lgamma, torch.rand(500) * 3),
                    (torch.lgamma, near_poles), (torch.digamma, near_poles)):
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


def _div_operands(n, seed):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, generator=g) * torch.exp2(torch.randint(-40, 40, (n,), generator=g).float())
    b = torch.randn(n, generator=g) * torch.exp2(torch.randint(-40, 40, (n,), generator=g).float())
    b[:500] = 10.0 ** torch.randint(-10, 11, (500,), generator=g).float()  # round(decimals=)'s divisors
    b[500:1000] = torch.exp2(torch.randint(-60, 60, (500,), generator=g).float())
    # exact quotients k: b of at most 16 significant bits, so a = k b (|k| < 64) is exact in float32
    b[1000:1500] = torch.randint(1, 1 << 16, (500,), generator=g).float() * torch.exp2(
        torch.randint(-30, 30, (500,), generator=g).float()) * (torch.randint(0, 2, (500,), generator=g) * 2 - 1)
    a[1000:1500] = b[1000:1500] * torch.randint(-63, 64, (500,), generator=g).float()
    return a, b


@pytest.mark.parametrize("ulps", [0, 1, 2, 3, 4, 7, 300])
def test_div_rn_is_correctly_rounded_from_a_quotient_some_ulps_off(ulps):
    """kernels/wgsl_math.py div_rn against float64 division rounded once to float32 (exact: 53 >= 2*24+2
    bits). Vulkan allows '/' 2.5 ulp (NVIDIA: 1 ulp off for 26% of round(decimals=2)); lavapipe's is exact,
    so the driver's quotient is perturbed here by up to `ulps` ulps before div_rn corrects it (on NVIDIA
    on top of its own error; 300 takes the far-off path of its jump). An adapter that flushes subnormals
    divides by 1e-40 as by 0: the reference then flushes too (tests/wgpu/subnormals.py)."""
    from navitrain.wgpu.ops.elementwise import apply

    n = 1 << 15
    a, b = _div_operands(n, ulps)
    # quotients within 40 ulps of a power of two, either side: perturbed ones cross the binade edge, where
    # the ulp halves or doubles
    g = torch.Generator().manual_seed(100 + ulps)
    near = 2.0 ** torch.randint(-10, 10, (4000,), generator=g).double() * (
        1 + torch.randint(-40, 41, (4000,), generator=g).double() * 2.0 ** -25)
    a[2000:6000] = (near * b[2000:6000].double()).float()
    a[1500:1510] = torch.tensor([NAN, INF, -INF, 0.0, -0.0] * 2)
    b[1510:1520] = torch.tensor([NAN, INF, -0.0, 0.0, 1e-40] * 2)
    off = torch.randint(-ulps, ulps + 1, (n,)).float()
    # div_rn keeps the driver's quotient for zeros, infinities, NaN, subnormal divisors and quotients near
    # the ends of the range: no perturbation there
    off[(a == 0) | ~torch.isfinite(a / b) | ((a / b).abs() < 1e-37) | (b.abs() < 2.0 ** -126)] = 0
    got = apply("div_rn_test", "div_rn_from({a}, {b}, bitcast<f32>(bitcast<i32>({a} / {b}) + i32({c})))",
                [a.to("wgpu"), b.to("wgpu"), off.to("wgpu")], torch.float32, "f32")
    with cpu_like_adapter():
        expected = (a.double() / b.double()).float()
    _close(got, expected, 0)


@pytest.mark.parametrize("op", ["trunc", "floor", "fmod", "remainder"])
def test_division_modes_of_exact_quotients(op):
    """a = k b: '/' 1 ulp low gives trunc(k - ulp) = k - 1 and a - b trunc(a / b) gives b instead of 0: the
    modes divide with div_rn, fmod is exact (as C's). Random operands too, all exact (quotients up to 2^80,
    subnormals: against the CPU under flush-to-zero on an adapter that flushes them, tests/wgpu/subnormals.py)."""
    a, b = _div_operands(4000, 7)
    fn = {"trunc": lambda x, y: torch.div(x, y, rounding_mode="trunc"),
          "floor": lambda x, y: torch.div(x, y, rounding_mode="floor"), "fmod": torch.fmod,
          "remainder": torch.remainder}[op]
    exact = slice(1000, 1500)
    _close(fn(a[exact].to("wgpu"), b[exact].to("wgpu")), fn(a[exact], b[exact]), 0)
    a[:20] = torch.tensor([1e-40, -3e-42, 1e-45, 5e-39, 1e-30] * 4)  # (7 / 1e-39 overflows: the CPU gives NaN)
    b[10:20] = torch.tensor([3e-42, 1e-45, 2.5e-40, -1e-44, 1e-39] * 2)
    got = fn(a.to("wgpu"), b.to("wgpu"))
    with cpu_like_adapter():
        expected = fn(a, b)
    _close(got, expected, 0)


@pytest.mark.parametrize("shrink", [F.hardshrink, F.softshrink])
def test_shrink_gradients(shrink):
    x = _with_edges(torch.randn(500), [NAN, 0.5, -0.5, INF, -INF]).requires_grad_()
    g = torch.randn(500)
    (ref,) = torch.autograd.grad(shrink(x, 0.5), x, g)
    xd = x.detach().to("wgpu").requires_grad_()
    (got,) = torch.autograd.grad(shrink(xd, 0.5), xd, g.to("wgpu"))
    _close(got, ref, 0)


def _same(got, exp):
    assert got.device.type == "wgpu" and got.dtype == exp.dtype, (got.device, got.dtype, exp.dtype)
    torch.testing.assert_close(got.cpu(), exp, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("fn", [torch.cummax, torch.cummin])
def test_cummax_cummin_with_nan_ties_and_gradient(fn):
    x = torch.randn(5, 7, 3)
    x[1, 2, 0], x[2, 3, 1], x[3, 1, 2] = NAN, INF, -INF
    x[0, :, 2] = 1.0  # ties: the later index wins, as on the CPU
    for dim in (0, 1, -1):
        for src in (x, x.transpose(0, 2)):
            ref, got = fn(src, dim), fn(src.to("wgpu"), dim)
            _same(got.values, ref.values)
            _same(got.indices, ref.indices)
    ints = torch.randint(-3, 3, (6, 9))
    for t in (ints, ints > 0):
        ref, got = fn(t, 1), fn(t.to("wgpu"), 1)
        _same(got.values, ref.values)
        _same(got.indices, ref.indices)
    leaf = torch.randn(4, 6, requires_grad=True)
    g = torch.randn(4, 6)
    (ref,) = torch.autograd.grad(fn(leaf, 1).values, leaf, g)
    dleaf = leaf.detach().to("wgpu").requires_grad_()
    (got,) = torch.autograd.grad(fn(dleaf, 1).values, dleaf, g.to("wgpu"))
    _close(got, ref, 1e-6)


@pytest.mark.parametrize("right", [False, True])
def test_searchsorted_and_bucketize(right):
    b = torch.randn(4, 10).sort(-1).values
    b[:, -1] = INF
    v = torch.randn(4, 6)
    v[0, 0], v[1, 1], v[2, 2] = NAN, b[1, 3], -INF  # NaN goes past the end; an exact hit obeys `right`
    _same(torch.searchsorted(b.to("wgpu"), v.to("wgpu"), right=right), torch.searchsorted(b, v, right=right))
    _same(torch.searchsorted(b[0].to("wgpu"), v.to("wgpu"), side="right" if right else "left"),
          torch.searchsorted(b[0], v, side="right" if right else "left"))
    _same(torch.bucketize(v.to("wgpu"), b[0].to("wgpu"), right=right), torch.bucketize(v, b[0], right=right))
    bi, vi = torch.randint(0, 20, (30,)).sort().values, torch.randint(-2, 22, (3, 5))
    _same(torch.searchsorted(bi.to("wgpu"), vi.to("wgpu"), out_int32=True, right=right),
          torch.searchsorted(bi, vi, out_int32=True, right=right))
    u = torch.randn(10)
    _same(torch.searchsorted(u.to("wgpu"), v.to("wgpu"), sorter=u.argsort().to("wgpu")),
          torch.searchsorted(u, v, sorter=u.argsort()))
    _same(torch.searchsorted(b[0].to("wgpu"), 0.25, right=right), torch.searchsorted(b[0], 0.25, right=right))
    c = torch.randint(0, 50, (300,))
    _same(torch.isin(c.to("wgpu"), c[:7].to("wgpu")), torch.isin(c, c[:7]))


def test_histc_and_bincount():
    h = torch.randn(2000)
    h[0], h[1] = NAN, INF  # skipped by an explicit range
    _same(torch.histc(h.to("wgpu"), 13, -2, 2), torch.histc(h, 13, -2, 2))
    _same(torch.histc(h[2:].to("wgpu"), 7), torch.histc(h[2:], 7))  # the data's own range
    c, w = torch.randint(0, 17, (700,)), torch.randn(700)
    _same(torch.bincount(c.to("wgpu")), torch.bincount(c))
    _same(torch.bincount(c.to("wgpu"), minlength=30), torch.bincount(c, minlength=30))
    _close(torch.bincount(c.to("wgpu"), w.to("wgpu")), torch.bincount(c, w), 1e-5)  # atomics: another order
    with pytest.raises(RuntimeError, match="non-negative"):
        torch.bincount((c - 5).to("wgpu"))


def _forward_and_grads(fn, *args, tol=1e-4):
    cpu = [a.detach().clone().requires_grad_(a.is_floating_point()) for a in args]
    dev = [a.detach().to("wgpu").requires_grad_(a.is_floating_point()) for a in args]
    ref, got = fn(*cpu), fn(*dev)
    _close(got, ref.detach(), tol)
    seed = torch.randn(ref.shape)
    ref_g = torch.autograd.grad(ref, [t for t in cpu if t.requires_grad], seed, allow_unused=True)
    got_g = torch.autograd.grad(got, [t for t in dev if t.requires_grad], seed.to("wgpu"), allow_unused=True)
    for r, g in zip(ref_g, got_g):
        assert (r is None) == (g is None)
        if r is not None:
            _close(g, r, tol)


@pytest.mark.parametrize("p", [0.0, 0.5, 1.0, 2.0, 3.0, INF])
def test_cdist_forward_and_backward(p):
    x1, x2 = torch.randn(2, 5, 4), torch.randn(2, 6, 4)
    x2[0, 0] = x1[0, 0]  # a zero distance: its gradient is 0, as on the CPU
    _forward_and_grads(lambda a, b: torch.cdist(a, b, p=p), x1, x2)


@pytest.mark.parametrize("p", [0.0, 0.5, 1.0, 2.0, 3.0, INF])
def test_cdist_of_nan_and_inf_as_the_cpus_kernel(p):
    """NaN differences (NaN inputs, inf - inf): p = 0 counts them as NaN (not 1), p = inf's max skips them
    (std::max from 0), the p = 1 and inf gradients carry NaN through their sign, as on the CPU."""
    x1, x2 = torch.randn(2, 5, 4), torch.randn(2, 6, 4)
    x1[0, 1, 2], x1[0, 3, 1], x1[1, 2, 0], x2[1, 3, 0] = NAN, -INF, INF, INF
    x1[1, 4, :] = NAN  # all NaN: 0 at p = inf
    x2[0, 0] = x1[0, 0]
    _forward_and_grads(lambda a, b: torch.cdist(a, b, p=p), x1, x2)


def test_addbmm():
    _forward_and_grads(lambda i, a, b: torch.addbmm(i, a, b, beta=0.5, alpha=2), torch.randn(5, 7),
                       torch.randn(3, 5, 4), torch.randn(3, 4, 7))
    _forward_and_grads(torch.addbmm, torch.randn(7), torch.randn(3, 5, 4), torch.randn(3, 4, 7))  # broadcast
    ints = [torch.randint(-4, 4, s) for s in ((2, 2), (3, 2, 5), (3, 5, 2))]
    _same(torch.addbmm(*[t.to("wgpu") for t in ints], beta=2, alpha=3), torch.addbmm(*ints, beta=2, alpha=3))
    x, b1, b2 = torch.randn(5, 7), torch.randn(3, 5, 4), torch.randn(3, 4, 7)
    xd = x.to("wgpu")
    xd.addbmm_(b1.to("wgpu"), b2.to("wgpu"))
    _close(xd, x.addbmm_(b1, b2))


@pytest.mark.parametrize("case", [
    lambda x, w, b: F.conv3d(x, w[:3], b[:3]),
    lambda x, w, b: F.conv3d(x, w[:6, :, :2], None, stride=(2, 1, 2), padding=(1, 2, 0), dilation=(2, 1, 1)),
    lambda x, w, b: F.conv3d(x, w[:4, :2], b[:4], groups=2, padding=1),
    lambda x, w, b: F.conv_transpose3d(x, w[:4, :3], b[:3]),
    lambda x, w, b: F.conv_transpose3d(x, w[:4, :3, :2], None, stride=(2, 2, 1), padding=(1, 0, 1),
                                       output_padding=(1, 1, 0), dilation=(1, 2, 1)),
    lambda x, w, b: F.conv_transpose3d(x, w[:4, :2], b[:4], groups=2, stride=2),
], ids=["plain", "strided-padded-dilated", "groups", "transposed", "transposed-strided", "transposed-groups"])
def test_conv3d_and_conv_transpose3d(case):
    x, w, b = torch.randn(2, 4, 6, 7, 5), torch.randn(6, 4, 3, 3, 3), torch.randn(6)
    x[0, 1, 2, 3, 4] = NAN  # spreads through its receptive field as on the CPU
    _forward_and_grads(case, x, w, b)


@pytest.mark.parametrize("pool", [
    lambda t: F.avg_pool3d(t, 3),
    lambda t: F.avg_pool3d(t, (3, 2, 3), (2, 1, 2), (1, 1, 0), ceil_mode=True),
    lambda t: F.avg_pool3d(t, 3, 2, 1, count_include_pad=False, ceil_mode=True),
    lambda t: F.avg_pool3d(t[0], 2),
    lambda t: F.adaptive_avg_pool3d(t, (3, 5, 4)),
    lambda t: F.adaptive_max_pool3d(t, (3, 5, 4), return_indices=True),
    lambda t: F.adaptive_max_pool3d(t[1], 2, return_indices=True),
    lambda t: F.max_pool3d(t, 3, 2, 1, return_indices=True),
    lambda t: F.max_pool3d(t, 2, 2, 0, dilation=2, ceil_mode=True, return_indices=True),
], ids=["avg", "avg-strided-ceil", "avg-no-pad-count", "avg-unbatched", "adaptive-avg", "adaptive-max",
        "adaptive-max-unbatched", "max", "max-dilated-ceil"])
def test_pool3d_forward_and_backward(pool):
    x = torch.randn(2, 3, 7, 8, 9)
    x[0, 0, 1, 1, 1] = NAN
    x[1, 1, 2, :2, :2] = 5.0  # ties: the first maximum's index, as on the CPU
    cpu, dev = x.clone().requires_grad_(), x.to("wgpu").requires_grad_()
    ref, got = pool(cpu), pool(dev)
    ref, got = (ref, got) if isinstance(ref, tuple) else ((ref,), (got,))
    for r, g in zip(ref, got):
        _close(g, r.detach(), 1e-5)
    seed = torch.randn(ref[0].shape)
    _close(torch.autograd.grad(got[0], dev, seed.to("wgpu"))[0], torch.autograd.grad(ref[0], cpu, seed)[0], 1e-5)


@pytest.mark.parametrize("args", [(3, 2, 1), ((2, 3, 2), (1, 2, 3), (1, 0, 1)), (2, 2, 0, 2, True),
                                  ((3, 2, 2), 2, (1, 1, 0), (1, 2, 1), True)],
                         ids=["padded", "anisotropic", "dilated-ceil", "mixed-dilated-ceil"])
def test_max_pool3d_runs_without_torchs_decomposition(monkeypatch, args):
    """torch 2.11 (the H100 run 12) has no decomposition of max_pool3d_with_indices, 2.13 (here) has one:
    planted here, that version's condition must still find a wgpu kernel. NaN (first/last of a window),
    -inf, ties across depth slices and an unbatched input, values and indices exact, gradients."""
    from navitrain.wgpu import dispatch

    real = dispatch._decomposition
    monkeypatch.setattr(dispatch, "_decomposition",
                        lambda f: None if f == torch.ops.aten.max_pool3d_with_indices.default else real(f))
    x = torch.randn(2, 3, 6, 7, 8)
    x[0, 0, 0, 0, 0] = x[0, 1, 3, 2, 5] = x[0, 1, 4, 2, 5] = NAN
    x[1, 2, :3, :3, :3] = -INF
    x[1, 0, 1:4, 2:4, 1:3] = 7.0  # ties over depth, height and width: the first in (d, h, w) order
    for t in (x, x[1]):
        cpu, dev = t.clone().requires_grad_(), t.to("wgpu").requires_grad_()
        (ref, ref_idx), (got, got_idx) = (F.max_pool3d(v, *args, return_indices=True) for v in (cpu, dev))
        _close(got, ref.detach(), 0)
        _close(got_idx, ref_idx, 0)
        seed = torch.randn(ref.shape)
        _close(torch.autograd.grad(got, dev, seed.to("wgpu"))[0], torch.autograd.grad(ref, cpu, seed)[0], 1e-6)


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
@pytest.mark.parametrize("variant", ["plain", "padding_idx", "include_last_offset"])
def test_embedding_bag_forward_and_backward(mode, variant):
    weight = torch.randn(10, 4)
    weight[3, 1] = NAN  # max: a NaN counts only as a bag's first element, as in the CPU's scan
    indices = torch.tensor([1, 2, 4, 5, 4, 3, 2, 9, 0, 0, 7])
    offsets = torch.tensor([0, 2, 2, 6, 9])  # bag 1 is empty: 0
    kwargs = {"mode": mode}
    if variant == "padding_idx":
        kwargs["padding_idx"] = 4
    if variant == "include_last_offset":
        offsets, kwargs["include_last_offset"] = torch.tensor([0, 2, 2, 6, 11]), True
    _forward_and_grads(lambda w: F.embedding_bag(indices.to(w.device), w, offsets.to(w.device), **kwargs), weight,
                       tol=1e-5)


def test_embedding_bag_per_sample_weights_and_2d_input():
    indices, offsets = torch.tensor([1, 2, 4, 5, 4, 3, 2, 9, 0, 0, 7]), torch.tensor([0, 2, 2, 6, 9])
    _forward_and_grads(lambda w, p: F.embedding_bag(indices.to(w.device), w, offsets.to(w.device),
                                                    per_sample_weights=p, mode="sum"),
                       torch.randn(10, 4), torch.randn(11), tol=1e-5)
    _forward_and_grads(lambda w: F.embedding_bag(indices[:8].reshape(2, 4).to(w.device), w, mode="mean"),
                       torch.randn(10, 4), tol=1e-5)


def test_multinomial_draws_from_the_distribution():
    import navitrain.wgpu as nw

    nw.manual_seed(0)
    p = torch.rand(2, 5) + 0.05
    p[0, 1] = 0.0  # never drawn
    draws = torch.multinomial(p.to("wgpu"), 20000, replacement=True)
    assert draws.device.type == "wgpu" and draws.dtype == torch.int64 and draws.shape == (2, 20000)
    for row in range(2):
        freq = torch.bincount(draws[row].cpu(), minlength=5) / 20000
        torch.testing.assert_close(freq, p[row] / p[row].sum(), atol=0.02, rtol=0)
    picks = torch.multinomial(p.to("wgpu"), 4).cpu()  # without replacement: distinct, no zero category
    assert all(len(set(r.tolist())) == 4 for r in picks) and 1 not in picks[0].tolist()
    firsts = torch.stack([torch.multinomial(p[0].to("wgpu"), 1) for _ in range(400)]).cpu().flatten()
    torch.testing.assert_close(torch.bincount(firsts, minlength=5) / 400., p[0] / p[0].sum(), atol=0.08, rtol=0)
    for bad in (torch.tensor([0.5, -0.1]), torch.tensor([0.5, NAN]), torch.tensor([0.0, 0.0])):
        with pytest.raises(RuntimeError, match="multinomial|probability"):
            torch.multinomial(bad.to("wgpu"), 1)


def test_avg_pool3d_of_integers_truncates_once_as_on_the_cpu(lenient):
    import navitrain.wgpu as nw

    x = torch.randint(-50, 50, (2, 2, 5, 6, 5))
    nw.reset_fallback_counts()
    got = F.avg_pool3d(x.to("wgpu"), 3, 2, 1)
    _same(got, F.avg_pool3d(x, 3, 2, 1))  # two truncating 2-D stages gave other values (3 of 24 here)
    # int64 now runs on the GPU (summing stages, one truncating division: ops/pool3d.py), no fallback
    assert nw.fallback_report()["cpu_fallbacks"] == {}


def _ulps(got, ref64):
    """|got - ref| in float32 ulps of the float64 reference."""
    ref = ref64.float().abs()
    return (got.cpu().double() - ref64).abs() / (torch.nextafter(ref, torch.tensor(INF)) - ref).double()


@pytest.mark.parametrize("lo, hi", [(0.0, 1.0), (1.0, 100.0), (100.0, 1e4), (1e4, 1.029e5)])
def test_tan_is_accurate_near_its_poles(lo, hi):
    """kernels/wgsl_trig.py tan_f: Cody-Waite reduction (exact for |x| < 1.03e5) and polynomials, within
    2 ulp of float64 -- also next to the poles, where a driver's tan (Vulkan: sin/cos accuracy, an
    absolute 2^-11) was 0.13 off on the H100 (run 12). Half the values are the floats nearest (k + 1/2) pi."""
    g = torch.Generator().manual_seed(int(hi))
    n = 1 << 13
    x = (torch.rand(n, generator=g) * (hi - lo) + lo) * (torch.randint(0, 2, (n,), generator=g) * 2 - 1)
    k = torch.randint(int(lo / math.pi), max(int(hi / math.pi - 0.5), int(lo / math.pi) + 1), (n // 2,), generator=g)
    x[: n // 2] = ((k.double() + 0.5) * math.pi).float() * torch.sign(x[: n // 2])
    x[:4] = torch.tensor([0.0, -0.0, 1e-30, -1e-38])
    got = torch.tan(x.to("wgpu"))
    assert _ulps(got, torch.tan(x.double())).max() <= 2
    assert torch.equal(torch.signbit(got[:2].cpu()), torch.tensor([False, True]))  # tan(-0) = -0


def test_tan_beyond_the_cody_waite_range_and_its_special_values():
    """Beyond |x| = 1.029e5 tan_f reduces by Payne-Hanek (wgsl_trig.py; the driver's tan was inf there on the
    H100): within 2 ulp of float64 up to 3.4e38, the floats nearest (k + 1/2) pi included. NaN and +-inf
    give NaN, as on the CPU."""
    g = torch.Generator().manual_seed(5)
    x = torch.exp(torch.rand(4000, generator=g, dtype=torch.float64) * (88.7 - 11.55) + 11.55).float()
    k = torch.randint(33000, 1 << 40, (2000,), generator=g).double()
    x[:2000] = ((k + 0.5) * math.pi).float()  # as near a pole as float64's product lands
    x = x * (torch.randint(0, 2, (4000,), generator=g) * 2 - 1)
    assert _ulps(torch.tan(x.to("wgpu")), torch.tan(x.double())).max() <= 2
    special = torch.tensor([NAN, INF, -INF])
    _close(torch.tan(special.to("wgpu")), torch.tan(special), 0)


def test_gamma_reflections_near_the_poles_against_float64():
    """lgamma, digamma (and trigamma, test_polygamma) reflect with sinpi/cospi (x - round(x), exact), so
    near the negative integers they keep relative accuracy whatever the driver's sin."""
    g = torch.Generator().manual_seed(11)
    x = torch.randint(-30, 0, (4000,), generator=g) + (torch.rand(4000, generator=g) - 0.5) * 2e-3
    x[:500] = torch.randint(-30, 0, (500,), generator=g) + (torch.rand(500, generator=g) - 0.5) * 2e-6
    x = x[x != x.round()]  # the nearest floats to the poles, not the poles (tested elsewhere)
    for fn in (torch.lgamma, torch.digamma):
        got, ref = fn(x.to("wgpu")).cpu().double(), fn(x.double())
        assert ((got - ref).abs() / ref.abs().clamp_min(1.0)).max() < 2e-5, fn


@pytest.mark.parametrize("n", [0, 1, 2, 3, 5])
def test_polygamma(n):
    """Against the CPU (float64 for trigamma), near the poles against float64: the CPU's float32
    trigamma takes sin of the rounded product pi * x, up to 100% off there (wgpu reflects with sinpi,
    an exact reduction; run 12 on the H100 was 9% off through its sin). At the non-positive integers
    themselves trigamma is +inf (a pole) where the CPU's sin(pi * x) is not 0: a huge finite number."""
    x = _with_edges(torch.randn(3000) * 5, [NAN, INF, -INF, 0.0, -1.0, -2.0002, 0.5, 1e4, 1e-3, 30.0])
    near = slice(20, 520)
    x[near] = torch.randint(-12, 0, (500,)) + (torch.rand(500) - 0.5) * 2e-3  # near the poles
    got = torch.polygamma(n, x.to("wgpu"))
    exp = torch.polygamma(n, x)
    if n == 1:  # below 0.5, the CPU's float32 is off wherever x is near an integer: float64 everywhere
        exp = torch.polygamma(n, x.double()).float()
        exp[(x <= 0) & (x == x.round()) & x.isfinite()] = INF
    _close(got, exp)
    _close(got[near], torch.polygamma(n, x[near].double()).float())
    ints = torch.randint(-3, 20, (100,))
    exp = torch.special.polygamma(n, ints)
    if n == 1:
        exp[ints <= 0] = INF
    _close(torch.special.polygamma(n, ints.to("wgpu")), exp)


def test_equal():
    a = torch.randn(4, 5)
    b = a.clone()
    b[2, 3] = NAN
    da, db = a.to("wgpu"), b.to("wgpu")
    assert torch.equal(da, a.clone().to("wgpu")) and not torch.equal(da, db) and not torch.equal(db, db)
    assert not torch.equal(da, da[:3]) and torch.equal(da[:0], db[:0])
    assert torch.equal(da.long(), a.long().to("wgpu"))
