"""The convolution grad-input reads the weight where it lies (issue 19): no transposed copy of the weight
per backward. Against a float64 CPU reference for both memory formats of the image and of the weight,
1x1 / 3x3 / 7x7 kernels, stride 1 and 2, groups, odd channel counts (guarded tiles), the 16-byte weight
loads where the layout allows them, NaN and +-inf in dy or w, and a profile showing no weight copy."""
import pytest
import torch
import torch.nn.functional as F

import navitrain.wgpu as nw

# N, C, H, W, OC, k, stride, padding, groups
SHAPES = [
    (2, 8, 9, 9, 12, 3, 1, 1, 1),      # ResNet 3x3
    (2, 8, 9, 9, 12, 3, 2, 1, 1),      # ResNet downsampling 3x3 (output phases)
    (2, 16, 8, 8, 32, 1, 1, 0, 1),     # 1x1
    (2, 16, 8, 8, 32, 1, 2, 0, 1),     # ResNet strided 1x1 shortcut
    (1, 3, 14, 14, 8, 7, 2, 3, 1),     # ImageNet stem 7x7
    (2, 5, 7, 6, 9, 3, 1, 1, 1),       # odd channel counts: every tile guarded
    (2, 7, 9, 7, 5, 5, 2, 2, 1),
    (2, 8, 9, 9, 12, 3, 1, 1, 2),      # groups
    (2, 6, 8, 8, 9, 1, 1, 0, 3),       # grouped 1x1 (the implicit GEMM, not onebyone)
]
# memory formats of (x, w): a channels_last model has both; mixed ones come from users
LAYOUTS = {"nchw": (False, False), "channels_last": (True, True), "cl_image": (True, False),
           "cl_weight": (False, True)}


def _fmt(cl):
    return torch.channels_last if cl else torch.contiguous_format


def _grad_input(x, w, gy, stride, padding, groups, cl_x, cl_w):
    """x.grad of conv2d on wgpu (float32, through the aten handler and its choice of formulation)."""
    xd = x.float().to("wgpu").contiguous(memory_format=_fmt(cl_x)).requires_grad_()
    wd = w.float().to("wgpu").contiguous(memory_format=_fmt(cl_w)).requires_grad_()
    y = F.conv2d(xd, wd, None, stride, padding, 1, groups)
    y.backward(gy.float().to("wgpu").contiguous(memory_format=_fmt(cl_x)))
    return xd.grad.cpu().double()


def _inputs(case, seed):
    N, C, H, W, OC, k, s, p, groups = case
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(N, C, H, W, generator=gen, dtype=torch.float64)
    w = torch.randn(OC, C // groups, k, k, generator=gen, dtype=torch.float64)
    OH, OW = (H + 2 * p - k) // s + 1, (W + 2 * p - k) // s + 1
    gy = torch.randn(N, OC, OH, OW, generator=gen, dtype=torch.float64)
    return x, w, gy


def _relative_error(got, want):
    return (got - want).abs().max().item() / want.abs().max().item()


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("case", SHAPES, ids=lambda c: "x".join(map(str, c)))
def test_grad_input_matches_float64_cpu(case, layout):
    x, w, gy = _inputs(case, hash((case, layout)) % 1000)
    s, p, groups = case[6], case[7], case[8]
    want = torch.nn.grad.conv2d_input(x.shape, w, gy, stride=s, padding=p, groups=groups)
    got = _grad_input(x, w, gy, s, p, groups, *LAYOUTS[layout])
    assert _relative_error(got, want) < 2e-5


def _weight_operands(cfg):
    """The operand keys of the compiled grad-input GEMMs with tile cfg: (A key, B key) each."""
    from navitrain.wgpu.runtime import runtime

    return [(k[3], k[4]) for k in runtime()._kernels
            if isinstance(k, tuple) and k[:1] == ("gemm",) and k[1][0] == "conv_dgrad" and k[2] == cfg]


# (N, C, H, W, OC, k, pad, channels_last, expected weight operand: (key kind, fastest, 16-byte loads))
DIRECT = [
    (2, 32, 4, 4, 32, 1, 0, False, ("strided", "row", True)),     # 1x1: [c, oc] matrix, c contiguous
    (2, 33, 4, 4, 32, 1, 0, False, ("strided", "row", False)),    # guarded rows: scalar loads
    (2, 32, 4, 4, 8, 3, 1, True, ("weight", "row", True)),        # channels_last: four channels per load
    (2, 12, 3, 5, 8, 3, 1, True, ("weight", "row", False)),       # ... not whole tiles
    (2, 32, 4, 4, 8, 3, 1, False, ("weight", "k", False)),        # NCHW 3x3: (oc, kh, kw) gather
]


@pytest.mark.parametrize("case", DIRECT, ids=lambda c: "x".join(map(str, c[:8])))
def test_weight_operand_reads_in_place(case):
    """implicit_grad_input with a fixed tile: the weight operand (gemm.Strided for 1x1, operands.Weight
    otherwise) is read from w itself with the vector loads its layout allows, and the result is right."""
    from navitrain.wgpu.kernels import conv
    from navitrain.wgpu.kernels.gemm import TileConfig
    from navitrain.wgpu.tensor import empty

    N, C, H, W, OC, k, p, cl, (kind, fastest, vec) = case
    cfg = TileConfig(32, 32, 8, 4, 4)
    x, w, gy = _inputs((N, C, H, W, OC, k, 1, p, 1), C + OC + k)
    want = torch.nn.grad.conv2d_input(x.shape, w, gy, padding=p)
    wd = w.float().to("wgpu").contiguous(memory_format=_fmt(cl))
    gyd = gy.float().to("wgpu").contiguous(memory_format=_fmt(cl))
    strides = torch.empty(N, C, H, W).contiguous(memory_format=_fmt(cl)).stride()
    g = conv.Geometry(N, C, H, W, OC, gy.shape[2], gy.shape[3], k, k, (1, 1), (p, p), (1, 1), 1)
    got = conv.implicit_grad_input(gyd, wd, g, empty([N, C, H, W], torch.float32, strides), cfg=cfg)
    assert _relative_error(got.cpu().double(), want) < 2e-5
    side = 1 if cl else 0      # the weight is B in channels_last (rows = channels), A in NCHW
    keys = [ops[side] for ops in _weight_operands(cfg)]
    assert any(key[0] == kind and fastest in key and (key[-1] is not None) == vec for key in keys), keys


def test_thin_split_tile_reads_the_weight_in_place():
    """A K-split grad-input tile (few input channels, f32 partial sums) with the weight read in place."""
    from navitrain.wgpu.kernels import conv
    from navitrain.wgpu.kernels.gemm import TileConfig
    from navitrain.wgpu.tensor import empty

    x, w, gy = _inputs((2, 3, 8, 8, 16, 3, 1, 1, 1), 7)
    want = torch.nn.grad.conv2d_input(x.shape, w, gy, padding=1)
    g = conv.Geometry(2, 3, 8, 8, 16, 8, 8, 3, 3, (1, 1), (1, 1), (1, 1), 1)
    got = conv.implicit_grad_input(gy.float().to("wgpu"), w.float().to("wgpu"), g, empty([2, 3, 8, 8], torch.float32),
                                    cfg=TileConfig(4, 128, 8, 4, 4, splits=4))
    assert _relative_error(got.cpu().double(), want) < 2e-5


def _assert_same_specials(got, want):
    assert torch.equal(torch.isnan(got), torch.isnan(want))
    assert torch.equal(got == float("inf"), want == float("inf"))
    assert torch.equal(got == float("-inf"), want == float("-inf"))
    finite = torch.isfinite(want)
    assert _relative_error(got[finite], want[finite]) < 2e-5


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("case", [SHAPES[0], SHAPES[2], SHAPES[1]], ids=["3x3", "1x1", "3x3-stride2"])
def test_nan_and_inf_in_dy_reach_the_inputs_they_touch(case, layout):
    x, w, gy = _inputs(case, 11)
    gy[0, 0, 0, 0], gy[1, -1, -1, -1], gy[0, 3, 2, 1] = float("nan"), float("inf"), float("-inf")
    s, p = case[6], case[7]
    want = torch.nn.grad.conv2d_input(x.shape, w, gy, stride=s, padding=p)
    _assert_same_specials(_grad_input(x, w, gy, s, p, 1, *LAYOUTS[layout]), want)


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("case", [SHAPES[0], SHAPES[2]], ids=["3x3", "1x1"])
def test_nan_and_inf_in_w_propagate(case, layout):
    """A non-finite weight reaches every input it touches. Unpadded 1x1: exactly the CPU's pattern.
    Padded layers: the implicit GEMM multiplies every tap, padding taps by 0, so 0 * nan adds NaN at
    border inputs that the CPU (which skips taps outside dy) leaves finite -- it never hides one."""
    x, w, gy = _inputs(case, 13)
    w[0, 0, 0, 0], w[-1, -1, -1, -1], w[2, 1, 0, 0] = float("nan"), float("inf"), float("-inf")
    p = case[7]
    want = torch.nn.grad.conv2d_input(x.shape, w, gy, padding=p)
    got = _grad_input(x, w, gy, 1, p, 1, *LAYOUTS[layout])
    if p == 0:
        _assert_same_specials(got, want)
        return
    assert not torch.isfinite(got[~torch.isfinite(want)]).any()
    both = torch.isfinite(want) & torch.isfinite(got)
    assert both.sum() > want.numel() // 2
    assert _relative_error(got[both], want[both]) < 2e-5


# ResNet-18's layers, scaled down: (C, OC, H, k, stride, padding)
RESNET_LAYERS = [(16, 16, 8, 3, 1, 1), (16, 32, 8, 3, 2, 1), (32, 64, 4, 1, 1, 0), (64, 128, 4, 1, 2, 0)]


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_backward_makes_no_copy_of_the_weight(channels_last):
    """An eager conv backward dispatches no pointwise_copy of the weight (nor any other: a strided 1x1
    layer reads x and writes dx in place, tests/wgpu/test_conv_strided_1x1.py)."""
    fmt = _fmt(channels_last)
    for C, OC, H, k, s, p in RESNET_LAYERS:
        x = torch.randn(1, C, H, H).to("wgpu").contiguous(memory_format=fmt).requires_grad_()
        w = torch.randn(OC, C, k, k).to("wgpu").contiguous(memory_format=fmt).requires_grad_()
        y = F.conv2d(x, w, None, s, p)
        gy = torch.randn(y.shape).to("wgpu").contiguous(memory_format=fmt)
        nw.synchronize()
        with nw.profile() as table:
            dx, dw = torch.autograd.grad(y, (x, w), gy)
        assert table.get("pointwise_copy") is None, (C, OC, k, s, dict(table))
        assert any(name.startswith(("conv2d_grad_input", "gemm")) for name in table)
