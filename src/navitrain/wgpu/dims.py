"""Dimension and layout helpers every layer may use: wrapping a dim index as PyTorch does, and a
contiguous copy only when one is needed. Plumbing (they depend on nothing above tensor.py), so the
kernel engines and the aten handlers share one copy instead of each keeping its own."""
from __future__ import annotations

import torch

from navitrain.wgpu.tensor import WgpuTensor

aten = torch.ops.aten


def wrap_dim(dim: int, ndim: int) -> int:
    """`dim` in [0, ndim) (a 0-d tensor accepts 0 and -1, as in PyTorch), or PyTorch's IndexError."""
    n = max(ndim, 1)
    if not -n <= dim < n:
        raise IndexError(f"Dimension out of range (expected to be in range of [{-n}, {n - 1}], but got {dim})")
    return dim % n


def contiguous(t: WgpuTensor) -> WgpuTensor:
    """`t` itself when already contiguous, else a contiguous copy."""
    return t if t.is_contiguous() else aten.clone.default(t, memory_format=torch.contiguous_format)
