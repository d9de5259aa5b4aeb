"""How batch norm reads its input: as [A, C, B] with the channel in the middle, [N, C, spatial] for a
contiguous input and [N * spatial, C, 1] for a channels-last one (channels are the fastest dim there);
any other layout is copied into the contiguous one first. Shared by the aten handlers (ops/norm.py) and
the fused batch norm of compiled graphs (fusion_norm.py), which must read the same layout."""
from __future__ import annotations

import math

import torch

from navitrain.wgpu.kernels.copy import copy_into
from navitrain.wgpu.tensor import empty


def _order_strides(shape, order) -> list[int]:
    """Strides of a dense tensor whose dims, slowest first, are `order`."""
    strides = [0] * len(shape)
    acc = 1
    for d in reversed(order):
        strides[d] = acc
        acc *= max(int(shape[d]), 1)
    return strides


def _has_order(t, order) -> bool:
    want = _order_strides(t.shape, order)
    return all(s == 1 or st == w for s, st, w in zip(t.shape, t.stride(), want))


def _cl_order(nd: int) -> list[int]:
    return [0] + list(range(2, nd)) + [1]


# layout() by (shape, strides): every batch norm of a step asks, forward and backward, for the same few
# geometries, and the stride walks cost more host time than the lookup.
_LAYOUTS: dict = {}


def layout(t) -> str | None:
    """'ncs' (contiguous), 'cl' (channels fastest, the rest contiguous) or None (anything else)."""
    key = (t.shape, t.stride())
    try:
        known = _LAYOUTS.get(key, _LAYOUTS)
    except TypeError:   # symbolic sizes (a traced tensor): worked out, not kept
        key, known = None, _LAYOUTS
    if known is not _LAYOUTS:
        return known
    if _has_order(t, list(range(t.dim()))):
        mode = "ncs"
    elif t.dim() >= 3 and _has_order(t, _cl_order(t.dim())):
        mode = "cl"
    else:
        mode = None
    if key is not None:
        if len(_LAYOUTS) > 4096:   # a run that keeps changing shapes: start over rather than grow
            _LAYOUTS.clear()
        _LAYOUTS[key] = mode
    return mode


def in_layout(t, mode: str):
    """`t` itself when it is laid out as `mode`, else a copy that is."""
    if layout(t) == mode:
        return t
    order = list(range(t.dim())) if mode == "ncs" else _cl_order(t.dim())
    return copy_into(empty(t.shape, t.dtype, _order_strides(t.shape, order)), t)


def stats_dtype(x, *params):
    """PyTorch's rule for statistics outputs: float32 when a reduced-precision input comes with float32
    parameters (autocast's mixed case), else the input's dtype. Layer norm follows it too."""
    for p in params:
        if p is not None and x.dtype in (torch.float16, torch.bfloat16) and p.dtype == torch.float32:
            return torch.float32
    return x.dtype


def geometry(x):
    """(x in a layout the kernels read, its mode, A, C, B)."""
    if x.dim() < 2:
        raise RuntimeError(f"batch_norm: expected an input with at least 2 dims (N, C, ...), got {tuple(x.shape)}")
    mode = layout(x) or "ncs"
    x = in_layout(x, mode)
    N, C = x.shape[0], x.shape[1]
    S = math.prod(x.shape[2:])
    A, B = (N, S) if mode == "ncs" else (N * S, 1)
    return x, mode, A, C, B
