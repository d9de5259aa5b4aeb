"""3-D pooling (avg/max pool 3d, adaptive avg/max pool 3d, and the max-pool gradients) over the 2-D pools.

A box window is separable: its average is the average over depth of the averages over (H, W), and the
divisor PyTorch uses is a product of per-dimension counts (clipped or padded, ceil_mode included), so
avg_pool3d is avg_pool2d over (H, W) of [N, C*D, H, W] followed by avg_pool2d with a (kD, 1) window over
[N, C, D, Ho*Wo] -- exactly the CPU's windows and divisors, summed in another order (float32 rounding).
The same holds for adaptive windows, and for max: the (H, W) stage picks each depth slice's first
maximum (or last NaN), the depth stage the first such slice (or last NaN), which is the CPU's scan
order d, h, w. A max pool's gradient sends each output gradient to its saved flat index (scatter_add).
With divisor_override, or for int64 (each averaging stage would truncate), both stages sum
(divisor_override=1) and one division follows: by the override, or (int64) truncating by the window's
divisor, which is a product of per-dimension counts computed on the host from the geometry alone.
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


def _window_divisors(size, out, k, s, p, count_include_pad):
    """PyTorch's per-output divisor along one dimension (AveragePool3d.cpp): the window clipped to the
    padded input, or to the input itself when padding does not count."""
    divisors = []
    for o in range(out):
        start = o * s - p
        end = min(start + k, size + p)
        pool = end - start
        start, end = max(start, 0), min(end, size)
        divisors.append(pool if count_include_pad else end - start)
    return divisors


def _summed(x, kernel_size, stride, padding, ceil_mode, count_include_pad, last_divisor=1):
    """avg_pool3d's two separable stages, the first one summing; the second divides by last_divisor."""
    (kd, kh, kw), (pd, ph, pw) = _triple(kernel_size), _triple(padding)
    sd, sh, sw = _triple(stride, default=(kd, kh, kw))
    return _hw_then_d(
        x,
        lambda t: aten.avg_pool2d.default(t, [kh, kw], [sh, sw], [ph, pw], ceil_mode, count_include_pad, 1),
        lambda t: aten.avg_pool2d.default(t, [kd, 1], [sd, 1], [pd, 0], ceil_mode, count_include_pad,
                                          last_divisor))


@implements(aten.avg_pool3d.default)
def avg_pool3d(x, kernel_size, stride=(), padding=0, ceil_mode=False, count_include_pad=True,
               divisor_override=None):
    if x.dtype not in (torch.float32, torch.float16, torch.bfloat16, torch.int64):
        # float64 has no kernel; the CPU averages no other integer type (it raises the error itself)
        return cpu_fallback(aten.avg_pool3d.default, (x, kernel_size, stride, padding, ceil_mode,
                                                      count_include_pad, divisor_override), {})
    if divisor_override is not None and divisor_override == 0:
        raise RuntimeError("divisor must be not zero")
    (kd, kh, kw), (pd, ph, pw) = _triple(kernel_size), _triple(padding)
    sd, sh, sw = _triple(stride, default=(kd, kh, kw))
    xb = _batched(x)
    if x.dtype == torch.int64:
        sums = _summed(xb, kernel_size, stride, padding, ceil_mode, count_include_pad)
        if divisor_override is not None:
            divisor = torch.tensor(int(divisor_override), dtype=torch.int64).to(x.device)
        else:
            per_dim = [_window_divisors(size, out, k, st, pad, count_include_pad)
                       for size, out, k, st, pad in zip(xb.shape[2:], sums.shape[2:], (kd, kh, kw), (sd, sh, sw),
                                                        (pd, ph, pw))]
            d_, h_, w_ = (torch.tensor(v, dtype=torch.int64) for v in per_dim)
            divisor = (d_[:, None, None] * h_[None, :, None] * w_[None, None, :]).to(x.device)
        return _unbatch_like(aten.div.Tensor_mode(sums, divisor, rounding_mode="trunc"), x)
    if divisor_override is not None:
        return _unbatch_like(_summed(xb, kernel_size, stride, padding, ceil_mode, count_include_pad,
                                     int(divisor_override)), x)
    out = _hw_then_d(
        xb,
        lambda t: aten.avg_pool2d.default(t, [kh, kw], [sh, sw], [ph, pw], ceil_mode, count_include_pad),
        lambda t: aten.avg_pool2d.default(t, [kd, 1], [sd, 1], [pd, 0], ceil_mode, count_include_pad))
    return _unbatch_like(out, x)


@implements(aten.avg_pool3d_backward.default)
def avg_pool3d_backward(grad_output, x, kernel_size, stride, padding, ceil_mode, count_include_pad,
                        divisor_override):
    if not (grad_output.dtype in (torch.float32, torch.float16, torch.bfloat16) and x.dtype == grad_output.dtype):
        return cpu_fallback(aten.avg_pool3d_backward.default, (grad_output, x, kernel_size, stride, padding,
                                                               ceil_mode, count_include_pad, divisor_override), {})
    if divisor_override is not None and divisor_override == 0:
        raise RuntimeError("divisor must be not zero")
    # With an override the forward summed, then divided once (see avg_pool3d): so does its gradient.
    first, last = (None, None) if divisor_override is None else (1, int(divisor_override))
    (kd, kh, kw), (pd, ph, pw) = _triple(kernel_size), _triple(padding)
    sd, sh, sw = _triple(stride, default=(kd, kh, kw))
    xb, gb = _batched(x), _batched(grad_output)
    n, c, depth, h, w = xb.shape
    x4 = aten.reshape.default(xb.contiguous(), [n, c * depth, h, w])
    mid = aten.avg_pool2d.default(x4, [kh, kw], [sh, sw], [ph, pw], ceil_mode, count_include_pad, first)
    ho, wo = mid.shape[-2:]
    mid4 = aten.reshape.default(mid, [n, c, depth, ho * wo])
    g4 = aten.reshape.default(gb.contiguous(), [n, c, gb.shape[2], ho * wo])
    g_mid = aten.avg_pool2d_backward.default(g4, mid4, [kd, 1], [sd, 1], [pd, 0], ceil_mode, count_include_pad, last)
    g_mid = aten.reshape.default(g_mid, [n, c * depth, ho, wo])
    gx = aten.avg_pool2d_backward.default(g_mid, x4, [kh, kw], [sh, sw], [ph, pw], ceil_mode, count_include_pad,
                                          first)
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


@implements(aten.max_pool3d_with_indices.default)
def max_pool3d_with_indices(x, kernel_size, stride=(), padding=0, dilation=1, ceil_mode=False):
    """max_pool2d over (H, W) of [N, C*D, H, W], then a (kD, 1) window over depth, as adaptive_max_pool3d.
    Registered here, not left to torch/_decomp: torch 2.13 decomposes this op into ones with kernels,
    torch 2.11 (the H100 run 12) has no decomposition, so it fell back (forbidden in strict mode)."""
    if x.dim() not in (4, 5):
        return cpu_fallback(aten.max_pool3d_with_indices.default,
                            (x, kernel_size, stride, padding, dilation, ceil_mode), {})
    (kd, kh, kw), (pd, ph, pw), (dd, dh, dw) = _triple(kernel_size), _triple(padding), _triple(dilation)
    sd, sh, sw = _triple(stride, default=(kd, kh, kw))
    xb = _batched(x)
    n, c, depth, h, w = xb.shape
    y, hw_idx = aten.max_pool2d_with_indices.default(aten.reshape.default(xb.contiguous(), [n, c * depth, h, w]),
                                                     [kh, kw], [sh, sw], [ph, pw], [dh, dw], ceil_mode)
    oh, ow = y.shape[-2:]
    z, d_idx = aten.max_pool2d_with_indices.default(aten.reshape.default(y, [n, c, depth, oh * ow]),
                                                    [kd, 1], [sd, 1], [pd, 0], [dd, 1], ceil_mode)
    d = aten.div.Tensor_mode(d_idx, oh * ow, rounding_mode="floor")  # the chosen depth slice
    hw = aten.gather.default(aten.reshape.default(hw_idx, [n, c, depth, oh * ow]), 2, d)
    idx = aten.add.Tensor(aten.mul.Tensor(d, h * w), hw)
    shape = [n, c, z.shape[2], oh, ow]
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
