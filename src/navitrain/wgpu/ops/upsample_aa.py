"""Antialiased bilinear resizing (aten._upsample_bilinear2d_aa and its backward), as two 1-d passes.

PyTorch's CPU kernel (UpSampleKernel.cpp, Pillow's filter) is separable: along each dimension, output
o averages the input window [xmin, xmin + xsize) around center = scale * (o + 0.5) with triangle
weights widened by the scale when shrinking, normalized to sum 1. The windows and weights depend on
the sizes and scales only, so they are computed here on the host, in float32 as the CPU computes them
(scale from upsample.py's UpSample.h rules), and uploaded once per geometry. One kernel then resamples
one dimension: out[p, o, q] = sum over the window's taps of w * x[p, xmin + j, q], every tap included
(zero weights too: an inf in a window makes NaN there, as on the CPU, and nowhere else). Width first,
then height, as the CPU does. The backward is the same kernel with the transposed tables: input i
gathers the outputs whose windows contain it (a contiguous run, windows being monotone), so no
atomics are needed.
"""
from __future__ import annotations

import functools

import numpy as np
import torch

from navitrain.wgpu.dispatch import cpu_fallback, implements
from navitrain.wgpu.kernels import codegen
from navitrain.wgpu.ops.upsample import _linear_scale
from navitrain.wgpu.runtime import runtime
from navitrain.wgpu.tensor import empty

aten = torch.ops.aten
WG = 256
_F32 = np.float32

_PARAMS = codegen.ParamBlock("total", "L_out", "Q", "L_in", "K", "x_off", "out_off", "start_off", "count_off",
                             "w_off")


def _source(x_st, out_st, table_st, w_st) -> str:
    body = f"""
  if (gi >= total) {{ return; }}
  let q = gi % Q; var r = gi / Q; let o = r % L_out; let p = r / L_out;
  let first = u32({table_st.load("b2[start_off + o]", "i32")});
  let count = u32({table_st.load("b2[count_off + o]", "i32")});
  let xb = x_off + (p * L_in + first) * Q + q;
  var acc = 0.0;
  for (var j = 0u; j < count; j = j + 1u) {{
    acc = acc + {x_st.load("b1[xb + j * Q]", "f32")} * {w_st.load("b3[w_off + o * K + j]", "f32")};
  }}
  b0[out_off + gi] = {out_st.store("acc")};"""
    return codegen.module([out_st.wgsl, x_st.wgsl, table_st.wgsl, w_st.wgsl], _PARAMS.wgsl() + body, WG)


def _weights(in_size: int, out_size: int, align_corners: bool, scale_arg) -> np.ndarray:
    """The dense [out, in] weights and window mask of one dimension, in the CPU's float32 steps."""
    scale = _F32(_linear_scale(in_size, out_size, align_corners, scale_arg))
    support = scale if scale >= 1.0 else _F32(1.0)  # (interp_size / 2) * scale, bilinear interp_size 2
    invscale = _F32(1.0 / float(scale)) if scale >= 1.0 else _F32(1.0)
    weights = np.zeros((out_size, in_size), dtype=_F32)
    window = np.zeros((out_size, in_size), dtype=bool)
    for o in range(out_size):
        center = _F32(float(scale) * (o + 0.5))
        xmin = max(int(float(center - support) + 0.5), 0)
        xsize = min(int(float(center + support) + 0.5), in_size) - xmin
        taps = np.zeros(max(xsize, 0), dtype=_F32)
        for j in range(xsize):
            x = abs(_F32((float(_F32(j + xmin) - center) + 0.5) * float(invscale)))
            taps[j] = _F32(1.0 - float(x)) if x < 1.0 else _F32(0.0)
        total = _F32(0.0)
        for t in taps:
            total = _F32(total + t)
        if total != 0:
            taps = (taps / total).astype(_F32)
        weights[o, xmin:xmin + xsize] = taps
        window[o, xmin:xmin + xsize] = True
    return weights, window


@functools.lru_cache(maxsize=64)
def _tables(in_size: int, out_size: int, align_corners: bool, scale_arg, transpose: bool):
    """(starts and counts as one int32 tensor [2 * rows], weights [rows, K]) on the device."""
    weights, window = _weights(in_size, out_size, align_corners, scale_arg)
    if transpose:
        weights, window = weights.T, window.T
    rows = weights.shape[0]
    counts = window.sum(1)
    starts = np.where(counts > 0, window.argmax(1), 0)
    k = max(1, int(counts.max(initial=0)))
    banded = np.zeros((rows, k), dtype=_F32)
    for r in range(rows):
        banded[r, :counts[r]] = weights[r, starts[r]:starts[r] + counts[r]]
    index = torch.from_numpy(np.concatenate([starts, counts]).astype(np.int32)).to("wgpu")
    return index, torch.from_numpy(banded).to("wgpu"), k


def _resample(x, dim: int, out_len: int, tables):
    """Resample contiguous x along `dim` with (index, weights, K) tables; a new contiguous tensor."""
    index, weights, k = tables
    shape = list(x.shape)
    q = int(np.prod(shape[dim + 1:], dtype=np.int64))
    out = empty(shape[:dim] + [out_len] + shape[dim + 1:], x.dtype)
    total = out.numel()
    if total == 0:
        return out
    rt = runtime()
    rows = index.numel() // 2
    params = _PARAMS.pack(total=total, L_out=out_len, Q=q, L_in=shape[dim], K=k, x_off=x.elem_offset,
                          out_off=out.elem_offset, start_off=index.elem_offset, count_off=index.elem_offset + rows,
                          w_off=weights.elem_offset)
    sts = [rt.stypes[d] for d in (out.dtype, x.dtype, torch.int32, torch.float32)]
    kernel = rt.kernel(("resample_aa", x.dtype), "resample_aa", 4, lambda: _source(sts[1], sts[0], sts[2], sts[3]))
    rt.dispatch(kernel, (out._ws.heap, x._ws.heap, index._ws.heap, weights._ws.heap), params,
                codegen.groups_for(total, WG))
    return out


def _check(in_size, output_size, op):
    if len(in_size) != 4 or len(output_size) != 2 or min(output_size) <= 0 or min(in_size[2:]) <= 0:
        raise RuntimeError(f"{op}: expected a 4-d input with positive sizes and 2 positive output sizes, got "
                           f"input {list(in_size)} and output_size {list(output_size)}")


@implements(aten._upsample_bilinear2d_aa.default)
def upsample_bilinear2d_aa(x, output_size, align_corners, scales_h=None, scales_w=None):
    if x.dtype != torch.float32:  # the CPU has float32 / float64 / uint8 kernels: the last two fall back
        return cpu_fallback(aten._upsample_bilinear2d_aa.default, (x, output_size, align_corners, scales_h,
                                                                   scales_w), {})
    _check(x.shape, output_size, "_upsample_bilinear2d_aa")
    (ih, iw), (oh, ow) = x.shape[2:], [int(s) for s in output_size]
    x = aten.clone.default(x, memory_format=torch.contiguous_format)
    t = _resample(x, 3, ow, _tables(iw, ow, bool(align_corners), scales_w, False))
    return _resample(t, 2, oh, _tables(ih, oh, bool(align_corners), scales_h, False))


@implements(aten._upsample_bilinear2d_aa_backward.default)
def upsample_bilinear2d_aa_backward(grad_output, output_size, input_size, align_corners, scales_h=None,
                                    scales_w=None):
    if grad_output.dtype != torch.float32:
        return cpu_fallback(aten._upsample_bilinear2d_aa_backward.default,
                            (grad_output, output_size, input_size, align_corners, scales_h, scales_w), {})
    _check(input_size, output_size, "_upsample_bilinear2d_aa_backward")
    (ih, iw), (oh, ow) = [int(s) for s in input_size[2:]], [int(s) for s in output_size]
    g = aten.clone.default(grad_output, memory_format=torch.contiguous_format)
    t = _resample(g, 3, iw, _tables(iw, ow, bool(align_corners), scales_w, True))
    return _resample(t, 2, ih, _tables(ih, oh, bool(align_corners), scales_h, True))
