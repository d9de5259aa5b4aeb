"""Strided 1x1 convolutions (ResNet shortcuts) without compaction copies (issue 19): the forward and the
weight gradient read x[:, :, ::2, ::2] in place (NCHW: two 16-byte loads per four positions where aligned;
channels_last: four channels per 16-byte load), and the input gradient is written straight into dx with
the untouched positions zero-filled. Against a float64 CPU reference in both memory formats, odd sizes
and odd H/W (the last row and column are read), N > 1, NaN and +-inf; and profiles of an eager and a
compiled strided 1x1 layer showing no pointwise_copy."""
import pytest
import torch
import torch.nn.functional as F

import navitrain.wgpu as nw
from navitrain.wgpu.runtime import runtime

INF, NAN = float("inf"), float("nan")

# N, C, H, W, OC, stride
SHAPES = [
    (2, 16, 8, 8, 32, 2),       # ResNet shortcut, aligned: every-other 16-byte loads
    (2, 8, 9, 9, 12, 2),        # odd H/W: the last row and column are strided positions
    (3, 5, 7, 10, 6, 2),        # odd channels: guarded tiles, scalar loads
    (2, 4, 16, 15, 8, 2),       # OW a multiple of 4 but W odd: the vector read would pass the row
    (1, 6, 7, 8, 4, (2, 1)),    # stride along H only
    (2, 4, 9, 9, 4, 3),         # stride 3: two rows and two columns of three untouched
]
IDS = ["x".join(map(str, c)) for c in SHAPES]


def _fmt(channels_last):
    return torch.channels_last if channels_last else torch.contiguous_format


def _inputs(case, seed):
    N, C, H, W, OC, s = case
    sh, sw = (s, s) if isinstance(s, int) else s
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(N, C, H, W, generator=gen, dtype=torch.float64)
    w = torch.randn(OC, C, 1, 1, generator=gen, dtype=torch.float64)
    b = torch.randn(OC, generator=gen, dtype=torch.float64)
    gy = torch.randn(N, OC, (H - 1) // sh + 1, (W - 1) // sw + 1, generator=gen, dtype=torch.float64)
    return x, w, b, gy, (sh, sw)


def _on_wgpu(x, w, b, gy, stride, channels_last):
    """(y, dx, dw, db) of conv2d on wgpu, float32, through the aten handlers."""
    fmt = _fmt(channels_last)
    xd = x.float().to("wgpu").contiguous(memory_format=fmt).requires_grad_()
    wd = w.float().to("wgpu").contiguous(memory_format=fmt).requires_grad_()
    bd = b.float().to("wgpu").requires_grad_()
    y = F.conv2d(xd, wd, bd, stride)
    y.backward(gy.float().to("wgpu").contiguous(memory_format=fmt))
    return [t.cpu().double() for t in (y.detach(), xd.grad, wd.grad, bd.grad)]


def _on_cpu(x, w, b, gy, stride):
    x, w, b = (t.clone().requires_grad_() for t in (x, w, b))
    y = F.conv2d(x, w, b, stride)
    y.backward(gy)
    return [y.detach(), x.grad, w.grad, b.grad]


def _assert_close(got, want, what):
    assert torch.equal(torch.isnan(got), torch.isnan(want)), what
    assert torch.equal(got == INF, want == INF), what
    assert torch.equal(got == -INF, want == -INF), what
    finite = torch.isfinite(want)
    scale = want[finite].abs().max().item() if finite.any() else 1.0
    assert (got[finite] - want[finite]).abs().max().item() <= 2e-5 * max(scale, 1.0), what


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("case", SHAPES, ids=IDS)
def test_forward_and_gradients_match_float64_cpu(case, channels_last):
    x, w, b, gy, stride = _inputs(case, hash((case, channels_last)) % 1000)
    got = _on_wgpu(x, w, b, gy, stride, channels_last)
    for name, g, want in zip(("y", "dx", "dw", "db"), got, _on_cpu(x, w, b, gy, stride)):
        _assert_close(g, want, name)


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("case", [SHAPES[0], SHAPES[1]], ids=IDS[:2])
def test_nan_and_inf_reach_what_they_touch_and_skipped_inputs_stay_out(case, channels_last):
    """Non-finite values in the strided positions of x, in dy and in w spread as on the CPU; those in the
    positions a stride-2 1x1 never reads reach nothing (the in-place read must skip them exactly)."""
    x, w, b, gy, stride = _inputs(case, 5)
    x[0, 1, 0, 0], x[1, 2, 2, 4], x[1, 0, -1, -1] = NAN, INF, -INF      # read (the last row and column too)
    x[0, 0, 1, 1], x[1, 3, 0, 1], x[0, 2, 3, 0] = NAN, INF, NAN         # never read: odd row or column
    gy[1, 3, 1, 2], gy[0, -1, -1, -1] = NAN, -INF
    w[4, 5, 0, 0] = INF
    got = _on_wgpu(x, w, b, gy, stride, channels_last)
    for name, g, want in zip(("y", "dx", "dw", "db"), got, _on_cpu(x, w, b, gy, stride)):
        _assert_close(g, want, name)


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_aligned_layers_read_x_in_place_with_16_byte_loads(channels_last):
    """The aligned ResNet shortcut compiles operands that read x (and, channels_last, dy) in place with
    16-byte loads -- NCHW: two at a time keeping every other element (operands._every_other) -- and its
    result is right."""
    runtime()._kernels.clear()
    x, w, b, gy, stride = _inputs((2, 32, 8, 8, 32, 2), 3)     # whole tiles in every pass
    got = _on_wgpu(x, w, b, gy, stride, channels_last)
    for name, g, want in zip(("y", "dx", "dw", "db"), got, _on_cpu(x, w, b, gy, stride)):
        _assert_close(g, want, name)
    keys = [k for k in runtime()._kernels if isinstance(k, tuple) and k[:1] == ("gemm",)]
    operands = [op for k in keys for op in (k[3], k[4]) if isinstance(op, tuple)]
    # (keys: operands.ImagePositions.key = (.., tensor, every_other, vec_binding, flat),
    #  GradOutRows.key = (.., fastest, vec_binding, every_other, tensor))
    if channels_last:
        for tensor in ("x", "y"):       # forward, grad-input
            assert any(op[0] == "positions" and op[3] == tensor and op[5] for op in operands), operands
        assert any(op[0] == "chan_rows" and op[-1] == "x" and op[3] == "row" and op[4] for op in operands), operands
    else:
        assert any(op[0] == "positions" and op[4] is True and op[5] for op in operands), operands  # forward
        assert any(op[0] == "chan_rows" and op[5] is True and op[4] for op in operands), operands  # weight grad


def _shortcut_pass(x, w, gy):
    """A stride-2 1x1 shortcut's forward and both gradients (aten.convolution_backward, as autograd and
    compiled graphs call it; a whole autograd step would add the graph plumbing's own copies)."""
    y = F.conv2d(x, w, None, 2)
    dx, dw, _ = torch.ops.aten.convolution_backward(gy, x, w, None, (2, 2), (0, 0), (1, 1), False, (0, 0), 1,
                                                    (True, True, False))
    return y, dx, dw


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
@pytest.mark.usefixtures("fresh_compile_state")
def test_strided_1x1_forward_and_backward_dispatch_no_copy(compiled, channels_last):
    x, w, _, gy, _ = _inputs(SHAPES[1], 9)      # odd H/W: dx's last row and column get gradients
    fmt = _fmt(channels_last)
    xd, wd, gyd = (t.float().to("wgpu").contiguous(memory_format=fmt) for t in (x, w, gy))
    run = torch.compile(_shortcut_pass, backend="wgpu") if compiled else _shortcut_pass
    run(xd, wd, gyd)            # compiles the kernels (and the graph) outside the profile
    nw.synchronize()
    with nw.profile() as table:
        got = run(xd, wd, gyd)
    names = list(table)
    assert "pointwise_copy" not in names, dict(table)
    assert any(n.startswith("conv2d_grad_input") for n in names), names
    want = _shortcut_pass(x, w, gy)
    for name, g, ref in zip(("y", "dx", "dw"), got, want):
        _assert_close(g.cpu().double(), ref, name)
