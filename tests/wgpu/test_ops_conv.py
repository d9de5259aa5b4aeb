"""Convolution (implicit GEMM) against the CPU: OpInfo samples for conv1d/conv2d/conv_transpose2d, and
targeted float64-referenced cases for strides, padding, dilation, groups, depthwise, transposed with
output padding, channels_last, 'same' padding and split-K weight gradients."""
import contextlib

import pytest
import torch
import torch.nn.functional as F

from tests.wgpu import opinfo


@pytest.mark.parametrize("name", ["nn.functional.conv1d", "nn.functional.conv2d", "nn.functional.conv_transpose2d"])
def test_conv_opinfo(name):
    op = opinfo.find(name)
    assert opinfo.check(op, torch.float32, max_samples=10, rtol=1e-4, atol=1e-4) > 0


CASES = [  # N, C, H, W, OC, k, stride, pad, dil, groups, channels_last, transposed, output_padding
    (1, 3, 32, 32, 16, 3, 1, 0, 1, 1, False, False, 0),
    (2, 8, 9, 7, 12, 3, 2, 1, 1, 1, False, False, 0),
    (2, 8, 9, 7, 12, 3, 1, 2, 2, 1, False, False, 0),
    (2, 8, 10, 10, 12, 3, 1, 1, 1, 4, False, False, 0),
    (2, 8, 10, 10, 8, 3, 1, 1, 1, 8, False, False, 0),     # depthwise
    (2, 16, 10, 10, 32, 1, 1, 0, 1, 1, False, False, 0),   # 1x1
    (3, 5, 11, 13, 7, 5, 2, 2, 1, 1, False, False, 0),
    (8, 32, 16, 16, 32, 3, 1, 1, 1, 1, False, False, 0),   # grad-weight split over K
    (2, 8, 9, 7, 12, 3, 2, 1, 1, 1, True, False, 0),
    (8, 32, 16, 16, 32, 3, 1, 1, 1, 1, True, False, 0),
    (2, 8, 10, 10, 12, 3, 1, 1, 1, 4, True, False, 0),
    (2, 8, 9, 7, 12, 3, 2, 1, 1, 1, False, True, 1),
    (2, 8, 9, 7, 12, 4, 2, 1, 1, 1, False, True, 0),
    (2, 8, 9, 7, 12, 3, 1, 1, 1, 4, False, True, 0),
    # 1x1 layers run as plain products (conv/onebyone.py): strided shortcuts, odd sizes, both layouts
    (3, 12, 9, 7, 20, 1, 2, 0, 1, 1, False, False, 0),
    (3, 12, 9, 7, 20, 1, 2, 0, 1, 1, True, False, 0),
    (2, 16, 8, 8, 32, 1, 1, 0, 1, 1, True, False, 0),
    (2, 7, 5, 6, 5, 1, 3, 0, 1, 1, False, False, 0),
    # strided grad-input by output phase: phases no tap reaches (k < s), groups, channels_last
    (2, 6, 10, 11, 4, 2, 3, 0, 1, 1, False, False, 0),
    (2, 8, 9, 7, 12, 3, 2, 1, 1, 4, False, False, 0),
    (2, 8, 9, 7, 12, 3, 2, 1, 1, 4, True, False, 0),
    (2, 6, 12, 12, 8, 3, 2, 1, 1, 1, True, False, 0),
]


@pytest.mark.parametrize("case", CASES, ids=[str(i) for i in range(len(CASES))])
def test_conv2d_forward_and_both_gradients(case):
    N, C, H, W, OC, k, s, p, d, g, cl, tr, op = case
    gen = torch.Generator().manual_seed(hash(case) % 1000)
    x = torch.randn(N, C, H, W, generator=gen, dtype=torch.float64)
    w = torch.randn(*((C, OC // g) if tr else (OC, C // g)), k, k, generator=gen, dtype=torch.float64)
    b = torch.randn(OC, generator=gen, dtype=torch.float64)
    xs, ws, bs = (t.clone().requires_grad_() for t in (x, w, b))
    if tr:
        ref = F.conv_transpose2d(xs, ws, bs, s, p, op, g, d)
    else:
        ref = F.conv2d(xs, ws, bs, s, p, d, g)
    gy = torch.randn(ref.shape, generator=gen, dtype=torch.float64)
    ref.backward(gy)
    xd = x.float()
    if cl:
        xd = xd.contiguous(memory_format=torch.channels_last)
    xd = xd.to("wgpu").requires_grad_()
    wd, bd = w.float().to("wgpu").requires_grad_(), b.float().to("wgpu").requires_grad_()
    y = F.conv_transpose2d(xd, wd, bd, s, p, op, g, d) if tr else F.conv2d(xd, wd, bd, s, p, d, g)
    if cl and not tr:
        assert y.is_contiguous(memory_format=torch.channels_last), "channels_last in, channels_last out"
    y.backward(gy.float().to("wgpu"))
    for got, want, what in ((y, ref, "output"), (xd.grad, xs.grad, "grad_input"), (wd.grad, ws.grad, "grad_weight"),
                            (bd.grad, bs.grad, "grad_bias")):
        err = (got.detach().cpu().double() - want).abs().max().item() / (want.abs().max().item() + 1e-12)
        assert err < 2e-5, f"{what}: relative error {err:.2e}"


def test_conv_padding_same_and_conv1d_module():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(4, 6, 5, padding="same", dilation=2)
    x = torch.randn(2, 4, 9, 9)
    with torch.no_grad():  # a live CPU graph would keep the parameters from moving in place
        want = conv(x)
    torch.testing.assert_close(conv.to("wgpu")(x.to("wgpu")).cpu(), want, rtol=1e-4, atol=1e-5)
    conv1 = torch.nn.Conv1d(3, 5, 4, stride=2, padding=1)
    x1 = torch.randn(2, 3, 17)
    with torch.no_grad():
        want1 = conv1(x1)
    torch.testing.assert_close(conv1.to("wgpu")(x1.to("wgpu")).cpu(), want1, rtol=1e-4, atol=1e-5)


def test_mixed_devices_get_a_clear_error():
    conv = torch.nn.Conv2d(2, 2, 3).to("wgpu")
    with pytest.raises(RuntimeError, match="same device"):
        conv(torch.randn(1, 2, 5, 5))


@pytest.mark.parametrize("case", [(2, 8, 9, 7, 12, 1, False), (4, 16, 8, 8, 16, 1, True), (1, 3, 10, 10, 4, 0, False),
                                  (2, 5, 6, 11, 7, 2, False)])
def test_winograd_forward_and_grad_input(case, monkeypatch):
    """F(2x2,3x3) for stride-1 3x3 layers (forced; 'auto' picks it only where it is faster)."""
    monkeypatch.setenv("NAVITRAIN_WGPU_CONV", "winograd")
    N, C, H, W, OC, p, cl = case
    gen = torch.Generator().manual_seed(sum(case[:5]))
    x = torch.randn(N, C, H, W, generator=gen, dtype=torch.float64, requires_grad=True)
    w = torch.randn(OC, C, 3, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    b = torch.randn(OC, generator=gen, dtype=torch.float64, requires_grad=True)
    ref = F.conv2d(x, w, b, 1, p)
    gy = torch.randn(ref.shape, generator=gen, dtype=torch.float64)
    ref.backward(gy)
    xd = x.detach().float()
    xd = (xd.contiguous(memory_format=torch.channels_last) if cl else xd).to("wgpu").requires_grad_()
    wd, bd = w.detach().float().to("wgpu").requires_grad_(), b.detach().float().to("wgpu").requires_grad_()
    y = F.conv2d(xd, wd, bd, 1, p)
    y.backward(gy.float().to("wgpu"))
    for got, want, what in ((y, ref, "output"), (xd.grad, x.grad, "grad_input"), (wd.grad, w.grad, "grad_weight")):
        err = (got.detach().cpu().double() - want).abs().max().item() / want.abs().max().item()
        assert err < 2e-5, f"{what}: relative error {err:.2e}"


def _pointwise_tiles():
    from navitrain.wgpu.kernels.gemm import TileConfig

    return [TileConfig(32, 32, 8, 4, 4), TileConfig(64, 64, 16, 8, 8, buffers=1), TileConfig(4, 128, 8, 4, 4),
            TileConfig(128, 4, 8, 4, 4)]


@pytest.mark.parametrize("cfg", _pointwise_tiles(), ids=lambda c: c.name)
@pytest.mark.parametrize("shape", [(8, 128, 4, 4, 128), (32, 128, 4, 4, 128), (3, 12, 5, 6, 20)],
                         ids=["aligned", "aligned-split", "unaligned"])
def test_1x1_nchw_kernels_read_positions_directly(cfg, shape):
    """NCHW 1x1 layers: all N*H*W positions as one product (ImagePositions) and the weight gradient
    reading x like dy (GradOutRows), with each kind of tile; aligned shapes take the 16-byte loads."""
    from navitrain.wgpu.kernels import conv
    from navitrain.wgpu.runtime import runtime
    from navitrain.wgpu.tensor import empty

    N, C, H, W, OC = shape
    gen = torch.Generator().manual_seed(N * C + OC)
    x = torch.randn(N, C, H, W, generator=gen, dtype=torch.float64, requires_grad=True)
    w = torch.randn(OC, C, 1, 1, generator=gen, dtype=torch.float64, requires_grad=True)
    ref = F.conv2d(x, w)
    gy = torch.randn(ref.shape, generator=gen, dtype=torch.float64)
    ref.backward(gy)
    xd, wd, gyd = (t.detach().float().to("wgpu") for t in (x, w, gy))
    g = conv.Geometry(N, C, H, W, OC, H, W, 1, 1, (1, 1), (0, 0), (1, 1), 1)
    assert conv.pointwise_geometry(g)
    y = conv.implicit_forward(xd, wd, None, g, empty([N, OC, H, W], torch.float32), cfg=cfg)
    dx = conv.implicit_grad_input(gyd, wd, g, empty([N, C, H, W], torch.float32), cfg=cfg)
    dw = conv.implicit_grad_weight(gyd, xd, g, empty([OC, C, 1, 1], torch.float32), cfg=cfg)
    for got, want, what in ((y, ref, "output"), (dx, x.grad, "grad_input"), (dw, w.grad, "grad_weight")):
        err = (got.cpu().double() - want.detach()).abs().max().item() / want.abs().max().item()
        assert err < 2e-5, f"{cfg.name} {what}: relative error {err:.2e}"
    operands = [k[3:5] for k in runtime()._kernels if isinstance(k, tuple) and k[:1] == ("gemm",) and k[2] == cfg]
    assert any(op[1][0] == "positions" for op in operands), "forward/grad-input did not take ImagePositions"
    assert any(op[1][0] == "chan_rows" and op[1][-1] == "x" for op in operands), "grad-weight gathered x"
    if shape[-1] == 128 and cfg.BM != 4 and cfg.BN != 4:
        assert any(op[1][0] == "positions" and op[1][-1] is not None for op in operands), "no 16-byte position loads"


def _stem_tiles():
    from navitrain.wgpu.kernels.gemm import TileConfig

    return [_pointwise_tiles()[0], _pointwise_tiles()[2], TileConfig(4, 128, 8, 4, 4, splits=4)]


@pytest.mark.parametrize("cfg", _stem_tiles(), ids=lambda c: c.name)
@pytest.mark.parametrize("W", [10, 16])
def test_stem_grad_input_with_a_thin_tile(W, cfg):
    """A 3-channel grad-input (GEMM M = 3) with the 4-row tile the tuner may pick for it (also split
    4 ways along K) and a 32-row one; with W a multiple of 4 and whole column tiles, each load slot
    gathers four neighbouring positions (ImageGradInput.four), also under the row guard that the
    3 channels need."""
    from navitrain.wgpu.kernels import conv
    from navitrain.wgpu.runtime import runtime
    from navitrain.wgpu.tensor import empty

    runtime()._kernels.clear()
    gen = torch.Generator().manual_seed(3 + W)
    w = torch.randn(16, 3, 3, 3, generator=gen, dtype=torch.float64)
    gy = torch.randn(2, 16, 16, W, generator=gen, dtype=torch.float64)
    want = torch.nn.grad.conv2d_input([2, 3, 16, W], w, gy, padding=1)
    g = conv.Geometry(2, 3, 16, W, 16, 16, W, 3, 3, (1, 1), (1, 1), (1, 1), 1)
    got = conv.implicit_grad_input(gy.float().to("wgpu"), w.float().to("wgpu"), g,
                                    empty([2, 3, 16, W], torch.float32), cfg=cfg)
    err = (got.cpu().double() - want).abs().max().item() / want.abs().max().item()
    assert err < 2e-5, f"relative error {err:.2e}"
    four = any(isinstance(k, tuple) and k[:1] == ("gemm",) and k[2] == cfg and k[4][0] == "im_dgrad" and k[4][-1]
               for k in runtime()._kernels)
    assert four == (W == 16), "four-position gather used" if four else "four-position gather not used"
    split = any(isinstance(k, tuple) and k[:1] == ("gemm",) and k[2] == cfg and k[7] for k in runtime()._kernels)
    assert split == (cfg.splits > 1), "K split" if split else "K not split"


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("cfg", _pointwise_tiles()[:2], ids=lambda c: c.name)
def test_grad_weight_gathers_four_positions_per_load(cfg, stride):
    """3x3 NCHW grad-weight with OW a multiple of 4 and whole tiles: each load slot gathers four
    neighbouring positions (ImageGradWeight.four), padding columns and rows included."""
    from navitrain.wgpu.kernels import conv
    from navitrain.wgpu.runtime import runtime
    from navitrain.wgpu.tensor import empty

    N, C, H, OC = 2, 64, 16, 64
    OH = (H + 2 - 3) // stride + 1
    gen = torch.Generator().manual_seed(10 + stride)
    x = torch.randn(N, C, H, H, generator=gen, dtype=torch.float64)
    gy = torch.randn(N, OC, OH, OH, generator=gen, dtype=torch.float64)
    want = torch.nn.grad.conv2d_weight(x, [OC, C, 3, 3], gy, stride=stride, padding=1)
    g = conv.Geometry(N, C, H, H, OC, OH, OH, 3, 3, (stride, stride), (1, 1), (1, 1), 1)
    got = conv.implicit_grad_weight(gy.float().to("wgpu"), x.float().to("wgpu"), g,
                                     empty([OC, C, 3, 3], torch.float32), cfg=cfg)
    err = (got.cpu().double() - want).abs().max().item() / want.abs().max().item()
    assert err < 2e-5, f"relative error {err:.2e}"
    assert any(isinstance(k, tuple) and k[:1] == ("gemm",) and k[2] == cfg and k[4][0] == "im_wgrad" and k[4][-1]
               for k in runtime()._kernels), "the four-position gather was not used"


@pytest.mark.parametrize("shape", [(4, 32, 8, 8, 32), (3, 12, 7, 10, 20)], ids=["aligned", "unaligned"])
def test_strided_1x1_reads_x_in_place(shape):
    """A stride-2 NCHW shortcut through conv.onebyone reads x[:, :, ::2, ::2] through its own strides
    (ImagePositions(flat=False), GradOutRows of x) -- aligned, as two 16-byte loads keeping every other
    element -- against float64 autograd on the CPU (more in tests/wgpu/test_conv_strided_1x1.py)."""
    from navitrain.wgpu.runtime import runtime

    runtime()._kernels.clear()
    N, C, H, W, OC = shape
    gen = torch.Generator().manual_seed(N * C + OC)
    x = torch.randn(N, C, H, W, generator=gen, dtype=torch.float64, requires_grad=True)
    w = torch.randn(OC, C, 1, 1, generator=gen, dtype=torch.float64, requires_grad=True)
    ref = F.conv2d(x, w, stride=2)
    gy = torch.randn(ref.shape, generator=gen, dtype=torch.float64)
    ref.backward(gy)
    xd = x.detach().float().to("wgpu").requires_grad_()
    wd = w.detach().float().to("wgpu").requires_grad_()
    y = F.conv2d(xd, wd, stride=2)
    y.backward(gy.float().to("wgpu"))
    for got, want, what in ((y, ref, "output"), (xd.grad, x.grad, "grad_input"), (wd.grad, w.grad, "grad_weight")):
        err = (got.detach().cpu().double() - want).abs().max().item() / want.abs().max().item()
        assert err < 2e-5, f"{what}: relative error {err:.2e}"
    keys = [k for k in runtime()._kernels if isinstance(k, tuple) and k[:1] == ("gemm",)]
    aligned = shape[3] % 8 == 0
    assert any(op[0] == "positions" and op[-1] is False and op[4] == aligned for k in keys for op in k[3:5]), \
        "forward did not read x in place"
    assert any(op[0] == "chan_rows" and op[-1] == "x" and op[5] == aligned for k in keys for op in k[3:5]), \
        "grad-weight did not read x in place"


@pytest.mark.parametrize("splits", [2, 7, 32])
def test_grad_weight_with_explicit_slices(splits):
    """The tuner's fixed slice counts for weight gradients (gemm_tuning.WGRAD_SPLITS): K cut into
    `splits` slices (fewer when K is short), the partial products summed, for a 1x1 and a 3x3 layer."""
    from navitrain.wgpu.kernels import conv
    from navitrain.wgpu.kernels.gemm import TileConfig
    from navitrain.wgpu.tensor import empty

    cfg = TileConfig(64, 64, 16, 4, 4, splits=splits)
    for k, stride in ((1, 1), (3, 2)):
        N, C, H, OC = 3, 24, 12, 40
        p = k // 2
        OH = (H + 2 * p - k) // stride + 1
        gen = torch.Generator().manual_seed(splits * k)
        x = torch.randn(N, C, H, H, generator=gen, dtype=torch.float64)
        gy = torch.randn(N, OC, OH, OH, generator=gen, dtype=torch.float64)
        want = torch.nn.grad.conv2d_weight(x, [OC, C, k, k], gy, stride=stride, padding=p)
        g = conv.Geometry(N, C, H, H, OC, OH, OH, k, k, (stride, stride), (p, p), (1, 1), 1)
        got = conv.implicit_grad_weight(gy.float().to("wgpu"), x.float().to("wgpu"), g,
                                         empty([OC, C, k, k], torch.float32), cfg=cfg)
        err = (got.cpu().double() - want).abs().max().item() / want.abs().max().item()
        assert err < 2e-5, f"{k}x{k} with {splits} slices: relative error {err:.2e}"
    from navitrain.wgpu.runtime import runtime

    assert any(isinstance(key, tuple) and key[:1] == ("gemm",) and key[2] == cfg and key[7]
               for key in runtime()._kernels), "K was not split"


def test_wgrad_tuning_offers_fixed_slices():
    """Weight gradients with a long K get the fixed-slice candidates; other products never do, and
    every candidate name parses back (the tuning cache stores names)."""
    from navitrain.wgpu.kernels import gemm_tuning

    for cfg in gemm_tuning.CANDIDATES + gemm_tuning.WGRAD_SPLITS + gemm_tuning.THIN_DGRAD_SPLITS:
        assert gemm_tuning._parse(cfg.name) == cfg
    seen = {}

    class _Rt:
        limits = {"max-compute-invocations-per-workgroup": 256, "max-compute-workgroup-storage-size": 32768}

        def synchronize(self):
            pass

        def collecting_kernels(self, pending):   # nothing to compile: the runs only note their tile
            return contextlib.nullcontext()

    for kind in (("conv_wgrad", False, "1x1"), ("conv_fwd", False)):
        tried = []
        gemm_tuning._tune(_Rt(), 128, 64, 32768, 1, lambda c: tried.append(c), splits_ok=False,
                          extra=gemm_tuning._extra_candidates(kind))
        seen[kind[0]] = {c.splits for c in tried}
    assert {32, 128, 512} <= seen["conv_wgrad"] and not any(s > 1 for s in seen["conv_fwd"])
    tried = []   # a 3-channel grad-input: thin tiles, split 4 and 8 ways
    gemm_tuning._tune(_Rt(), 3, 131072, 576, 1, lambda c: tried.append(c), splits_ok=False,
                      extra=gemm_tuning._extra_candidates(("conv_dgrad", False)))
    assert {(4, 4), (4, 8)} <= {(c.BM, c.splits) for c in tried}
    assert gemm_tuning._extra_candidates(("conv_dgrad", True)) == []


def test_the_remembered_winograd_choice_follows_the_setting(monkeypatch):
    """conv.use_winograd remembers its answer per shape (every eager convolution asks), keyed by the
    settings too: changing NAVITRAIN_WGPU_CONV at run time still changes the formulation."""
    from navitrain.wgpu.kernels import conv

    x, w = torch.randn(2, 4, 9, 9).to("wgpu"), torch.randn(5, 4, 3, 3).to("wgpu")

    def asks():
        return conv.use_winograd("fwd", x, w, (1, 1), (1, 1), (1, 1), 1, lambda: None, lambda: None)

    for setting, expected in (("gemm", False), ("winograd", True), ("gemm", False), ("winograd", True)):
        monkeypatch.setenv("NAVITRAIN_WGPU_CONV", setting)
        assert asks() is expected and asks() is expected
