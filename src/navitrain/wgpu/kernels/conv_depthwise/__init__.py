"""Direct depthwise convolution kernels (groups == in channels == out channels): forward, grad-input,
grad-weight.

As an implicit GEMM a depthwise layer is one tiny product per channel (K = kh*kw: 9, 25, 49), so it
runs at a fraction of the memory bandwidth it is bound by (issue 23: MobileNet/EfficientNet/ConvNeXt
3.5-7x slower than CUDA). Here each output is a short sum read straight from the image:
- `correlate`: out[n, c, oy, ox] = bias[c] + sum_{i,j} x[n, c, oy*sh - ph + i, ox*sw - pw + j] * w[c, i, j]
  (w optionally rotated by 180 degrees). It is the forward, and the stride-1 grad-input (dy with the
  rotated kernel and padding k-1-p), for any kh x kw (the implicit GEMM's output phases of a strided
  grad-input come here too when the tuner picks that route). Four kernels:
  tiled_nchw (NCHW planes with enough outputs: an output tile of one (n, c) plane per workgroup,
  the input tile + halo in workgroup memory); vec4_nhwc (channels_last f32 with C % 4 == 0, aligned:
  4 channels x 4 outputs a thread as vec4, straight from memory; faster than the tiled channels_last
  kernel on lavapipe and in the one H100 run that timed both, issue 23); tiled_nhwc (the other
  channels_last layers: a tile of rows x columns x 16 channels per workgroup in workgroup memory);
  direct (small NCHW planes, and channels_last kernels whose tile would not fit: each thread reads
  its 4 outputs' taps from memory).
- stride-2 grad-input: a gather in one dispatch (direct.strided_grad_input).
- grad-weight (grad_weight.py): the positions split into slices so that the whole GPU works, per-thread
  tap sums, the slices summed in a fixed order.
All sums are f32 products and adds (no min/max/clamp on data, so NaN and inf propagate like the CPU's);
storage dtypes through rt.stypes (f32, f16, bf16). Every tensor is read through its own strides.
"""
from __future__ import annotations

import torch

from navitrain.wgpu.kernels import codegen, gemm_tuning, route_switch
from navitrain.wgpu.kernels.conv_depthwise import direct, tiled_nchw, tiled_nhwc, vec4_nhwc
from navitrain.wgpu.kernels.conv_depthwise.common import MAX_TAPS, WG, channels_inner, correlate_params
from navitrain.wgpu.kernels.conv_depthwise.grad_weight import grad_weight
from navitrain.wgpu.runtime import runtime
from navitrain.wgpu.tensor import WgpuTensor

__all__ = ["disabled", "eligible", "use_direct", "correlate", "forward", "grad_input", "grad_weight"]

_FLOATS = (torch.float32, torch.float16, torch.bfloat16)
_direct = route_switch.RouteSwitch()  # off while the tuner times the implicit GEMM against these kernels
# disabled(): route depthwise layers to the implicit GEMM meanwhile (the tuner's other candidate)
disabled = _direct.disabled


def eligible(g, *tensors, any_kernel: bool = False) -> bool:
    """Whether the direct kernels handle geometry `g` (conv.Geometry) with these tensors: depthwise
    with multiplier 1, dilation 1, stride 1 or 2, one float storage dtype. Forward and grad-weight
    want an odd square kernel; a stride-1 grad-input (`any_kernel`, the strided grad-input's phases
    have sub-kernels such as 2x1) takes any kh x kw."""
    if not _direct.on or not (g.groups == g.C == g.OC <= 65535) or tuple(g.dilation) != (1, 1):
        return False
    if not all(s in (1, 2) for s in g.stride) or not (1 <= g.KH <= MAX_TAPS and 1 <= g.KW <= MAX_TAPS):
        return False
    if not any_kernel and (g.KH != g.KW or g.KH % 2 == 0):
        return False
    dtypes = {t.dtype for t in tensors if t is not None}
    return len(dtypes) == 1 and dtypes.pop() in _FLOATS


def use_direct(pass_name: str, g, image: WgpuTensor, run_direct, run_gemm) -> bool:
    """Direct kernel or implicit GEMM for this shape and `image`'s layout: timed once per shape class
    where the tuner runs (`gemm_tuning.pick_choice`), the direct kernel with tuning off (lavapipe, CI)."""

    def gemm():
        with disabled():
            run_gemm()

    layout = "nhwc" if channels_inner(image) else "nchw"

    def key():
        shape = f"{pass_name}-{layout}-k{g.KH}x{g.KW}-s{g.stride[0]}{g.stride[1]}"
        return "conv_dw|" + gemm_tuning.shape_class(shape, g.C, g.N * g.OH * g.OW, g.H * g.W, 1)
    return gemm_tuning.choice_by_shape(("conv_dw", pass_name, layout, g), key, {"direct": run_direct, "gemm": gemm},
                                       "direct") == "direct"


def correlate(x: WgpuTensor, w: WgpuTensor, bias: WgpuTensor | None, out: WgpuTensor, stride, padding,
              flip: bool = False) -> WgpuTensor:
    """out[n, c, oy, ox] = bias[c] + sum_{i,j} x[n, c, oy*s0 - p0 + i, ox*s1 - p1 + j] * w'[c, 0, i, j]
    (w' = w rotated by 180 degrees when `flip`); out's size sets the output range."""
    rt = runtime()
    N, C = x.shape[0], x.shape[1]
    _, _, OH, OW = out.shape
    kh, kw = w.shape[2], w.shape[3]
    sh, sw = stride
    st_o, st_x, st_w = rt.stypes[out.dtype], rt.stypes[x.dtype], rt.stypes[w.dtype]
    st_b = rt.stypes[bias.dtype] if bias is not None else None
    dtypes = (out.dtype, x.dtype, w.dtype, st_b and bias.dtype)
    inner = channels_inner(out)
    vec4 = inner and vec4_nhwc.fits(x, out)
    tw = tiled_nhwc.tile_width(kh, kw, sh, sw) if inner and not vec4 else None
    if vec4:
        groups_w, work = vec4_nhwc.launch_shape(N, C, OH, OW)
        tiles_h = 0
        key = ("dw_vec4", kh, kw, sh, sw, flip) + dtypes
        source = lambda: vec4_nhwc.source(kh, kw, sh, sw, flip, st_w, st_b)
        groups = codegen.groups_for(work, WG)
    elif tw is not None:
        groups_w, tiles_h, work = tiled_nhwc.launch_shape(N, C, OH, OW, tw)
        key = ("dw_nhwc", kh, kw, sh, sw, flip, tw) + dtypes
        source = lambda: tiled_nhwc.source(kh, kw, sh, sw, flip, tw, st_o, st_x, st_w, st_b)
        groups = codegen.grid(work)
    elif not inner and OH * OW >= 128:
        tw_threads = tiled_nchw.threads_along_w(OW)
        rows, cols = tiled_nchw.TILES[tw_threads]
        groups_w, tiles_h = -(-OW // cols), -(-OH // rows)
        work = N * C * groups_w * tiles_h
        key = ("dw_tiled", kh, kw, sh, sw, flip, tw_threads) + dtypes
        source = lambda: tiled_nchw.source(kh, kw, sh, sw, flip, tw_threads, st_o, st_x, st_w, st_b)
        groups = codegen.grid(work)
    else:
        groups_w, tiles_h = -(-OW // 4), 0
        work = N * C * OH * groups_w
        key = ("dw_direct", kh, kw, sh, sw, flip, inner) + dtypes
        source = lambda: direct.correlate_source(kh, kw, sh, sw, flip, inner, st_o, st_x, st_w, st_b)
        groups = codegen.groups_for(work, WG)
    params = correlate_params(x, w, out, bias, padding, groups_w, tiles_h, work)
    heaps = (out._ws.heap, x._ws.heap, w._ws.heap) + ((bias._ws.heap,) if bias is not None else ())
    kernel = rt.kernel(key, "conv2d_depthwise", len(heaps), source)
    rt.dispatch(kernel, heaps, params, groups)
    return out


def forward(x: WgpuTensor, w: WgpuTensor, bias: WgpuTensor | None, g, out: WgpuTensor) -> WgpuTensor:
    if bias is not None and bias.dim() != 1:
        bias = bias.reshape(-1)
    return correlate(x, w, bias, out, g.stride, g.padding)


def grad_input(dy: WgpuTensor, w: WgpuTensor, g, dx: WgpuTensor) -> WgpuTensor:
    """Stride 1: dx is dy correlated with the rotated kernel, padded by k-1-p. Stride 2: a gather,
    one dispatch (not conv.py's four output phases, each paying for views and a launch)."""
    if tuple(g.stride) == (1, 1):
        return correlate(dy, w, None, dx, (1, 1), (g.KH - 1 - g.padding[0], g.KW - 1 - g.padding[1]), flip=True)
    return direct.strided_grad_input(dy, w, g, dx)
