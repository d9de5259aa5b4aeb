"""Direct grouped convolution kernels (navitrain.wgpu.kernels.conv_grouped) against float64 autograd on the
CPU: forward, grad-input, grad-weight and grad-bias over groups 2/4/8/32, 1 to 32 channels a group in and
out (counts that are not a multiple of the 8 channels a thread computes too), strides 1 and 2,
dilation, padding, 3x3/5x5 and non-square kernels, NCHW and channels_last, strided views, 16-bit
storage, transposed and 1-D layers; NaN and inf as the CPU propagates them; a repeatable
grad-weight; which kernels the chooser runs (with tuning off, and both tuner candidates); the
conv-only GEMM tiles the tuner may pick."""
import contextlib

import pytest
import torch
import torch.nn.functional as F

from navitrain.wgpu.kernels import conv_grouped, gemm_tuning
from navitrain.wgpu.kernels.conv import choose
from navitrain.wgpu.runtime import runtime
from tests.wgpu.conv_checks import assert_close_to_reference as _close
from tests.wgpu.conv_checks import force_tuner_choice

CASES = [  # N, C, OC, H, W, kernel, stride, padding, dilation, groups, channels_last, bias
    (2, 4, 6, 9, 10, 3, 1, 1, 1, 2, False, True),       # 2 in / 3 out a group: a partly used channel block
    (1, 16, 16, 8, 9, 3, 2, 1, 1, 4, True, False),      # ResNeXt-like 4/4, stride 2, channels_last
    (1, 8, 16, 7, 8, 5, 1, 2, 1, 8, False, True),       # 1 in / 2 out (a depthwise multiplier), 5x5
    (1, 64, 64, 6, 5, 3, 1, 1, 1, 32, True, True),      # 32 groups of 2
    (1, 64, 64, 5, 6, 3, 2, 2, 2, 2, False, False),     # 32 / 32: four 8-channel blocks; dilation 2
    (2, 24, 36, 9, 7, 5, 2, 2, 1, 4, True, True),       # 6 in / 9 out, 5x5 stride 2
    (1, 12, 12, 10, 11, 3, 1, 2, 2, 3, True, False),    # dilation, channels_last
    (1, 16, 8, 7, 9, (3, 1), (1, 2), (1, 0), 1, 4, False, True),   # non-square kernel and stride
    (1, 32, 32, 4, 4, 3, 1, 0, 1, 4, False, True),      # 8 / 8 (RegNet's group width), no padding
]


def _pair(v):
    return tuple(v) if isinstance(v, tuple) else (v, v)


def _layer(seed, N, C, OC, H, W, k, g, bias=True):
    gen = torch.Generator().manual_seed(seed)
    kh, kw = _pair(k)
    x = torch.randn(N, C, H, W, generator=gen, dtype=torch.float64)
    w = torch.randn(OC, C // g, kh, kw, generator=gen, dtype=torch.float64)
    b = torch.randn(OC, generator=gen, dtype=torch.float64) if bias else None
    return x, w, b


def _reference(x, w, b, s, p, d, g, gy=None):
    """float64 autograd on the CPU (a fresh random grad-output unless given)."""
    xs, ws = x.clone().requires_grad_(), w.clone().requires_grad_()
    bs = b.clone().requires_grad_() if b is not None else None
    y = F.conv2d(xs, ws, bs, s, p, d, g)
    if gy is None:
        gy = torch.randn(y.shape, dtype=torch.float64)
    y.backward(gy)
    return y.detach(), gy, xs.grad, ws.grad, (bs.grad if bs is not None else None)


def _on_wgpu(x, w, b, s, p, d, g, gy, channels_last=False, dtype=torch.float32):
    xd = x.to(dtype)
    gyd = gy.to(dtype)
    if channels_last:
        xd = xd.contiguous(memory_format=torch.channels_last)
        gyd = gyd.contiguous(memory_format=torch.channels_last)
    xd = xd.to("wgpu").requires_grad_()
    wd = w.to(dtype).to("wgpu").requires_grad_()
    bd = b.to(dtype).to("wgpu").requires_grad_() if b is not None else None
    y = F.conv2d(xd, wd, bd, s, p, d, g)
    y.backward(gyd.to("wgpu"))
    return y.detach().cpu(), xd.grad.cpu(), wd.grad.cpu(), (bd.grad.cpu() if bd is not None else None), y


def _grouped_kernels():
    return {k[0] for k in runtime()._kernels if isinstance(k, tuple) and str(k[0]).startswith("grouped_")}


@pytest.fixture
def always_direct(monkeypatch):
    """The direct kernels for every eligible pass, whatever prefer_direct's rule says of the shape."""
    monkeypatch.setattr(conv_grouped, "prefer_direct", lambda pass_name, g: True)


@pytest.mark.parametrize("case", CASES, ids=[str(i) for i in range(len(CASES))])
def test_grouped_forward_and_gradients(case, always_direct):
    N, C, OC, H, W, k, s, p, d, g, cl, bias = case
    x, w, b = _layer(len(CASES) + CASES.index(case), N, C, OC, H, W, k, g, bias)
    y, gy, gx, gw, gb = _reference(x, w, b, s, p, d, g)
    runtime()._kernels.clear()
    got = _on_wgpu(x, w, b, s, p, d, g, gy, channels_last=cl)
    if cl:
        assert got[4].is_contiguous(memory_format=torch.channels_last), "channels_last in, channels_last out"
    _close(got[:4], (y, gx, gw, gb), 2e-5)
    assert _grouped_kernels() == {"grouped_fwd", "grouped_dgrad", "grouped_wgrad"}


def test_strided_views_16bit_storage_and_repeatable_grad_weight(always_direct):
    """x a channel slice with every other column, w a slice of a larger weight; the grad-weight bit for
    bit the same when run again (slices summed in a fixed order); float16 and bfloat16 storage."""
    gen = torch.Generator().manual_seed(7)
    big = torch.randn(2, 20, 9, 22, generator=gen, dtype=torch.float64)
    wbig = torch.randn(12, 6, 3, 3, generator=gen, dtype=torch.float64)
    x, w = big[:, 2:18, :, ::2], wbig[:, 1:5]
    y, gy, gx, gw, _ = _reference(x, w, None, 1, 1, 1, 4)
    grads = []
    for _ in range(2):
        xd = big.float().to("wgpu")[:, 2:18, :, ::2].requires_grad_()
        wd = wbig.float().to("wgpu")[:, 1:5].requires_grad_()
        out = F.conv2d(xd, wd, None, 1, 1, 1, 4)
        out.backward(gy.float().to("wgpu"))
        _close((out.detach().cpu(), xd.grad.cpu(), wd.grad.cpu()), (y, gx, gw), 2e-5)
        grads.append(wd.grad.cpu())
    assert torch.equal(grads[0], grads[1])
    for dtype, tol in ((torch.float16, 4e-3), (torch.bfloat16, 3e-2)):
        x, w, b = _layer(9, 1, 8, 8, 6, 7, 3, 2)
        x, w, b = (t.to(dtype).double() for t in (x, w, b))
        gy = torch.randn(1, 8, 6, 7, dtype=torch.float64).to(dtype).double()
        y, gy, gx, gw, gb = _reference(x, w, b, 1, 1, 1, 2, gy)
        _close(_on_wgpu(x, w, b, 1, 1, 1, 2, gy, dtype=dtype)[:4], (y, gx, gw, gb), tol)


def test_transposed_and_1d_grouped_layers(always_direct):
    """A transposed grouped convolution (stride 2, output padding: its forward is the direct grad-input,
    rows no tap reaches included) and a 1-D one, every pass against the CPU, through the direct kernels."""
    gen = torch.Generator().manual_seed(13)
    x = torch.randn(2, 8, 5, 6, generator=gen, dtype=torch.float64)
    w = torch.randn(8, 3, 3, 3, generator=gen, dtype=torch.float64)
    x1 = torch.randn(2, 12, 40, generator=gen, dtype=torch.float64)
    w1 = torch.randn(12, 3, 5, generator=gen, dtype=torch.float64)
    runtime()._kernels.clear()
    for op, a, b in ((lambda a, b: F.conv_transpose2d(a, b, None, 2, 1, 1, 4), x, w),
                     (lambda a, b: F.conv1d(a, b, None, 2, 2, 1, 4), x1, w1)):
        xs, ws = a.clone().requires_grad_(), b.clone().requires_grad_()
        y = op(xs, ws)
        gy = torch.randn(y.shape, generator=gen, dtype=torch.float64)
        y.backward(gy)
        xd, wd = a.float().to("wgpu").requires_grad_(), b.float().to("wgpu").requires_grad_()
        yd = op(xd, wd)
        yd.backward(gy.float().to("wgpu"))
        _close((yd.detach().cpu(), xd.grad.cpu(), wd.grad.cpu()), (y.detach(), xs.grad, ws.grad), 2e-5)
    assert _grouped_kernels() == {"grouped_fwd", "grouped_dgrad", "grouped_wgrad"}


def _same_specials(got, want, what):
    got = got.double()
    for name, mask in (("NaN", torch.isnan), ("+inf", lambda t: t == float("inf")),
                       ("-inf", lambda t: t == -float("inf"))):
        assert torch.equal(mask(got), mask(want)), f"{what}: {name} positions differ from the CPU's"
    finite = torch.isfinite(want)
    err = (got[finite] - want[finite]).abs().max().item() / (want[finite].abs().max().item() + 1e-12)
    assert err < 2e-5, f"{what}: relative error {err:.2e}"


@pytest.mark.parametrize("cl", [False, True], ids=["nchw", "nhwc"])
def test_nan_and_inf_propagate_as_on_the_cpu(cl, always_direct):
    """NaN and +-inf in x, w and dy: every output, grad-input and grad-weight element is NaN, inf or
    finite exactly where the CPU's is -- an inf weight meets the padding's zeros in the forward (as the
    CPU's im2col does) but not the taps of the grad-input that land outside the image."""
    x, w, b = _layer(21, 1, 8, 8, 7, 8, 3, 2)
    x[0, 1, 3, 4] = float("nan")
    x[0, 5, 0, 0] = float("inf")
    x[0, 6, 6, 7] = -float("inf")
    w[3, 2, 0, 0] = float("inf")
    w[6, 1, 2, 1] = float("nan")
    gy = torch.randn(1, 8, 4, 4, dtype=torch.float64)
    gy[0, 2, 1, 1] = float("inf")
    gy[0, 7, 0, 3] = float("nan")
    y, gy, gx, gw, gb = _reference(x, w, b, 2, 1, 1, 2, gy)
    got = _on_wgpu(x, w, b, 2, 1, 1, 2, gy, channels_last=cl)
    for g_, want, what in zip(got[:4], (y, gx, gw, gb), ("output", "grad_input", "grad_weight", "grad_bias")):
        _same_specials(g_, want, what)


def test_the_rule_runs_the_direct_kernels_for_narrow_groups(monkeypatch):
    """With tuning off, every pass of a ResNeXt-like strided layer (4 channels a group, 288 positions)
    runs the direct kernels in both layouts -- the grad-input in one dispatch, not by output phases;
    groups of 64 channels stay with the implicit GEMM, and prefer_direct draws the lines its table
    says (16 channels forward and stride-1 grad-input, 8 strided grad-input and grad-weight)."""
    def refuse(*args, **kwargs):
        raise AssertionError("the implicit GEMM ran for a narrow grouped layer")
    with monkeypatch.context() as m:
        for name in ("implicit_forward", "implicit_grad_input", "implicit_grad_weight", "grad_input_by_phase"):
            m.setattr(choose, name, refuse)
        for cl in (False, True):
            x, w, b = _layer(3, 2, 32, 32, 24, 23, 3, 8)
            y, gy, gx, gw, gb = _reference(x, w, b, 2, 1, 1, 8)
            runtime()._kernels.clear()
            _close(_on_wgpu(x, w, b, 2, 1, 1, 8, gy, channels_last=cl)[:4], (y, gx, gw, gb), 2e-5)
            assert _grouped_kernels() == {"grouped_fwd", "grouped_dgrad", "grouped_wgrad"}
            assert all(k[5] == cl for k in runtime()._kernels if isinstance(k, tuple) and k[0] == "grouped_fwd")
    runtime()._kernels.clear()
    x, w, b = _layer(4, 1, 128, 128, 4, 4, 3, 2)
    y, gy, gx, gw, gb = _reference(x, w, b, 1, 1, 1, 2)
    _close(_on_wgpu(x, w, b, 1, 1, 1, 2, gy)[:4], (y, gx, gw, gb), 2e-5)
    assert not _grouped_kernels()

    def geometry(cg, stride=1, n=1, hw=56):
        out = (hw - 1) // stride + 1
        return choose.Geometry(n, 32 * cg, hw, hw, 32 * cg, out, out, 3, 3, (stride, stride), (1, 1), (1, 1), 32)
    rule = conv_grouped.prefer_direct
    assert rule("fwd", geometry(16)) and not rule("fwd", geometry(32))
    assert rule("dgrad", geometry(16)) and not rule("dgrad", geometry(16, 2)) and rule("dgrad", geometry(8, 2))
    assert rule("wgrad", geometry(8)) and not rule("wgrad", geometry(16))
    assert not rule("wgrad", geometry(8, hw=7)) and rule("wgrad", geometry(8, n=32, hw=7))


def test_tuner_times_direct_against_gemm_and_both_are_right(monkeypatch):
    """Where the tuner runs, pick_choice gets both candidates for each pass (keyed by pass, layout,
    kernel, stride, dilation and channels a group) and prefer_direct's default; each candidate, run on
    its own, gives the CPU's answer."""
    for choice in ("direct", "gemm"):
        seen = force_tuner_choice(monkeypatch, choice)
        runtime()._kernels.clear()
        x, w, b = _layer(5, 2, 16, 16, 7, 6, 3, 4)
        y, gy, gx, gw, gb = _reference(x, w, b, 1, 1, 1, 4)
        _close(_on_wgpu(x, w, b, 1, 1, 1, 4, gy)[:4], (y, gx, gw, gb), 2e-5)
        ours = [s for s in seen if s[0].startswith("conv_grouped|")]
        assert {key.split("|")[1].split("-")[0] for key, _, _ in ours} == {"fwd", "dgrad", "wgrad"}, seen
        assert all("-nchw-k3x3-s11-d11-c4x4" in key for key, _, _ in ours), ours
        assert all(opts == ["direct", "gemm"] for _, opts, _ in ours)
        # the untimed default is prefer_direct's: 84 positions are too few for the direct grad-weight
        defaults = {key.split("|")[1].split("-")[0]: default for key, _, default in ours}
        assert defaults == {"fwd": "direct", "dgrad": "direct", "wgrad": "gemm"}, defaults
        assert bool(_grouped_kernels()) == (choice == "direct"), (choice, _grouped_kernels())


@pytest.mark.parametrize("cfg", gemm_tuning.CONV_TILES, ids=lambda c: c.name)
def test_conv_only_tiles(cfg):
    """The tiles the tuner adds for convolutions only (gemm_tuning.CONV_TILES) run a grouped and a stem
    layer right in every pass, bounds-checked edges included."""
    from navitrain.wgpu.kernels.conv import Geometry, implicit_forward, implicit_grad_input, implicit_grad_weight
    from navitrain.wgpu.tensor import empty

    if not cfg.fits(runtime().limits):
        pytest.skip(f"{cfg.name} does not fit this adapter")
    for N, C, OC, H, k, s, p, grp in ((1, 32, 64, 9, 3, 1, 1, 2), (1, 3, 16, 15, 7, 2, 3, 1)):
        x, w, _ = _layer(k, N, C, OC, H, H, k, grp, False)
        y, gy, gx, gw, _ = _reference(x, w, None, s, p, 1, grp)
        g = Geometry(N, C, H, H, OC, y.shape[2], y.shape[3], k, k, (s, s), (p, p), (1, 1), grp)
        xd, wd, gyd = x.float().to("wgpu"), w.float().to("wgpu"), gy.float().to("wgpu")
        out, dx, dw = empty(list(y.shape), torch.float32), empty(list(x.shape), torch.float32), empty(
            list(w.shape), torch.float32)
        implicit_forward(xd, wd, None, g, out, cfg=cfg)
        implicit_grad_input(gyd, wd, g, dx, cfg=cfg)
        implicit_grad_weight(gyd, xd, g, dw, cfg=cfg)
        _close((out.cpu(), dx.cpu(), dw.cpu()), (y, gx, gw), 2e-5)


def test_the_tuner_offers_the_conv_tiles_to_grouped_and_stem_shapes():
    """The 16-wide tiles reach a grouped pass with 16 channels a group (either side) and the 64x128
    tile a stem's forward, the names read back from the cache; matrix products never see them."""
    class _Rt:
        limits = {"max-compute-invocations-per-workgroup": 256, "max-compute-workgroup-storage-size": 32768}

        def synchronize(self):
            pass

        def collecting_kernels(self, pending):   # nothing to compile: the runs only note their tile
            return contextlib.nullcontext()

    def tried(kind, M, N, K, batch):
        seen = []
        gemm_tuning._tune(_Rt(), M, N, K, batch, lambda c: seen.append(c), splits_ok=False,
                          extra=gemm_tuning._extra_candidates(kind) + gemm_tuning._conv_candidates(kind))
        return {c.name for c in seen}
    assert "16x128x8/4x4" in tried(("conv_fwd", False), 16, 12544, 144, 32)
    assert "128x16x8/4x4" in tried(("conv_fwd", True), 12544, 16, 144, 32)
    assert "64x128x16/8x8/b1" in tried(("conv_fwd", False), 64, 50176, 147, 1)
    assert gemm_tuning._conv_candidates(("mm",)) == []
    assert all(gemm_tuning._parse(c.name) == c for c in gemm_tuning.CONV_TILES)
