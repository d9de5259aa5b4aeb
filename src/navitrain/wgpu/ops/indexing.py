"""Indexing handlers: gathers (index_select, gather, take, x[idx]), plain scatters (scatter, index_copy,
index_fill, index_put_, put_) and the accumulating forms of index_put_/put_ (accumulate=True).

Gathers and plain scatters are one indexed copy (kernels/indexed_copy.py); accumulation sorts
destination keys and reduces each run of equal keys (kernels/segment_reduce.py). The other accumulating
scatters (scatter_add, index_add, ...) are in scatter_reduce.py, masked_select/masked_scatter/nonzero in
masked.py. Negative indices count from the end; an index out of range cannot raise on the GPU without a
sync per op: a gather gives NaN (0 for integer tensors) there, and a scatter skips it.
"""
from __future__ import annotations

import torch

from navitrain.wgpu.dims import contiguous, wrap_dim
from navitrain.wgpu.dispatch import implements
from navitrain.wgpu.kernels.copy import copy_into
from navitrain.wgpu.kernels.index_keys import offset_keys, wrapped_keys
from navitrain.wgpu.kernels.indexed_copy import indexed_copy
from navitrain.wgpu.kernels.segment_reduce import segment_reduce
from navitrain.wgpu.ops.index_args import as_device, at_least_1d, strides_over
from navitrain.wgpu.ops.masked import nonzero
from navitrain.wgpu.tensor import WgpuTensor, empty

aten = torch.ops.aten


def _without(strides, d):
    s = list(strides)
    s[d] = 0
    return s


def _index_along(index, shape, d):
    """A 1-D (or 0-d) index read along dim d of an iteration shape: strides 0 except at d."""
    s = [0] * len(shape)
    if index.dim():
        s[d] = index.stride(0)
    return s


def _check_index(index, name):
    if index.numel() and index.dtype not in (torch.int64, torch.int32):
        raise RuntimeError(f"{name}(): Expected dtype int32/int64 for index")


# -- gathers ------------------------------------------------------------------------------------------
@implements(aten.index_select.default)
def index_select(x, dim, index):
    _check_index(index, "index_select")
    index = as_device(index)
    if x.dim() == 0:
        out = empty([], x.dtype)
        indexed_copy("gather", [], out, [], x, [], [(index, [], 1, 0)])
        return out
    d = wrap_dim(dim, x.dim())
    shape = list(x.shape)
    shape[d] = index.numel()
    out = empty(shape, x.dtype)
    indexed_copy("gather", shape, out, list(out.stride()), x, _without(x.stride(), d),
                 [(index, _index_along(index, shape, d), x.shape[d], x.stride(d))])
    return out


@implements(aten.gather.default)
def gather(x, dim, index, *, sparse_grad=False):
    _check_index(index, "gather")
    index = as_device(index)
    out = empty(index.shape, x.dtype)
    xv, iv, ov = at_least_1d(x, index, out)
    d = wrap_dim(dim, xv.dim())
    indexed_copy("gather", list(iv.shape), ov, list(ov.stride()), xv, _without(xv.stride(), d),
                 [(iv, list(iv.stride()), xv.shape[d], xv.stride(d))])
    return out


@implements(aten.take.default)
def take(x, index):
    x = contiguous(x)
    out = empty(index.shape, x.dtype)
    indexed_copy("gather", list(index.shape), out, list(out.stride()), x, [0] * index.dim(),
                 [(as_device(index), list(index.stride()), x.numel(), 1)])
    return out


# -- plain scatters --------------------------------------------------------------------------------------
def _scatter_into(out, d, index, src):
    index = as_device(index)
    out_v, index, src = at_least_1d(out, index, src)
    src_strides = list(src.stride()) if isinstance(src, torch.Tensor) else None
    indexed_copy("scatter", list(index.shape), out_v, _without(out_v.stride(), d), src, src_strides,
                 [(index, list(index.stride()), out_v.shape[d], out_v.stride(d))])
    return out


def _scalar(v):
    """A fill value: device tensors stay tensors (read broadcast by the kernel, no host sync)."""
    if isinstance(v, WgpuTensor):
        return v
    return v.item() if isinstance(v, torch.Tensor) else v


@implements(aten.scatter.src, aten.scatter.value)
def scatter(x, dim, index, src):
    _check_index(index, "scatter")
    out = aten.clone.default(x)
    d = wrap_dim(dim, x.dim())
    return _scatter_into(out, d, index, src if isinstance(src, WgpuTensor) else _scalar(src))


@implements(aten.scatter_.src, aten.scatter_.value)
def scatter_(x, dim, index, src):
    _check_index(index, "scatter_")
    return _scatter_into(x, wrap_dim(dim, x.dim()), index, src if isinstance(src, WgpuTensor) else _scalar(src))


def _index_into(out, d, index, src):
    """out[..., index[k], ...] = src[..., k, ...] along dim d (src a tensor or a scalar)."""
    index = as_device(index)
    if out.dim() == 0:
        shape = []
        indexed_copy("scatter", shape, out, [], src, [] if isinstance(src, torch.Tensor) else None, [(index, [], 1, 0)])
        return out
    shape = list(out.shape)
    shape[d] = index.numel()
    src_strides = None
    if isinstance(src, torch.Tensor):
        src_strides = strides_over(src, shape) if src.dim() == len(shape) else [0] * len(shape)
    indexed_copy("scatter", shape, out, _without(out.stride(), d), src, src_strides,
                 [(index, _index_along(index, shape, d), out.shape[d], out.stride(d))])
    return out


@implements(aten.index_copy.default)
def index_copy(x, dim, index, source):
    return _index_into(aten.clone.default(x), wrap_dim(dim, x.dim()), index, source)


@implements(aten.index_copy_.default)
def index_copy_(x, dim, index, source):
    return _index_into(x, wrap_dim(dim, x.dim()), index, source)


@implements(aten.index_fill.int_Scalar, aten.index_fill.int_Tensor)
def index_fill(x, dim, index, value):
    return _index_into(aten.clone.default(x), wrap_dim(dim, x.dim()), index, _scalar(value))


@implements(aten.index_fill_.int_Scalar, aten.index_fill_.int_Tensor)
def index_fill_(x, dim, index, value):
    return _index_into(x, wrap_dim(dim, x.dim()), index, _scalar(value))


# -- put ----------------------------------------------------------------------------------------------
def _put_into(out, index, source, accumulate):
    index, source = as_device(index), as_device(source)
    flat_src = aten.reshape.default(source, [-1])
    flat_idx = aten.reshape.default(index, [-1])
    if accumulate:
        keys = aten.reshape.default(wrapped_keys(flat_idx, out.numel()), [1, -1])
        segment_reduce("sum", out, flat_src, keys, 1, flat_src.stride(0) if flat_src.dim() else 1)
    else:
        n = flat_idx.numel()
        indexed_copy("scatter", [n], out, [0], flat_src, [flat_src.stride(0)],
                     [(flat_idx, [flat_idx.stride(0)], out.numel(), 1)])
    return out


@implements(aten.put_.default)
def put_(x, index, source, accumulate=False):
    if x.is_contiguous():
        return _put_into(x, index, source, accumulate)
    tmp = aten.clone.default(x, memory_format=torch.contiguous_format)
    _put_into(tmp, index, source, accumulate)
    return copy_into(x, tmp)


@implements(aten.put.default)
def put(x, index, source, accumulate=False):
    return _put_into(aten.clone.default(x, memory_format=torch.contiguous_format), index, source, accumulate)


# -- advanced indexing: x[i0, i1, ...] ---------------------------------------------------------------
def _expand_masks(x, indices):
    """Boolean/uint8 masks become the long indices of their true elements (one host read-back each)."""
    out = []
    for idx in indices:
        if idx is not None and idx.dtype in (torch.bool, torch.uint8):
            idx = as_device(idx)
            k = len(out)
            for j in range(idx.dim()):
                if idx.shape[j] != x.shape[k + j]:
                    raise IndexError(f"The shape of the mask {list(idx.shape)} at index {j} does not match the shape "
                                     f"of the indexed tensor {list(x.shape)} at index {k + j}")
            coords = nonzero(idx)
            out += [aten.select.int(coords, 1, j) for j in range(idx.dim())]
        else:
            out.append(as_device(idx) if idx is not None else None)
    if len(out) > x.dim():
        raise IndexError(f"too many indices for tensor of dimension {x.dim()} (got {len(out)})")
    return out + [None] * (x.dim() - len(out))


def _index_plan(x, indices):
    """(result shape, B (broadcast index shape), position of B in the result, [(dim, index)], other dims)."""
    indices = _expand_masks(x, indices)
    used = [(d, t) for d, t in enumerate(indices) if t is not None]
    B = list(torch.broadcast_shapes(*(t.shape for _, t in used))) if used else []
    dims = [d for d, _ in used]
    adjacent = dims == list(range(dims[0], dims[-1] + 1)) if dims else True
    others = [d for d in range(x.dim()) if d not in dims]
    if adjacent and dims:
        before = [d for d in others if d < dims[0]]
        after = [d for d in others if d > dims[-1]]
        shape = [x.shape[d] for d in before] + B + [x.shape[d] for d in after]
        at = len(before)
    else:
        shape = B + [x.shape[d] for d in others]
        at = 0
        before, after = [], others
    return shape, B, at, used, before, after


def _index_operands(x, shape, B, at, used, before, after):
    """Strides of x over the result shape (0 on the index dims), and each index read over it."""
    nb = len(B)
    x_strides = [0] * len(shape)
    for i, d in enumerate(before):
        x_strides[i] = x.stride(d)
    for i, d in enumerate(after):
        x_strides[at + nb + i] = x.stride(d)
    idx_ops = []
    for d, t in used:
        b_dims = list(range(at + nb - t.dim(), at + nb))
        idx_ops.append((t, strides_over(t, shape, b_dims), x.shape[d], x.stride(d)))
    return x_strides, idx_ops


@implements(aten.index.Tensor, aten._unsafe_index.Tensor)
def index(x, indices):
    shape, B, at, used, before, after = _index_plan(x, indices)
    out = empty(shape, x.dtype)
    if not used:
        return copy_into(out, x)
    x_strides, idx_ops = _index_operands(x, shape, B, at, used, before, after)
    indexed_copy("gather", shape, out, list(out.stride()), x, x_strides, idx_ops)
    return out


def _index_put_into(x, indices, values, accumulate):
    values = as_device(values)
    shape, B, at, used, before, after = _index_plan(x, indices)
    if not used:
        if accumulate:
            return aten.add_.Tensor(x, values)
        return copy_into(x, values)
    if values.dtype != x.dtype:
        values = aten._to_copy.default(values, dtype=x.dtype)
    while values.dim() > len(shape) and values.shape[0] == 1:
        values = aten.select.int(values, 0, 0)  # leading size-1 dims broadcast away
    try:
        torch.broadcast_shapes(values.shape, shape)
    except RuntimeError:
        raise RuntimeError(f"shape mismatch: value tensor of shape {list(values.shape)} cannot be broadcast to "
                           f"indexing result of shape {shape}") from None
    x_strides, idx_ops = _index_operands(x, shape, B, at, used, before, after)
    if not accumulate:
        indexed_copy("scatter", shape, x, x_strides, values, strides_over(values, shape), idx_ops)
        return x
    # Keys: the offset all index tensors add together, one per element of B.
    nb = len(B)
    numel_b = 1
    for s in B:
        numel_b *= s
    if numel_b == 0:
        return x
    keys = empty(B, torch.int32)
    offset_keys(keys, B, idx_ops, at, nb)
    keys = aten.reshape.default(keys, [1, numel_b])
    # Values as [B..., rest...] so one source position is one element of B.
    vals = aten.expand.default(values, shape)
    rest = [i for i in range(len(shape)) if not at <= i < at + nb]
    vals = contiguous(aten.permute.default(vals, list(range(at, at + nb)) + rest))
    rest_shape = [shape[i] for i in rest]
    rest_numel = 1
    for s in rest_shape:
        rest_numel *= s
    x_rest = [x_strides[i] for i in rest]
    segment_reduce("sum", x, vals, keys, 1, rest_numel, s_shape=rest_shape, s_out=x_rest,
                   s_src=list(vals.stride())[nb:])
    return x


@implements(aten.index_put_.default, aten._index_put_impl_.default)
def index_put_(x, indices, values, accumulate=False, unsafe=False):
    return _index_put_into(x, indices, values, accumulate)


# _unsafe_index_put is functional like index_put (only its bounds checks are skipped): writing into x
# would change the input of _unsafe_masked_index_put_accumulate and of upsampling gradients.
@implements(aten.index_put.default, aten._unsafe_index_put.default)
def index_put(x, indices, values, accumulate=False):
    return _index_put_into(aten.clone.default(x), indices, values, accumulate)
