"""Bilinear and nearest 2-d upsampling kept whole when torch.compile traces them.

PyTorch registers Python decompositions for `upsample_bilinear2d` and `upsample_nearest2d` (both the
`.vec` and the sized overloads) at the CompositeImplicitAutograd and Autograd keys; AOTAutograd's
tracing takes them, so a compiled graph gathers with `_unsafe_index` and its backward scatters with
accumulating `index_put`s, which here are a key sort and a segmented sum each: four per bilinear
upsampling, where the eager step runs one direct gather kernel (upsample.py). That made a compiled
U-Net slower than its captured eager step (run 15).

Registering the ops' autograd at AutogradPrivateUse1 takes precedence over those decompositions for
wgpu tensors (the Python dispatcher resolves a kernel of the exact key first), in eager mode and in
tracing alike: an autograd.Function runs the op below autograd (our forward kernel) and its backward
op (our backward kernel), which also keeps a double backward differentiable. Scale factors reach the
kernels as the C++ `.vec` overloads pass them. (Below autograd, nearest's sized overload still has a
CompositeImplicitAutograd decomposition, so a compiled graph's nearest forward is one `_unsafe_index`
gather; its backward, the scatter, is ours.)
"""
from __future__ import annotations

import math

import torch

aten = torch.ops.aten


def _output_size(x, output_size, scale_factors) -> list[int]:
    if output_size is not None:
        return [int(s) for s in output_size]
    return [int(math.floor(float(x.shape[2 + i]) * float(s))) for i, s in enumerate(scale_factors)]


def _scales(scale_factors) -> tuple:
    return tuple(scale_factors) if scale_factors else (None, None)


class _Bilinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, output_size, align_corners, scales_h, scales_w):
        ctx.args = (list(output_size), list(x.shape), align_corners, scales_h, scales_w)
        with torch._C._AutoDispatchBelowAutograd():
            return aten.upsample_bilinear2d.default(x, output_size, align_corners, scales_h, scales_w)

    @staticmethod
    def backward(ctx, grad):
        output_size, input_size, align_corners, scales_h, scales_w = ctx.args
        return (aten.upsample_bilinear2d_backward.default(grad, output_size, input_size, align_corners,
                                                          scales_h, scales_w), None, None, None, None)


class _Nearest(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, output_size, scales_h, scales_w):
        ctx.args = (list(output_size), list(x.shape), scales_h, scales_w)
        with torch._C._AutoDispatchBelowAutograd():
            return aten.upsample_nearest2d.default(x, output_size, scales_h, scales_w)

    @staticmethod
    def backward(ctx, grad):
        output_size, input_size, scales_h, scales_w = ctx.args
        return aten.upsample_nearest2d_backward.default(grad, output_size, input_size, scales_h, scales_w), \
            None, None, None


def bilinear2d(x, output_size, align_corners, scales_h=None, scales_w=None):
    return _Bilinear.apply(x, list(output_size), align_corners, scales_h, scales_w)


def bilinear2d_vec(x, output_size, align_corners, scale_factors):
    return _Bilinear.apply(x, _output_size(x, output_size, scale_factors), align_corners, *_scales(scale_factors))


def nearest2d(x, output_size, scales_h=None, scales_w=None):
    return _Nearest.apply(x, list(output_size), scales_h, scales_w)


def nearest2d_vec(x, output_size, scale_factors):
    return _Nearest.apply(x, _output_size(x, output_size, scale_factors), *_scales(scale_factors))


_lib = torch.library.Library("aten", "IMPL")
_lib.impl("upsample_bilinear2d", bilinear2d, "AutogradPrivateUse1")
_lib.impl("upsample_bilinear2d.vec", bilinear2d_vec, "AutogradPrivateUse1")
_lib.impl("upsample_nearest2d", nearest2d, "AutogradPrivateUse1")
_lib.impl("upsample_nearest2d.vec", nearest2d_vec, "AutogradPrivateUse1")
