"""aten::convolution and aten::convolution_backward on the wgpu device (1-D and 2-D, groups, stride,
padding, dilation, transposed), built on the implicit-GEMM kernels of navitrain.wgpu.kernels.conv.

A transposed convolution is the adjoint of an ordinary one: its forward is an ordinary convolution's
grad-input, its grad-input an ordinary forward, and its grad-weight an ordinary grad-weight with the
roles of input and output swapped.
"""
from __future__ import annotations

import functools

import torch

from navitrain import conv_args
from navitrain.wgpu.dispatch import implements
from navitrain.wgpu.kernels import conv, winograd
from navitrain.wgpu.kernels.reduction import reduce
from navitrain.wgpu.tensor import empty

aten = torch.ops.aten

HALF_DTYPES = (torch.float16, torch.bfloat16)


def _pair(v, n=2):
    v = list(v)
    return tuple(v * n if len(v) == 1 else v)


def _as_2d(t):
    """A 3-D (N, C, L) tensor as the 4-D (N, C, 1, L) view; 4-D unchanged."""
    if t is None or t.dim() == 4:
        return t
    return aten.unsqueeze.default(t, 2)


def _memory_format(x, w):
    # PyTorch returns channels_last when the input or the weight is channels_last (suggest_memory_format).
    for t in (x, w):
        if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous():
            return torch.channels_last
    return torch.contiguous_format


def _new(shape, dtype, fmt):
    if fmt == torch.channels_last and len(shape) == 4:
        return empty(shape, dtype, _channels_last_strides(tuple(shape)))
    return empty(shape, dtype)


@functools.lru_cache(maxsize=1024)
def _channels_last_strides(shape: tuple) -> tuple:
    return torch.empty(shape, device="meta").to(memory_format=torch.channels_last).stride()


def _geometry(x, w, stride, padding, dilation, groups, out_hw):
    N, C, H, W = x.shape
    OC, _, KH, KW = w.shape
    return conv.Geometry(N, C, H, W, OC, out_hw[0], out_hw[1], KH, KW, stride, padding, dilation, groups)


def _out_size(n, k, s, p, d):
    return (n + 2 * p - d * (k - 1) - 1) // s + 1


def _check(x, w, bias, stride, padding, dilation, transposed, output_padding, groups):
    """aten's argument checks, in aten's words (shared with the nomiopen route's engine), after the one
    limit of this device: no 3-D convolution yet."""
    if x.dim() not in (3, 4):
        raise NotImplementedError(f"wgpu convolution supports 1-D and 2-D inputs, got a {x.dim()}-D input")
    conv_args.check(x, w, bias, stride, padding, dilation, transposed, output_padding, groups)


def _ordinary_forward(x4, w4, bias, stride, padding, dilation, groups, fmt, out_hw=None):
    OH = _out_size(x4.shape[2], w4.shape[2], stride[0], padding[0], dilation[0])
    OW = _out_size(x4.shape[3], w4.shape[3], stride[1], padding[1], dilation[1])
    if out_hw is not None:  # a transposed conv's grad-input: exactly the input's size (output_padding)
        OH, OW = out_hw
    if OH <= 0 or OW <= 0:
        raise RuntimeError(f"convolution output size is too small ({OH}x{OW})")
    out = _new([x4.shape[0], w4.shape[0], OH, OW], x4.dtype, fmt)
    if out.numel():
        g = _geometry(x4, w4, stride, padding, dilation, groups, (OH, OW))
        if out_hw is None and conv.use_winograd(
                "fwd", x4, w4, stride, padding, dilation, groups,
                lambda: conv.forward(x4, w4, bias, g, out), lambda: winograd.conv3x3(x4, w4, bias, padding[0], out)):
            winograd.conv3x3(x4, w4, bias, padding[0], out)
        else:
            conv.forward(x4, w4, bias, g, out)
    return out


def _ordinary_grad_input(dy4, w4, x_shape, stride, padding, dilation, groups, fmt, dtype):
    dx = _new(list(x_shape), dtype, fmt)
    N, C, H, W = x_shape
    g = conv.Geometry(N, C, H, W, w4.shape[0], dy4.shape[2], dy4.shape[3], w4.shape[2], w4.shape[3],
                      stride, padding, dilation, groups)
    if dx.numel():
        # grad-input of a stride-1 3x3 layer = the same convolution of dy with w transposed and rotated.
        if (dy4.shape[2] == H + 2 * padding[0] - 2 and dy4.shape[3] == W + 2 * padding[1] - 2
                and conv.use_winograd("dgrad", dy4, w4, stride, padding, dilation, groups,
                                       lambda: conv.grad_input(dy4, w4, g, dx),
                                       lambda: winograd.conv3x3(dy4, w4, None, 2 - padding[0], dx, rotate=True))):
            winograd.conv3x3(dy4, w4, None, 2 - padding[0], dx, rotate=True)
        else:
            conv.grad_input(dy4, w4, g, dx)
    return dx


def _ordinary_grad_weight(dy4, x4, w_shape, stride, padding, dilation, groups, fmt, dtype):
    dw = _new(list(w_shape), dtype, fmt)
    N, C, H, W = x4.shape
    g = conv.Geometry(N, C, H, W, w_shape[0], dy4.shape[2], dy4.shape[3], w_shape[2], w_shape[3],
                      stride, padding, dilation, groups)
    if dw.numel():
        if N * dy4.shape[2] * dy4.shape[3] == 0:
            return aten.zero_.default(dw)
        conv.grad_weight(dy4, x4, g, dw)
    return dw


def _same_device(*tensors):
    from navitrain.wgpu.tensor import WgpuTensor

    for t in tensors:
        if t is not None and not isinstance(t, WgpuTensor):
            raise RuntimeError(f"Expected all tensors to be on the same device, but found a {t.device} tensor "
                               "among wgpu tensors (move it with .to('wgpu'))")


@implements(aten.convolution.default)
def convolution(x, w, bias, stride, padding, dilation, transposed, output_padding, groups):
    _same_device(x, w, bias)
    _check(x, w, bias, stride, padding, dilation, transposed, output_padding, groups)
    one_d = x.dim() == 3
    x4, w4 = _as_2d(x), _as_2d(w)
    n = 1 if one_d else 2
    stride, padding, dilation = _pair(stride, n), _pair(padding, n), _pair(dilation, n)
    if one_d:
        stride, padding, dilation = (1,) + stride, (0,) + padding, (1,) + dilation
        output_padding = (0,) + tuple(_pair(output_padding, 1)) if output_padding else (0, 0)
    fmt = _memory_format(x4, w4)
    if not transposed:
        out = _ordinary_forward(x4, w4, bias, stride, padding, dilation, groups, fmt)
    else:
        output_padding = _pair(output_padding, 2) if output_padding else (0, 0)
        N, Cin, H, W = x4.shape
        Cout = w4.shape[1] * groups
        OH = (H - 1) * stride[0] - 2 * padding[0] + dilation[0] * (w4.shape[2] - 1) + output_padding[0] + 1
        OW = (W - 1) * stride[1] - 2 * padding[1] + dilation[1] * (w4.shape[3] - 1) + output_padding[1] + 1
        # The adjoint ordinary conv maps [N, Cout, OH, OW] -> [N, Cin, H, W] with weight w (Cin = its OC).
        # A half result with a bias is kept in float32 until the bias is in: rounding the sum and then the
        # sum plus bias could be a whole unit in the last place off (the CPU rounds once).
        acc = torch.float32 if bias is not None and x.dtype in HALF_DTYPES else x.dtype
        out = _ordinary_grad_input(x4, w4, (N, Cout, OH, OW), stride, padding, dilation, groups, fmt, acc)
        if bias is not None:
            out = aten.add_.Tensor(out, aten.view.default(bias, [1, -1, 1, 1]))
        if acc != x.dtype:
            out = aten._to_copy.default(out, dtype=x.dtype)
    return aten.squeeze.dim(out, 2) if one_d else out


@implements(aten.convolution_backward.default)
def convolution_backward(grad_output, x, w, bias_sizes, stride, padding, dilation, transposed, output_padding,
                         groups, output_mask):
    _same_device(grad_output, x, w)
    one_d = x.dim() == 3
    dy4, x4, w4 = _as_2d(grad_output), _as_2d(x), _as_2d(w)
    n = 1 if one_d else 2
    stride, padding, dilation = _pair(stride, n), _pair(padding, n), _pair(dilation, n)
    if one_d:
        stride, padding, dilation = (1,) + stride, (0,) + padding, (1,) + dilation
    fmt = _memory_format(x4, w4)
    grad_input = grad_weight = grad_bias = None
    if not transposed:
        if output_mask[0]:
            grad_input = _ordinary_grad_input(dy4, w4, tuple(x4.shape), stride, padding, dilation, groups, fmt, x.dtype)
        if output_mask[1]:
            grad_weight = _ordinary_grad_weight(dy4, x4, tuple(w4.shape), stride, padding, dilation, groups, fmt,
                                                w.dtype)
    else:
        # y = T(x): dx = ordinary forward of dy; dw = ordinary grad-weight with dy as the image and x
        # as the gradient of the adjoint's output.
        if output_mask[0]:
            grad_input = _ordinary_forward(dy4, w4, None, stride, padding, dilation, groups, fmt,
                                           out_hw=(x4.shape[2], x4.shape[3]))
        if output_mask[1]:
            grad_weight = _ordinary_grad_weight(x4, dy4, tuple(w4.shape), stride, padding, dilation, groups, fmt,
                                                w.dtype)
    if output_mask[2]:
        dims = [0, 2] if one_d else [0, 2, 3]
        grad_bias = reduce(grad_output, dims, False, "sum", grad_output.dtype)
    if one_d:
        grad_input = aten.squeeze.dim(grad_input, 2) if grad_input is not None else None
        grad_weight = aten.squeeze.dim(grad_weight, 2) if grad_weight is not None else None
    return grad_input, grad_weight, grad_bias
