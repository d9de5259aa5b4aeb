"""3-D convolution (conv3d, conv_transpose3d, and their gradients) over the 2-D convolution kernels.

A 3-D convolution is a sum over the kernel's depth taps kd of 2-D convolutions: output depth slice j
takes input depth slice j*sD + kd*dD (after depth padding) through the weight's slice [:, :, kd]. So the
input's strided depth slices for one kd become the batch of one 2-D convolution ([N*Do, C, H, W]), and the
kD results are summed. Gradients go the same way through the 2-D convolution_backward; the transposed
convolution is the adjoint: each 2-D transposed result lands on output depths i*sD + kd*dD - pD.

Half inputs run in float32 and are rounded once at the end, as the CPU's results are (summing the taps in
the half dtype rounded every partial sum; issue 17).

aten.convolution / convolution_backward are registered by ops/conv.py (1-D and 2-D); this module routes
5-D calls here and passes every other call on to those handlers unchanged.
"""
from __future__ import annotations

import torch

from navitrain.wgpu import dispatch
from navitrain.wgpu.ops import conv as _conv  # registers the 2-D handlers first

aten = torch.ops.aten

_conv2d = dispatch.OPS[aten.convolution.default]
_conv2d_backward = dispatch.OPS[aten.convolution_backward.default]


def _triple(v):
    v = list(v) if isinstance(v, (list, tuple)) else [v]
    return v * 3 if len(v) == 1 else v


def _to_2d(t):
    """[N, C, D, H, W] -> [N*D, C, H, W] (contiguous)."""
    n, c, d, h, w = t.shape
    return aten.reshape.default(aten.permute.default(t, [0, 2, 1, 3, 4]).contiguous(), [n * d, c, h, w])


def _from_2d(t, n):
    """[N*D, C, H, W] -> [N, C, D, H, W] (a permuted view)."""
    nd, c, h, w = t.shape
    return aten.permute.default(aten.reshape.default(t, [n, nd // n, c, h, w]), [0, 2, 1, 3, 4])


def _depth_slices(t, start, count, step):
    return aten.slice.Tensor(t, 2, start, start + step * (count - 1) + 1, step)


def _pad_depth(t, before, after):
    return aten.constant_pad_nd.default(t, [0, 0, 0, 0, before, after], 0.0) if before or after else t


def _add_bias(out, bias):
    return out if bias is None else aten.add.Tensor(out, aten.view.default(bias, [1, -1, 1, 1, 1]))


def _forward(x, w, bias, stride, padding, dilation, groups):
    (sd, sh, sw), (pd, ph, pw), (dd, dh, dw) = stride, padding, dilation
    n, kd = x.shape[0], w.shape[2]
    xp = _pad_depth(x, pd, pd)
    do = (xp.shape[2] - dd * (kd - 1) - 1) // sd + 1
    if do <= 0:
        raise RuntimeError(f"conv3d: kernel depth {kd} (dilation {dd}) is larger than the padded input depth "
                           f"{xp.shape[2]}")
    total = None
    for k in range(kd):
        xs = _to_2d(_depth_slices(xp, k * dd, do, sd))
        y = _conv2d(xs, w[:, :, k], None, [sh, sw], [ph, pw], [dh, dw], False, [0, 0], groups)
        total = y if total is None else aten.add_.Tensor(total, y)
    return _add_bias(_from_2d(total, n).contiguous(), bias)


def _transposed_full_depth(x, w, stride, dilation, output_padding):
    return (x.shape[2] - 1) * stride[0] + dilation[0] * (w.shape[2] - 1) + 1 + output_padding[0]


def _transposed(x, w, bias, stride, padding, dilation, output_padding, groups):
    (sd, sh, sw), (pd, ph, pw), (dd, dh, dw) = stride, padding, dilation
    n, d, kd = x.shape[0], x.shape[2], w.shape[2]
    full = _transposed_full_depth(x, w, stride, dilation, output_padding)
    x2 = _to_2d(x)
    out = None
    for k in range(kd):
        y = _from_2d(_conv2d(x2, w[:, :, k], None, [sh, sw], [ph, pw], [dh, dw], True, output_padding[1:],
                             groups), n)
        if out is None:
            out = aten.zeros.default([n, y.shape[1], full, y.shape[3], y.shape[4]], dtype=y.dtype, device=y.device)
        target = _depth_slices(out, k * dd, d, sd)
        aten.add_.Tensor(target, y)
    return _add_bias(aten.slice.Tensor(out, 2, pd, full - pd).contiguous(), bias)


def _float32(t):
    return None if t is None else aten._to_copy.default(t, dtype=torch.float32)


def _rounded(t, like):
    return None if t is None or like is None else aten._to_copy.default(t, dtype=like.dtype)


def convolution(x, w, bias, stride, padding, dilation, transposed, output_padding, groups):
    if x.dim() != 5:
        return _conv2d(x, w, bias, stride, padding, dilation, transposed, output_padding, groups)
    if x.dtype in _conv.HALF_DTYPES:
        # The depth taps are 2-D convolutions summed afterwards: summed in a half dtype, every partial sum would
        # round and drift by units in the last place where the CPU rounds once, so they are summed in float32.
        out = convolution(_float32(x), _float32(w), _float32(bias), stride, padding, dilation, transposed,
                          output_padding, groups)
        return _rounded(out, x)
    stride, padding, dilation = _triple(stride), _triple(padding), _triple(dilation)
    if transposed:
        return _transposed(x, w, bias, stride, padding, dilation, _triple(output_padding or [0]), groups)
    return _forward(x, w, bias, stride, padding, dilation, groups)


def convolution_backward(grad_output, x, w, bias_sizes, stride, padding, dilation, transposed, output_padding,
                         groups, output_mask):
    if x.dim() != 5:
        return _conv2d_backward(grad_output, x, w, bias_sizes, stride, padding, dilation, transposed,
                                output_padding, groups, output_mask)
    if x.dtype in _conv.HALF_DTYPES:  # in float32, as the forward (see convolution)
        gx, gw, gb = convolution_backward(_float32(grad_output), _float32(x), _float32(w), bias_sizes, stride,
                                          padding, dilation, transposed, output_padding, groups, output_mask)
        return _rounded(gx, x), _rounded(gw, w), _rounded(gb, grad_output)
    (sd, sh, sw), (pd, ph, pw), (dd, dh, dw) = _triple(stride), _triple(padding), _triple(dilation)
    output_padding = _triple(output_padding or [0])
    n, kd = x.shape[0], w.shape[2]
    mask2 = [output_mask[0], output_mask[1], False]
    grad_input = grad_weight = grad_bias = None
    gw_parts = []
    if not transposed:
        xp = _pad_depth(x, pd, pd)
        do = grad_output.shape[2]
        dy2 = _to_2d(grad_output)
        gxp = aten.zeros.default(list(xp.shape), dtype=x.dtype, device=x.device) if output_mask[0] else None
        for k in range(kd):
            xs = _to_2d(_depth_slices(xp, k * dd, do, sd))
            gx, gw, _ = _conv2d_backward(dy2, xs, w[:, :, k], None, [sh, sw], [ph, pw], [dh, dw], False, [0, 0],
                                         groups, mask2)
            if gx is not None:
                aten.add_.Tensor(_depth_slices(gxp, k * dd, do, sd), _from_2d(gx, n))
            gw_parts.append(gw)
        if output_mask[0]:
            grad_input = aten.slice.Tensor(gxp, 2, pd, pd + x.shape[2]).contiguous()
    else:
        d = x.shape[2]
        full = _transposed_full_depth(x, w, (sd, sh, sw), (dd, dh, dw), output_padding)
        gyp = _pad_depth(grad_output, pd, full - pd - grad_output.shape[2])
        x2 = _to_2d(x)
        for k in range(kd):
            gy = _to_2d(_depth_slices(gyp, k * dd, d, sd))
            gx, gw, _ = _conv2d_backward(gy, x2, w[:, :, k], None, [sh, sw], [ph, pw], [dh, dw], True,
                                         output_padding[1:], groups, mask2)
            if gx is not None:
                grad_input = gx if grad_input is None else aten.add_.Tensor(grad_input, gx)
            gw_parts.append(gw)
        if grad_input is not None:
            grad_input = _from_2d(grad_input, n).contiguous()
    if output_mask[1]:
        grad_weight = aten.stack.default(gw_parts, 2)
    if output_mask[2]:
        grad_bias = aten.sum.dim_IntList(grad_output, [0, 2, 3, 4])
    return grad_input, grad_weight, grad_bias


# Route through this module (a wrapper, not a second registration: dispatch refuses those).
dispatch.OPS[aten.convolution.default] = convolution
dispatch.OPS[aten.convolution_backward.default] = convolution_backward
