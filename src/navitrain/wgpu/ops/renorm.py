"""torch.renorm as one autograd node, registered at the AutogradPrivateUse1 key.

PyTorch's paths for a PrivateUse1 device went to the CPU: the forward decomposition converts the
float16 / bfloat16 scale factor with prims.convert_element_type (no handler), and the autograd formula
(renorm_backward) takes the norm in the device's accumulate type, which for float32 is float64 (the
CPU's table). Here the forward follows the CPU kernel: the norm over every dim but `dim` in float32
(float16 / bfloat16 inputs too), factor = maxnorm / (norm + 1e-7) where norm > maxnorm else 1, the input
times the factor in float32, stored in the input's dtype. The backward is renorm_backward's formula
with float32 accumulation, the norm's own gradient taken by autograd over vector_norm on the device.
"""
from __future__ import annotations

import torch

aten = torch.ops.aten
_EPS = 1e-7


def _check(x, p, dim, maxnorm):
    if isinstance(p, complex) or isinstance(maxnorm, complex):
        raise RuntimeError("renorm: p and maxnorm must be real-valued")
    if not p > 0:
        raise RuntimeError("renorm: non-positive-norm not supported")
    if not maxnorm >= 0:
        raise RuntimeError(f"renorm: expected maxnorm to be >= 0 but got {maxnorm}")
    if x.dim() <= 1:
        raise RuntimeError(f"renorm: input needs at least 2 dimensions, got {x.dim()} dimensions")


def _renorm(x, p, dim, maxnorm):
    """The forward in torch ops (differentiable when called with grad enabled)."""
    dim = dim % x.dim()
    dims = [d for d in range(x.dim()) if d != dim]
    acc = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
    norm = torch.linalg.vector_norm(x, p, dims, keepdim=True, dtype=acc)
    factor = torch.where(norm > maxnorm, maxnorm / (norm + _EPS), 1.0)
    return (x * factor).to(x.dtype)


class _Renorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, p, dim, maxnorm):
        ctx.save_for_backward(x)
        ctx.args = (p, dim, maxnorm)
        return _renorm(x, p, dim, maxnorm)

    @staticmethod
    def backward(ctx, grad_out):
        # renorm_backward (FunctionsManual.cpp) with float32 accumulation: where a slice's norm is not
        # above maxnorm (NaN included) the gradient passes through untouched.
        (x,) = ctx.saved_tensors
        p, dim, maxnorm = ctx.args
        dims = [d for d in range(x.dim()) if d != dim % x.dim()]
        acc = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
        with torch.enable_grad():
            leaf = x.detach().requires_grad_()
            norm = torch.linalg.vector_norm(leaf, p, dims, keepdim=True, dtype=acc)
            along = (x * grad_out).sum(dims, keepdim=True, dtype=acc)
            (norm_grad,) = torch.autograd.grad(norm, leaf, along)  # norm_backward: vector_norm's own formula
        norm = norm.detach()
        inverse = (norm + _EPS).reciprocal()
        scaled = maxnorm * inverse * (grad_out - inverse * norm_grad)
        return torch.where(norm > maxnorm, scaled.to(grad_out.dtype), grad_out), None, None, None


def renorm(x, p, dim, maxnorm):
    _check(x, p, dim, maxnorm)
    return _Renorm.apply(x, p, dim, maxnorm)


_lib = torch.library.Library("aten", "IMPL")
_lib.impl("renorm", renorm, "AutogradPrivateUse1")
