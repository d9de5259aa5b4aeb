"""3-D pooling (avg_pool3d, adaptive avg/max pool 3d, and the max-pool gradients) over the 2-D pools.

A box window is separable: its average is the average over depth of the averages over (H, W), and the
divisor PyTorch uses is a product of per-dimension counts (clipped or padded, ceil_mode included), so
avg_pool3d is avg_pool2d over (H, W) of [N, C*D, H, W] followed by avg_pool2d with a (kD, 1) window over
[N, C, D, Ho*Wo] -- exactly the CPU's windows and divisors, summed in another order (float32 rounding).
The same holds for adaptive windows, and for max: the (H, W) stage picks each depth slice's first
maximum (or last NaN), the depth stage the first such slice (or last NaN), which is the CPU's scan
order d, h, w. A max pool's gradient sends each output gradient to its saved flat index (scatter_add).
divisor_override is not separable, nor are integer averages (each stage truncates): those take the
counted CPU fallback.
"""
from __future__ import annotations

import torch

from navitrain.wgpu.dispatch import cpu_fallback, implements

aten = torch.ops.aten


def _triple(v, default=None):
    v = list(v) if isinstance(v, (list, tuple)) else [v]
    if not v and default is not None:
        return list(default)
    return v * 3 if len(v) == 1 else v


def _batched(x):
    return x if x.dim() == 5 else aten.unsqueeze.default(x, 0)


def _unbatch_like(y, x):
    return y if x.dim() == 5 else aten.squeeze.dim(y, 0)


def _hw_then_d(x, hw, d):
    """Apply hw(t4) to [N, C*D, H, W], then d(t4) to [N, C, D, Ho*Wo]; result [N, C, Do, Ho, Wo]."""
    n, c, depth, h, w = x.shape
    y = hw(aten.reshape.default(x.contiguous(), [n, c * depth, h, w]))
    ho, wo = y.shape[-2:]
    z = d(aten.reshape.default(y, [n, c, depth, ho * wo]))
    return aten.reshape.default(z, [n, c, z.shape[2], ho, wo])


@implements(aten.avg_pool3d.default)
def avg_pool3d(x, kernel_size, stride=(), padding=0, ceil_mode=False, count_include_pad=True,
               divisor_override=None):
    if divisor_override is not None or not x.dtype.is_floating_point:
        # Integer averages truncate: two truncating stages are not the CPU's one (counted fallback).
        return cpu_fallback(aten.avg_pool3d.default, (x, kernel_size, stride, padding, ceil_mode,
                                                      count_include_pad, divisor_override), {})
    (kd, kh, kw), (pd, ph, pw) = _triple(kernel_size), _triple(padding)
    sd, sh, sw = _triple(stride, default=(kd, kh, kw))
    out = _hw_then_d(
        _batched(x),
        lambda t: aten.avg_pool2d.default(t, [kh, kw], [sh, sw], [ph, pw], ceil_mode, count_include_pad),
        lambda t: aten.avg_pool2d.default(t, [kd, 1], [sd, 1], [pd, 0], ceil_mode, count_include_pad))
    return _unbatch_like(out, x)


@implements(aten.avg_pool3d_backward.default)
def avg_pool3d_backward(grad_output, x, kernel_size, stride, padding, ceil_mode, count_include_pad,
                        divisor_override):
    if divisor_override is not None:
        return cpu_fallback(aten.avg_pool3d_backward.default, (grad_output, x, kernel_size, stride, padding,
                                                               ceil_mode, count_include_pad, divisor_override), {})
    (kd, kh, kw), (pd, ph, pw) = _triple(kernel_size), _triple(padding)
    sd, sh, sw = _triple(stride, default=(kd, kh, kw))
    xb, gb = _batched(x), _batched(grad_output)
    n, c, depth, h, w = xb.shape
    x4 = aten.reshape.default(xb.contiguous(), [n, c * depth, h, w])
    mid = aten.avg_pool2d.default(x4, [kh, kw], [sh, sw], [ph, pw], ceil_mode, count_include_pad)
    ho, wo = mid.shape[-2:]
    mid4 = aten.reshape.default(mid, [n, c, depth, ho * wo])
    g4 = aten.reshape.default(gb.contiguous(), [n, c, gb.shape[2], ho * wo])
    g_mid = aten.avg_pool2d_backward.default(g4, mid4, [kd, 1], [sd, 1], [pd, 0], ceil_mode, count_include_pad, None)
    g_mid = aten.reshape.default(g_mid, [n, c * depth, ho, wo])
    gx = aten.avg_pool2d_backward.default(g_mid, x4, [kh, kw], [sh, sw], [ph, pw], ceil_mode, count_include_pad,
                                          None)
    return _unbatch_like(aten.reshape.default(gx, [n, c, depth, h, w]), x)


@implements(aten._adaptive_avg_pool3d.default)
def adaptive_avg_pool3d(x, output_size):
    od, oh, ow = _triple(output_size)
    xb = _batched(x)
    od, oh, ow = (xb.shape[2 + i] if s is None else s for i, s in enumerate((od, oh, ow)))
    out = _hw_then_d(xb, lambda t: aten._adaptive_avg_pool2d.default(t, [oh, ow]),
                     lambda t: aten._adaptive_avg_pool2d.default(t, [od, t.shape[3]]))
    return _unbatch_like(out, x)


@implements(aten._adaptive_avg_pool3d_backward.default)
def adaptive_avg_pool3d_backward(grad_output, x):
    xb, gb = _batched(x), _batched(grad_output)
    n, c, depth, h, w = xb.shape
    od, oh, ow = gb.shape[2:]
    x4 = aten.reshape.default(xb.contiguous(), [n, c * depth, h, w])
    mid = aten._adaptive_avg_pool2d.default(x4, [oh, ow])
    mid4 = aten.reshape.default(mid, [n, c, depth, oh * ow])
    g4 = aten.reshape.default(gb.contiguous(), [n, c, od, oh * ow])
    g_mid = aten.reshape.default(aten._adaptive_avg_pool2d_backward.default(g4, mid4), [n, c * depth, oh, ow])
    gx = aten._adaptive_avg_pool2d_backward.default(g_mid, x4)
    return _unbatch_like(aten.reshape.default(gx, [n, c, depth, h, w]), x)


@implements(aten.adaptive_max_pool3d.default)
def adaptive_max_pool3d(x, output_size):
    xb = _batched(x)
    n, c, depth, h, w = xb.shape
    od, oh, ow = (xb.shape[2 + i] if s is None else s for i, s in enumerate(_triple(output_size)))
    y, hw_idx = aten.adaptive_max_pool2d.default(aten.reshape.default(xb.contiguous(), [n, c * depth, h, w]),
                                                 [oh, ow])
    z, d_idx = aten.adaptive_max_pool2d.default(aten.reshape.default(y, [n, c, depth, oh * ow]), [od, oh * ow])
    d = aten.div.Tensor_mode(d_idx, oh * ow, rounding_mode="floor")  # the chosen depth slice
    hw = aten.gather.default(aten.reshape.default(hw_idx, [n, c, depth, oh * ow]), 2, d)
    idx = aten.add.Tensor(aten.mul.Tensor(d, h * w), hw)
    shape = [n, c, od, oh, ow]
    return (_unbatch_like(aten.reshape.default(z, shape), x), _unbatch_like(aten.reshape.default(idx, shape), x))


def _max_backward(grad_output, x, indices):
    xb, gb, ib = _batched(x), _batched(grad_output), _batched(indices)
    n, c = xb.shape[:2]
    flat = aten.zeros.default([n, c, xb.shape[2] * xb.shape[3] * xb.shape[4]], dtype=gb.dtype, device=gb.device)
    gx = aten.scatter_add.default(flat, 2, aten.reshape.default(ib.contiguous(), [n, c, -1]),
                                  aten.reshape.default(gb.contiguous(), [n, c, -1]))
    return _unbatch_like(aten.reshape.default(gx, list(xb.shape)), x)


@implements(aten.adaptive_max_pool3d_backward.default)
def adaptive_max_pool3d_backward(grad_output, x, indices):
    return _max_backward(grad_output, x, indices)


@implements(aten.max_pool3d_with_indices_backward.default)
def max_pool3d_with_indices_backward(grad_output, x, kernel_size, stride, padding, dilation, ceil_mode, indices):
    return _max_backward(grad_output, x, indices)
