"""F.adaptive_avg_pool2d(x, 1) (squeeze-excitation's squeeze, every classifier's last pool) as one autograd
node, registered at the AutogradPrivateUse1 key of aten::adaptive_avg_pool2d.

PyTorch's composite turns an output size of 1 into x.mean((-1, -2), keepdim=True): the reduction engine
takes one or two kernels for it (a split pass and a finishing pass), and its backward a division of the
expanded gradient. Here the forward is one kernel (kernels/global_pool.py, NCHW or channels-last read in
place); the backward is the mean's, grad.expand(x.shape) / (H * W), one pointwise kernel whose output
has the layout the CPU gives (tests/wgpu/test_ops_pooling.py checks it). Handing back the stride-0
view grad.expand(...) / (H * W) instead would save that full-size write, but not match the CPU's dense
gradient. Other output sizes, and dtypes without kernels, take the composite's own path
(aten::_adaptive_avg_pool2d, or the mean)."""
from __future__ import annotations

import torch

from navitrain.wgpu.kernels.global_pool import global_mean
from navitrain.wgpu.ops.pooling import has_kernel, suggests_channels_last
from navitrain.wgpu.tensor import WgpuTensor, empty

aten = torch.ops.aten


class _GlobalAvgPool(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.shape = tuple(x.shape)
        batched = x.dim() == 4
        ctx.channels_last = batched and suggests_channels_last(x)
        N, C, H, W = x.shape if batched else (1, *x.shape)
        strides = tuple(x.stride()) if batched else (0, *x.stride())
        if ctx.channels_last:
            out_strides = (C, 1, C, C)  # what the composite's as_strided gives a channels-last input
        else:
            out_strides = (C, 1, 1, 1) if batched else (1, 1, 1)
        out = empty(((N,) if batched else ()) + (C, 1, 1), x.dtype, out_strides)
        global_mean(x, out, N, C, H, W, strides, (C if batched else 0, 1))
        return out

    @staticmethod
    def backward(ctx, grad):
        H, W = ctx.shape[-2:]
        return grad.expand(ctx.shape) / (H * W)  # differentiable ops: double backward works


def _composite(x, output_size):
    """aten's CompositeImplicitAutograd adaptive_avg_pool2d, for the inputs not taken here."""
    if tuple(output_size) == (1, 1):
        out = x.mean((-1, -2), keepdim=True)
        if x.dim() == 4 and suggests_channels_last(x):
            n, c = x.shape[:2]
            out = out.as_strided((n, c, 1, 1), (c, 1, c, c))
        return out
    return aten._adaptive_avg_pool2d.default(x, output_size)


def adaptive_avg_pool2d(x, output_size):
    size = [output_size] * 2 if isinstance(output_size, int) else list(output_size)
    if (isinstance(x, WgpuTensor) and size == [1, 1] and x.dim() in (3, 4) and x.numel()
            and has_kernel(x.dtype)):
        return _GlobalAvgPool.apply(x)
    return _composite(x, size)


_lib = torch.library.Library("aten", "IMPL")
_lib.impl("adaptive_avg_pool2d", adaptive_avg_pool2d, "AutogradPrivateUse1")
