"""Backward of weight normalisation (nn.utils.weight_norm and parametrizations.weight_norm: wav2vec2's
positional convolution, WaveNet-style models) on the device.

The forward, aten._weight_norm_interface, runs as PyTorch's decomposition (norm, divide, multiply), but
autograd still records the fused op's own backward, _weight_norm_interface_backward, which has no
decomposition: without this handler every step of such a model took the CPU fallback there. It is the
CPU kernel's formula written with aten ops, accumulated in float32 for float16/bfloat16 as the CPU does:

    s      = sum over every dim but `dim` of grad_w * v      (per slice of `dim`)
    grad_g = s / norm
    grad_v = (g / norm) * (grad_w - v * s / norm**2)
"""
from __future__ import annotations

import torch

from navitrain.wgpu.dims import wrap_dim
from navitrain.wgpu.dispatch import implements

aten = torch.ops.aten
_REDUCED = (torch.float16, torch.bfloat16)


@implements(aten._weight_norm_interface_backward.default)
def weight_norm_interface_backward(grad_w, saved_v, saved_g, saved_norms, dim):
    dim = wrap_dim(dim, saved_v.dim())
    compute = torch.float32 if saved_v.dtype in _REDUCED else saved_v.dtype

    def widened(t):
        return t if t.dtype == compute else aten._to_copy.default(t, dtype=compute)

    grad_w, v, g, norms = (widened(t) for t in (grad_w, saved_v, saved_g, saved_norms))
    per_slice = [d for d in range(v.dim()) if d != dim]
    products = aten.mul.Tensor(grad_w, v)
    # a 1-d weight has nothing to sum over (sum over an empty dim list would sum everything)
    sums = aten.sum.dim_IntList(products, per_slice, True) if per_slice else products
    grad_g = aten.div.Tensor(sums, norms)
    along_v = aten.mul.Tensor(v, aten.div.Tensor(grad_g, norms))
    grad_v = aten.mul.Tensor(aten.div.Tensor(g, norms), aten.sub.Tensor(grad_w, along_v))
    if grad_v.dtype != saved_v.dtype:
        grad_v = aten._to_copy.default(grad_v, dtype=saved_v.dtype)
    if grad_g.dtype != saved_g.dtype:
        grad_g = aten._to_copy.default(grad_g, dtype=saved_g.dtype)
    return grad_v, grad_g
