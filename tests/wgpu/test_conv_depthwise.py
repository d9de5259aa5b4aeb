"""Direct depthwise convolution kernels (navitrain.wgpu.kernels.conv_depthwise) against float64 autograd on the
CPU: forward, grad-input, grad-weight and grad-bias over kernel sizes, strides, padding, odd and 1x1
images, both layouts (channels_last: odd C, C % 4 == 0 (vec4), kernels 3 to 13, strides 1 and 2, channel-slice
views, a repeatable grad-weight), strided inputs, NaN/inf and 16-bit storage; which kernel ran; the tuner's two
candidates; a MobileNetV2 block's training step."""
import pytest
import torch
import torch.nn.functional as F

from navitrain.wgpu.kernels.conv import choose
from navitrain.wgpu.runtime import runtime
from tests.wgpu.conv_checks import assert_close_to_reference as _close
from tests.wgpu.conv_checks import force_tuner_choice

CASES = [  # N, C, H, W, k, stride, pad, channels_last, bias -- comments: the kernels they reach
    (3, 3, 7, 9, 3, 1, 1, False, True),      # small plane: direct, threads along W
    (1, 4, 20, 33, 5, 2, 2, False, True),    # tiled (8x32 tiles) s2; grad-input phases 3x3/3x2/2x3/2x2
    (2, 5, 14, 14, 3, 1, 1, False, False),   # tiled with 16x16 tiles
    (1, 3, 40, 6, 7, 1, 3, False, True),     # tiled with 32x8 tiles, 7x7
    (1, 6, 12, 13, 7, 1, 0, False, True),    # padding 0
    (3, 6, 16, 16, 7, 1, 3, True, True),     # channels_last
    (3, 8, 9, 7, 3, 2, 0, True, False),      # channels_last, 4 channels a vec4, stride 2, padding 0
    (1, 12, 10, 13, 5, 2, 2, True, True),    # channels_last vec4, bias; grad-input phases as vec4 too
    (1, 5, 11, 10, 5, 1, 0, True, True),
    (3, 2, 1, 1, 3, 1, 1, False, True),      # 1x1 images: only the centre tap lands
    (1, 4, 9, 7, 5, 2, 2, False, True),      # stride 2, 5x5, odd sizes
    (2, 3, 8, 11, 7, 2, 3, False, True),     # stride 2, odd padding: the other taps land on even columns
    (2, 4, 16, 12, 3, 1, 1, False, True),    # stride 1 grad-input: the rotated-kernel correlation
]


def _layer(seed, N, C, H, W, k, bias=True):
    """Fresh float64 input, depthwise weight (C, 1, k, k) and bias, drawn in that order from `seed`."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(N, C, H, W, generator=gen, dtype=torch.float64)
    w = torch.randn(C, 1, k, k, generator=gen, dtype=torch.float64)
    b = torch.randn(C, generator=gen, dtype=torch.float64) if bias else None
    return x, w, b


def _reference(x, w, b, s, p, round_gy_to=None):
    """float64 autograd on the CPU with a fresh random grad-output (rounded to a 16-bit dtype when the
    device gets it in that dtype)."""
    xs, ws = x.clone().requires_grad_(), w.clone().requires_grad_()
    bs = b.clone().requires_grad_() if b is not None else None
    y = F.conv2d(xs, ws, bs, s, p, groups=x.shape[1])
    gy = torch.randn(y.shape, dtype=torch.float64)
    if round_gy_to is not None:
        gy = gy.to(round_gy_to).double()
    y.backward(gy)
    return y.detach(), gy, xs.grad, ws.grad, (bs.grad if bs is not None else None)


def _on_wgpu(x, w, b, s, p, gy, dtype=torch.float32, channels_last=False):
    xd = x.to(dtype)
    if channels_last:
        xd = xd.contiguous(memory_format=torch.channels_last)
    xd = xd.to("wgpu").requires_grad_()
    wd = w.to(dtype).to("wgpu").requires_grad_()
    bd = b.to(dtype).to("wgpu").requires_grad_() if b is not None else None
    y = F.conv2d(xd, wd, bd, s, p, groups=x.shape[1])
    gy = gy.to(dtype)
    if channels_last:   # as a channels_last model's backward hands it over
        gy = gy.contiguous(memory_format=torch.channels_last)
    y.backward(gy.to("wgpu"))
    return y.detach().cpu(), xd.grad.cpu(), wd.grad.cpu(), (bd.grad.cpu() if bd is not None else None), y


def _dw_kernels():
    return [k for k in runtime()._kernels if isinstance(k, tuple) and str(k[0]).startswith("dw_")]


@pytest.mark.parametrize("case", CASES, ids=[str(i) for i in range(len(CASES))])
def test_depthwise_forward_and_gradients(case):
    N, C, H, W, k, s, p, cl, bias = case
    x, w, b = _layer(sum(case[:7]), N, C, H, W, k, bias)
    y, gy, gx, gw, gb = _reference(x, w, b, s, p)
    got = _on_wgpu(x, w, b, s, p, gy, channels_last=cl)
    if cl:
        assert got[4].is_contiguous(memory_format=torch.channels_last), "channels_last in, channels_last out"
    _close(got[:4], (y, gx, gw, gb), 2e-5)


CL_CASES = [  # channels_last: N, C, H, W, k, stride, pad, bias, forward kernel: "vec4" (f32, C % 4 == 0),
    # else the tiled one's outputs per thread (8 or 4), None for the direct kernel
    (2, 5, 13, 11, 3, 1, 1, True, 8),         # odd C: one partial 16-channel block; scalar grad-weight
    (2, 20, 9, 14, 3, 2, 1, False, "vec4"),   # C % 4 == 0, stride 2: vec4 forward and grad-weight
    (1, 17, 12, 9, 5, 1, 2, True, 8),         # 5x5, 17 channels
    (2, 8, 11, 13, 5, 2, 2, True, "vec4"),    # 5x5 stride 2
    (1, 12, 15, 10, 7, 1, 3, False, "vec4"),  # 7x7 (scalar grad-weight: 4 x 49 sums would spill)
    (2, 6, 10, 17, 7, 2, 3, True, 4),         # 7x7 stride 2: a tile 4 outputs wide fits workgroup memory
    (2, 10, 11, 9, 5, 2, 2, False, 8),        # 5x5 stride 2, C % 4 != 0: the tiled kernel
    (1, 3, 9, 11, 13, 1, 6, True, None),      # 13x13: no tile fits, the direct kernel
]


@pytest.mark.parametrize("case", CL_CASES, ids=[str(i) for i in range(len(CL_CASES))])
def test_channels_last_kernels(case):
    """channels_last forward, grad-input and grad-weight against float64 on the CPU, and which kernels
    ran: the vec4 forward for f32 with C % 4 == 0, else the tiled one (or the direct one where no tile
    fits), the grad-weight by slices of 4-wide position runs, as vec4 for f32 3x3 with C % 4 == 0."""
    N, C, H, W, k, s, p, bias, kind = case
    x, w, b = _layer(sum(case[:7]) + 100, N, C, H, W, k, bias)
    y, gy, gx, gw, gb = _reference(x, w, b, s, p)
    runtime()._kernels.clear()
    got = _on_wgpu(x, w, b, s, p, gy, channels_last=True)
    assert got[4].is_contiguous(memory_format=torch.channels_last)
    _close(got[:4], (y, gx, gw, gb), 2e-5)
    keys = _dw_kernels()
    fwd = [key for key in keys if key[0] in ("dw_vec4", "dw_nhwc", "dw_direct") and not key[5]]
    want = {"vec4": "dw_vec4", None: "dw_direct"}.get(kind, "dw_nhwc")
    assert fwd and all(key[0] == want for key in fwd), keys
    assert want != "dw_nhwc" or fwd[0][6] == kind, keys
    wgrad = [key for key in keys if key[0] == "dw_wgrad_nhwc"]
    assert len(wgrad) == 1 and wgrad[0][5] == (C % 4 == 0 and k == 3), keys


def test_channels_last_views_and_repeatable_grad_weight():
    """A channel slice of a channels_last tensor (offset 2: not 16-byte aligned, so no vec4) with an NCHW
    grad-output, and the grad-weight bit for bit the same when run again (its slices are summed in a
    fixed order)."""
    gen = torch.Generator().manual_seed(29)
    big = torch.randn(3, 12, 14, 15, generator=gen, dtype=torch.float64)
    w = torch.randn(8, 1, 3, 3, generator=gen, dtype=torch.float64)
    x = big[:, 2:10]
    y, gy, gx, gw, _ = _reference(x, w, None, 1, 1)
    xd = big.float().contiguous(memory_format=torch.channels_last).to("wgpu")[:, 2:10].requires_grad_()
    assert xd.stride(1) == 1 and not xd.is_contiguous(memory_format=torch.channels_last)
    grads = []
    for _ in range(2):
        wd = w.float().to("wgpu").requires_grad_()
        out = F.conv2d(xd, wd, None, 1, 1, groups=8)
        out.backward(gy.float().to("wgpu"))
        _close((out.detach().cpu(), xd.grad.cpu(), wd.grad.cpu()), (y, gx, gw), 2e-5)
        grads.append(wd.grad.cpu())
        xd.grad = None
    assert torch.equal(grads[0], grads[1])


def test_the_direct_kernels_run_and_not_the_implicit_gemm(monkeypatch):
    """With tuning off (the default here) every pass of a depthwise layer, a strided one's grad-input
    phases included, runs the direct kernels: the implicit-GEMM passes would raise."""
    def refuse(*args, **kwargs):
        raise AssertionError("the implicit GEMM ran for a depthwise layer")
    for name in ("implicit_forward", "implicit_grad_input", "implicit_grad_weight"):
        monkeypatch.setattr(choose, name, refuse)   # where the pass is chosen (kernels/conv/choose.py)
    runtime()._kernels.clear()
    x, w, b = _layer(3, 2, 4, 10, 11, 3)
    y, gy, gx, gw, gb = _reference(x, w, b, 2, 1)
    _close(_on_wgpu(x, w, b, 2, 1, gy)[:4], (y, gx, gw, gb), 2e-5)
    kinds = {k[0] for k in _dw_kernels()}
    assert {"dw_wgrad"} <= kinds and kinds & {"dw_tiled", "dw_direct"}, kinds
    assert "dw_dgrad" in kinds, "the stride-2 grad-input was not one gather"
    assert not any(k[0] in ("dw_tiled", "dw_direct") and k[5] for k in _dw_kernels()), "grad-input went by phases"
    channels_last = x.contiguous(memory_format=torch.channels_last)
    _close(_on_wgpu(channels_last, w, b, 2, 1, gy, channels_last=True)[:4], (y, gx, gw, gb), 2e-5)
    new = {k for k in _dw_kernels() if k[0] not in kinds}
    assert {k[0] for k in new} == {"dw_vec4", "dw_wgrad_nhwc"}, "channels_last f32, C % 4 == 0: not the vec4 kernel"
    assert all(k[5] for k in new if k[0] == "dw_wgrad_nhwc"), "channels_last grad-weight, C % 4 == 0: not as vec4"
    y1, gy1, gx1, gw1, gb1 = _reference(x, w, b, 1, 1)
    _close(_on_wgpu(x, w, b, 1, 1, gy1)[:4], (y1, gx1, gw1, gb1), 2e-5)
    assert any(k[0] in ("dw_tiled", "dw_direct") and k[5] for k in _dw_kernels()), "stride 1: no rotated kernel"


def test_tuner_times_direct_against_gemm_and_both_are_right(monkeypatch):
    """Where the tuner runs, pick_choice gets both candidates for each pass; each candidate, run on
    its own, gives the CPU's answer, and the 'gemm' one really runs the implicit GEMM."""
    for choice in ("direct", "gemm"):
        seen = force_tuner_choice(monkeypatch, choice)
        runtime()._kernels.clear()
        x, w, b = _layer(5, 2, 6, 9, 8, 5)
        y, gy, gx, gw, gb = _reference(x, w, b, 1, 2)
        _close(_on_wgpu(x, w, b, 1, 2, gy)[:4], (y, gx, gw, gb), 2e-5)
        passes = {key.split("|")[1].split("-")[0] for key, _, _ in seen if key.startswith("conv_dw|")}
        assert passes == {"fwd", "dgrad", "wgrad"}, seen
        assert all("-nchw-k5x5-s11" in key for key, _, _ in seen if key.startswith("conv_dw|")), seen
        assert all(opts == ["direct", "gemm"] and default == "direct" for _, opts, default in seen)
        assert bool(_dw_kernels()) == (choice == "direct"), (choice, _dw_kernels())


def test_strided_inputs_and_weights():
    """x a strided view (every other column, a channel slice), w a slice of a larger weight."""
    gen = torch.Generator().manual_seed(11)
    big = torch.randn(2, 7, 13, 22, generator=gen, dtype=torch.float64)
    wbig = torch.randn(5, 2, 3, 3, generator=gen, dtype=torch.float64)
    b = torch.randn(5, generator=gen, dtype=torch.float64)
    x, w = big[:, 1:6, :, ::2], wbig[:, 1:2]
    y, gy, gx, gw, gb = _reference(x, w, b, 1, 1)
    xd = big.float().to("wgpu")[:, 1:6, :, ::2].requires_grad_()
    wd = wbig.float().to("wgpu")[:, 1:2].requires_grad_()
    bd = b.float().to("wgpu").requires_grad_()
    assert not xd.is_contiguous() and not wd.is_contiguous()
    out = F.conv2d(xd, wd, bd, 1, 1, groups=5)
    out.backward(gy.float().to("wgpu"))
    _close((out.detach().cpu(), xd.grad.cpu(), wd.grad.cpu(), bd.grad.cpu()), (y, gx, gw, gb), 2e-5)


def test_transposed_depthwise():
    """conv_transpose2d with groups == channels runs its forward as a depthwise grad-input (stride 2,
    output padding) and its grad-input as a depthwise forward: both through the direct kernels."""
    gen = torch.Generator().manual_seed(23)
    x = torch.randn(2, 5, 6, 7, generator=gen, dtype=torch.float64, requires_grad=True)
    w = torch.randn(5, 1, 3, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    b = torch.randn(5, generator=gen, dtype=torch.float64, requires_grad=True)
    ref = F.conv_transpose2d(x, w, b, stride=2, padding=1, output_padding=1, groups=5)
    gy = torch.randn(ref.shape, generator=gen, dtype=torch.float64)
    ref.backward(gy)
    runtime()._kernels.clear()
    xd, wd, bd = (t.detach().float().to("wgpu").requires_grad_() for t in (x, w, b))
    y = F.conv_transpose2d(xd, wd, bd, stride=2, padding=1, output_padding=1, groups=5)
    y.backward(gy.float().to("wgpu"))
    _close((y.detach().cpu(), xd.grad.cpu(), wd.grad.cpu(), bd.grad.cpu()), (ref, x.grad, w.grad, b.grad), 2e-5)
    assert {"dw_dgrad", "dw_wgrad"} <= {k[0] for k in _dw_kernels()}


@pytest.mark.parametrize("cl,C", [(False, 3), (True, 3), (True, 4)],
                         ids=["nchw", "channels_last", "channels_last-vec4"])
def test_nan_and_inf_propagate(cl, C):
    """NaN and inf inside the image and on its edges (the last row and the last column of an odd width,
    where a thread's 4-wide position run hangs past the image): the CPU's NaN and inf patterns."""
    gen = torch.Generator().manual_seed(13)
    x = torch.randn(2, C, 12, 13, generator=gen, dtype=torch.float64)
    x[0, 0, 2, 3], x[0, 1, 5, 5], x[1, 2, 0, 0] = float("nan"), float("inf"), float("-inf")
    x[1, 0, 11, 6], x[0, 2, 7, 12] = float("inf"), float("-inf")
    w = torch.randn(C, 1, 3, 3, generator=gen, dtype=torch.float64)
    b = torch.randn(C, generator=gen, dtype=torch.float64)
    y, gy, gx, gw, gb = _reference(x, w, b, 1, 1)
    gy[1, 1, 4, 4] = float("nan")   # reaches grad-input and grad-weight through dy
    gy[0, C - 1, 3, 11] = float("inf")   # its taps all inside the image (float32 on the CPU skips padding taps)
    xs, ws = x.clone().requires_grad_(), w.clone().requires_grad_()
    F.conv2d(xs, ws, b, 1, 1, groups=C).backward(gy)
    got = _on_wgpu(x, w, b, 1, 1, gy, channels_last=cl)
    for g, want, what in zip(got[:3], (y, xs.grad, ws.grad), ("output", "grad_input", "grad_weight")):
        g = g.double()
        assert torch.equal(torch.isnan(g), torch.isnan(want)), f"{what}: NaN pattern differs"
        assert torch.equal(torch.isinf(g), torch.isinf(want)), f"{what}: inf pattern differs"
        assert torch.isnan(want).any(), f"{what}: the case does not exercise NaN"
        finite = torch.isfinite(want)
        assert torch.allclose(g[finite], want[finite], rtol=1e-4, atol=1e-4), what
        assert torch.equal(g[torch.isinf(want)], want[torch.isinf(want)]), f"{what}: inf signs differ"


@pytest.mark.parametrize("cl", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_16_bit_storage(dtype, cl):
    """f16/bf16 tensors: products and sums in f32, compared with the CPU in float64 on the same
    rounded inputs, to the storage type's precision."""
    gen = torch.Generator().manual_seed(17)
    x = torch.randn(2, 4, 11, 10, generator=gen, dtype=torch.float64).to(dtype).double()
    w = torch.randn(4, 1, 3, 3, generator=gen, dtype=torch.float64).to(dtype).double()
    b = torch.randn(4, generator=gen, dtype=torch.float64).to(dtype).double()
    y, gy, gx, gw, gb = _reference(x, w, b, 2, 1, round_gy_to=dtype)
    got = _on_wgpu(x, w, b, 2, 1, gy, dtype=dtype, channels_last=cl)
    assert all(t.dtype == dtype for t in got[:4])
    y1, gy1, gx1, gw1, gb1 = _reference(x, w, b, 1, 1, round_gy_to=dtype)   # stride 1: the tiled grad-input
    _close(_on_wgpu(x, w, b, 1, 1, gy1, dtype=dtype, channels_last=cl)[:4], (y1, gx1, gw1, gb1),
           1e-2 if dtype == torch.float16 else 2e-2)
    _close(got[:4], (y, gx, gw, gb), 1e-2 if dtype == torch.float16 else 2e-2)


class _Relu6(torch.nn.Module):
    def forward(self, x):
        return F.relu6(x)


def _mobilenet_block(c_in=8, expand=4, c_out=12):
    hidden = c_in * expand
    return torch.nn.Sequential(
        torch.nn.Conv2d(c_in, hidden, 1, bias=False), torch.nn.BatchNorm2d(hidden), _Relu6(),
        torch.nn.Conv2d(hidden, hidden, 3, 2, 1, groups=hidden, bias=False), torch.nn.BatchNorm2d(hidden), _Relu6(),
        torch.nn.Conv2d(hidden, c_out, 1, bias=False), torch.nn.BatchNorm2d(c_out))


@pytest.mark.parametrize("cl", [False, True], ids=["nchw", "channels_last"])
def test_mobilenet_v2_block_training_step(cl):
    """1x1 expand, depthwise 3x3/s2, 1x1 project with BN and ReLU6: one SGD step (momentum) on wgpu
    equals the CPU's -- loss, every parameter after the step, BN running stats."""
    torch.manual_seed(19)
    cpu = _mobilenet_block()
    dev = _mobilenet_block()
    dev.load_state_dict(cpu.state_dict())
    dev = dev.to("wgpu")
    x = torch.randn(3, 8, 15, 14)
    target = torch.randn(3, 12, 8, 7)
    if cl:
        cpu, dev = cpu.to(memory_format=torch.channels_last), dev.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    losses = []
    for model, inp, tgt in ((cpu, x, target), (dev, x.to("wgpu"), target.to("wgpu"))):
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        loss = F.mse_loss(model(inp), tgt)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert abs(losses[0] - losses[1]) < 1e-4 * abs(losses[0])
    for (name, a), b in zip(cpu.state_dict().items(), dev.state_dict().values()):
        assert torch.allclose(a.float(), b.cpu().float(), rtol=1e-3, atol=1e-4), name
