"""Operands of the indexing handlers (indexing, scatter_reduce, masked, embedding): index tensors that
arrive on the CPU, 0-d tensors, and strides read over an iteration shape."""
from __future__ import annotations

import torch

from navitrain.wgpu.tensor import WgpuTensor, from_cpu

aten = torch.ops.aten


def as_device(t):
    return t if isinstance(t, WgpuTensor) else from_cpu(t)


def strides_over(t: torch.Tensor, shape, dims=None) -> list[int]:
    """Strides of `t` read over an iteration `shape`: t's dim i maps to iteration dim dims[i] (default:
    right-aligned broadcasting); size-1 and unmapped dims get stride 0."""
    nd = len(shape)
    if dims is None:
        dims = list(range(nd - t.dim(), nd))
    out = [0] * nd
    for i, d in enumerate(dims):
        if t.shape[i] != 1:
            out[d] = t.stride(i)
    return out


def at_least_1d(*ts):
    """0-d tensors viewed as 1-d, so dim-wise code needs no special case (the views share storage)."""
    return tuple(aten.reshape.default(t, [1]) if isinstance(t, torch.Tensor) and t.dim() == 0 else t for t in ts)
