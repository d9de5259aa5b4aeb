"""Direct kernels for grouped convolutions that are neither dense nor depthwise (ResNeXt's 32 groups of
4-32 channels, RegNet's groups of 8): forward, grad-input, grad-weight.

As an implicit GEMM such a layer is one product per group with 4-32 rows or columns (issue 23): tiles
32-128 wide waste most of their lanes on them. Here each thread computes CB (up to 8) channels of one
group at PX (4, or 2 for 7-wide kernels) positions of a row, each weight it loads serving PX sums and
each image value CB (direct.py); the grad-weight gives every (block of up to 4 output channels, input
channel) a workgroup per slice of positions and sums the slices in a fixed order (grad_weight.py).
NCHW, channels_last and strided views take the same kernels (every tensor through its own strides;
the thread order follows the layout). All sums are f32 products and adds in a fixed order (no
min/max/clamp on data, so NaN and inf propagate as on the CPU); storage dtypes through rt.stypes.

Chosen in kernels/conv/choose.py: timed against the implicit GEMM per shape class where the tuner runs
(`use_direct`), and by `prefer_direct`'s rule where it does not (lavapipe, NAVITRAIN_WGPU_TUNE=0).
"""
from __future__ import annotations

import torch

from navitrain.wgpu.kernels import codegen, gemm_tuning, route_switch
from navitrain.wgpu.kernels.conv_grouped import direct
from navitrain.wgpu.kernels.conv_grouped.common import GROUPED_P, MAX_TAPS, WG, geometry_words, tensor_words
from navitrain.wgpu.kernels.conv_grouped.grad_weight import MAX_TAPS as MAX_WGRAD_TAPS
from navitrain.wgpu.kernels.conv_grouped.grad_weight import grad_weight
from navitrain.wgpu.runtime import runtime
from navitrain.wgpu.tensor import WgpuTensor

__all__ = ["disabled", "eligible", "prefer_direct", "use_direct", "forward", "grad_input", "grad_weight"]

_FLOATS = (torch.float32, torch.float16, torch.bfloat16)
MAX_CB = 8             # channels a thread computes
# The rule where nothing is timed (prefer_direct), from bench_grouped_conv.py on lavapipe at batch 1
# (issue 23's table in the commit that added these kernels): the direct kernels took 0.04-0.4x the
# implicit GEMM's time with 4 and 8 channels a group in every pass, 0.3-0.5x with 16 in the forward and
# the stride-1 grad-input, but 1.0-1.7x for a strided grad-input with 16-32 and 1.1-3x for the
# grad-weight with 16-32 (or over a 7x7 image at batch 1), where the GEMM's tiles are full.
RULE_CHANNELS = {"fwd": 16, "dgrad": 16, "dgrad-strided": 8, "wgrad": 8}
RULE_MIN_WGRAD_POSITIONS = 256      # N*OH*OW: 4 positions for each of a workgroup's 64 threads
# off while the tuner times the implicit GEMM against these kernels (and in benchmarks)
_direct = route_switch.RouteSwitch()
# disabled(): route grouped layers to the implicit GEMM meanwhile (the tuner's other candidate)
disabled = _direct.disabled


def eligible(pass_name: str, g, *tensors) -> bool:
    """Whether the direct kernels handle geometry `g` (conv.Geometry) for this pass: more than one
    group, not one channel in and out per group (the depthwise kernels' case), at most 7x7 taps (5x5
    for the grad-weight's sums in registers), one float storage dtype."""
    if not _direct.on or g.groups <= 1 or (g.Cg == 1 and g.OCg == 1):
        return False
    taps = g.KH * g.KW
    if taps > (MAX_WGRAD_TAPS if pass_name == "wgrad" else MAX_TAPS) or g.OC * g.Cg > 65535:
        return False
    dtypes = {t.dtype for t in tensors if t is not None}
    return len(dtypes) == 1 and dtypes.pop() in _FLOATS


def prefer_direct(pass_name: str, g) -> bool:
    """The rule where nothing is timed (RULE_CHANNELS): the direct kernels for narrow groups, the
    implicit GEMM where its tiles are full."""
    if pass_name == "wgrad" and g.N * g.OH * g.OW < RULE_MIN_WGRAD_POSITIONS:
        return False
    rule = "dgrad-strided" if pass_name == "dgrad" and tuple(g.stride) != (1, 1) else pass_name
    return max(g.Cg, g.OCg) <= RULE_CHANNELS[rule]


def use_direct(pass_name: str, g, image: WgpuTensor, run_direct, run_gemm) -> bool:
    """Direct kernel or implicit GEMM for this shape and `image`'s layout: timed once per shape class
    where the tuner runs (`gemm_tuning.pick_choice`), prefer_direct's rule with tuning off."""

    def gemm():
        with disabled():
            run_gemm()

    layout = "nhwc" if _channels_inner(image) else "nchw"
    default = "direct" if prefer_direct(pass_name, g) else "gemm"

    def key():
        shape = (f"{pass_name}-{layout}-k{g.KH}x{g.KW}-s{g.stride[0]}{g.stride[1]}-d{g.dilation[0]}{g.dilation[1]}"
                 f"-c{g.Cg}x{g.OCg}")
        return "conv_grouped|" + gemm_tuning.shape_class(shape, g.groups, g.N * g.OH * g.OW, g.H * g.W, 1)
    return gemm_tuning.choice_by_shape(("conv_grouped", pass_name, layout, g), key,
                                       {"direct": run_direct, "gemm": gemm}, default) == "direct"


def _positions_per_thread(kw: int) -> int:
    """Neighbouring positions a thread computes: 4 (each weight loaded serves 4 sums per channel), 2 for
    kernels wider than 5 (8 channels x 4 positions of sums beside 4*7 column offsets would spill)."""
    return 4 if kw <= 5 else 2


def _channels_inner(t: WgpuTensor) -> bool:
    """channels_last: neighbouring channels of a pixel are neighbours in memory."""
    return t.shape[1] > 1 and t.stride(1) < t.stride(3)


def forward(x: WgpuTensor, w: WgpuTensor, bias: WgpuTensor | None, g, out: WgpuTensor) -> WgpuTensor:
    rt = runtime()
    if bias is not None and bias.dim() != 1:
        bias = bias.reshape(-1)
    cb, px = min(MAX_CB, g.OCg), _positions_per_thread(g.KW)
    blocks = -(-g.OCg // cb)
    P = g.N * g.OH * -(-g.OW // px)
    work = P * g.groups * blocks
    inner = _channels_inner(out)
    st_y, st_x, st_w = rt.stypes[out.dtype], rt.stypes[x.dtype], rt.stypes[w.dtype]
    st_b = rt.stypes[bias.dtype] if bias is not None else None
    key = ("grouped_fwd", g.KH, g.KW, cb, px, inner, out.dtype, x.dtype, w.dtype,
           bias.dtype if bias is not None else None)
    kernel = rt.kernel(key, "conv2d_grouped", 3 + (bias is not None),
                       lambda: direct.forward_source(g.KH, g.KW, cb, px, inner, st_y, st_x, st_w, st_b))
    params = GROUPED_P.pack(**geometry_words(g), blocks=blocks, work=work, npos=P, **tensor_words("x", x),
                            **tensor_words("w", w), **tensor_words("y", out),
                            b_off=bias.elem_offset if bias is not None else 0)
    heaps = (out._ws.heap, x._ws.heap, w._ws.heap) + ((bias._ws.heap,) if bias is not None else ())
    rt.dispatch(kernel, heaps, params, codegen.groups_for(work, WG))
    return out


def grad_input(dy: WgpuTensor, w: WgpuTensor, g, dx: WgpuTensor) -> WgpuTensor:
    rt = runtime()
    cb, px = min(MAX_CB, g.Cg), _positions_per_thread(g.KW)
    blocks = -(-g.Cg // cb)
    P = g.N * g.H * g.stride[1] * -(-(-(-g.W // g.stride[1])) // px)   # segments: direct.grad_input_source
    work = P * g.groups * blocks
    inner = _channels_inner(dx)
    st_x, st_y, st_w = rt.stypes[dx.dtype], rt.stypes[dy.dtype], rt.stypes[w.dtype]
    key = ("grouped_dgrad", g.KH, g.KW, cb, px, inner, dx.dtype, dy.dtype, w.dtype)
    kernel = rt.kernel(key, "conv2d_grouped_grad_input", 3,
                       lambda: direct.grad_input_source(g.KH, g.KW, cb, px, inner, st_x, st_y, st_w))
    params = GROUPED_P.pack(**geometry_words(g), blocks=blocks, work=work, npos=P, **tensor_words("x", dx),
                            **tensor_words("w", w), **tensor_words("y", dy))
    rt.dispatch(kernel, (dx._ws.heap, dy._ws.heap, w._ws.heap), params, codegen.groups_for(work, WG))
    return dx
