"""Type promotion exactly as torch.result_type does it, without dispatching an op.

torch.result_type on a wgpu tensor goes through __torch_dispatch__ (an op call per binary op), so the
pointwise ops use this pure-Python copy of c10's rule: dimensioned tensors, zero-dim tensors and
Python numbers are promoted separately, and a lower-priority group only counts when it is of a higher
category (bool < integer < floating < complex). Python floats take the default dtype, ints int64.
"""
from __future__ import annotations

import torch

_promote = torch.promote_types


def _category(dtype: torch.dtype | None) -> int:
    if dtype is None:
        return -1
    if dtype.is_complex:
        return 3
    if dtype.is_floating_point:
        return 2
    if dtype == torch.bool:
        return 0
    return 1


def _combine(higher: torch.dtype | None, lower: torch.dtype | None) -> torch.dtype | None:
    if higher is None:
        return lower
    if lower is None:
        return higher
    ch, cl = _category(higher), _category(lower)
    if ch == 3:
        return higher
    if cl == 3:
        return _promote(higher, lower)
    if ch == 2:
        return higher
    if higher == torch.bool or cl == 2:
        return _promote(higher, lower)
    return higher


def _scalar_dtype(v) -> torch.dtype:
    if isinstance(v, bool):
        return torch.bool
    if isinstance(v, int):
        return torch.int64
    if isinstance(v, complex):
        return torch.complex64 if torch.get_default_dtype() == torch.float32 else torch.complex128
    return torch.get_default_dtype()


def result_type(*operands) -> torch.dtype:
    dim = zero = wrapped = None
    for o in operands:
        if isinstance(o, torch.Tensor):
            if o.dim() > 0:
                dim = o.dtype if dim is None else _promote(dim, o.dtype)
            else:
                zero = o.dtype if zero is None else _promote(zero, o.dtype)
        elif o is not None:
            d = _scalar_dtype(o)
            wrapped = d if wrapped is None else _promote(wrapped, d)
    result = _combine(dim, _combine(zero, wrapped))
    if result is None:
        raise TypeError("result_type needs at least one tensor or number")
    return result
