"""Ops that assemble tensors from pieces: cat and stack (kernels/concat.py copies up to six pieces per
launch; dtype conversions and ranks above 4 take one strided copy per piece)."""
from __future__ import annotations

import torch

from navitrain.wgpu.dims import wrap_dim
from navitrain.wgpu.dispatch import implements
from navitrain.wgpu.kernels import concat
from navitrain.wgpu.kernels.copy import copy_into
from navitrain.wgpu.ops.views import slice_, unsqueeze
from navitrain.wgpu.promotion import result_type
from navitrain.wgpu.tensor import WgpuTensor, empty, from_cpu

aten = torch.ops.aten


@implements(aten.cat.default)
def cat(tensors, dim=0):
    # Legacy rule kept by aten: 1-D empty tensors are skipped whatever their shape.
    parts = [t for t in tensors if not (t.dim() == 1 and t.shape[0] == 0)]
    if not parts:
        return empty([0], result_type(*tensors) if tensors else torch.get_default_dtype())
    parts = [t if isinstance(t, WgpuTensor) else from_cpu(t) for t in parts]
    ref = parts[0]
    d = wrap_dim(dim, ref.dim())
    for t in parts:
        if t.dim() != ref.dim() or any(t.shape[i] != ref.shape[i] for i in range(ref.dim()) if i != d):
            raise RuntimeError(f"Sizes of tensors must match except in dimension {d}. "
                               f"Got {list(t.shape)} and {list(ref.shape)}")
    dtype = parts[0].dtype
    for t in parts[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    shape = list(ref.shape)
    shape[d] = sum(t.shape[d] for t in parts)
    # Keep channels_last when every piece has it (as aten does for a common memory format).
    fmt = torch.channels_last if ref.dim() == 4 and all(
        t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous() for t in parts) else None
    out = empty(shape, dtype, torch.empty(shape, device="meta").to(memory_format=fmt).stride() if fmt else None)
    starts, start = [], 0
    for t in parts:
        starts.append(start)
        start += t.shape[d]
    filled = [(t, at) for t, at in zip(parts, starts) if t.numel()]
    if filled and concat.supports(out, parts):
        concat.concat_into(out, [t for t, _ in filled], [at for _, at in filled], d)
        return out
    for t, at in filled:
        copy_into(slice_(out, d, at, at + t.shape[d]), t)
    return out


@implements(aten.stack.default)
def stack(tensors, dim=0):
    if not tensors:
        raise RuntimeError("stack expects a non-empty TensorList")
    d = wrap_dim(dim, tensors[0].dim() + 1)
    for t in tensors:
        if t.shape != tensors[0].shape:
            raise RuntimeError(f"stack expects each tensor to be equal size, but got {list(tensors[0].shape)} "
                               f"at entry 0 and {list(t.shape)} at another entry")
    return cat([unsqueeze(t, d) for t in tensors], d)
