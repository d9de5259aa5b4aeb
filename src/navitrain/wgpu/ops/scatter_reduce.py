"""Accumulating scatters: scatter_add, scatter_reduce (and the legacy scatter(reduce=...)), index_add,
index_reduce. The destination indices become keys (kernels/index_keys.py) and segment_reduce combines
each destination's sources in their original order, without atomics: deterministic, and sums add in
the CPU's order.
"""
from __future__ import annotations

import torch

from navitrain.wgpu.dims import wrap_dim
from navitrain.wgpu.dispatch import implements
from navitrain.wgpu.kernels.index_keys import wrapped_keys
from navitrain.wgpu.kernels.segment_reduce import SEGMENT_OPS, segment_reduce
from navitrain.wgpu.ops.index_args import as_device, at_least_1d

aten = torch.ops.aten
_REDUCE_NAMES = {"add": "sum", "multiply": "prod"}


def _scatter_segments(op, out, d, index, src, include_self, scale=1.0):
    """out[..., index[c], ...] op= src[c] over the elements c of `index` along dim d."""
    index = as_device(index)
    if index.numel() == 0:
        return out
    out_v, index, src = at_least_1d(out, index, src)
    nd = index.dim()
    others = [i for i in range(nd) if i != d]
    keys = wrapped_keys(aten.permute.default(index, others + [d]), out_v.shape[d])
    keys = aten.reshape.default(keys, [-1, index.shape[d]])
    segment_reduce(op, out_v, src, keys, out_v.stride(d), src.stride(d), [index.shape[i] for i in others],
                   [out_v.stride(i) for i in others], [src.stride(i) for i in others],
                   include_self=include_self, scale=scale)
    return out


@implements(aten.scatter_add.default)
def scatter_add(x, dim, index, src):
    return _scatter_segments("sum", aten.clone.default(x), wrap_dim(dim, x.dim()), index, src, True)


@implements(aten.scatter_add_.default)
def scatter_add_(x, dim, index, src):
    return _scatter_segments("sum", x, wrap_dim(dim, x.dim()), index, src, True)


def _reduce_name(reduce):
    if reduce not in SEGMENT_OPS:
        raise RuntimeError(f"reduce argument must be either sum, prod, mean, amax or amin, got {reduce}")
    return reduce


@implements(aten.scatter_reduce.two)
def scatter_reduce(x, dim, index, src, reduce, *, include_self=True):
    return scatter_reduce_(aten.clone.default(x), dim, index, src, reduce, include_self=include_self)


@implements(aten.scatter_reduce_.two)
def scatter_reduce_(x, dim, index, src, reduce, *, include_self=True):
    return _scatter_segments(_reduce_name(reduce), x, wrap_dim(dim, x.dim()), index, src, include_self)


def _index_segments(op, out, d, index, source, include_self, scale=1.0):
    """out[..., index[k], ...] op= source[..., k, ...] along dim d."""
    index = as_device(index)
    if index.numel() == 0:
        return out
    out, source = at_least_1d(out, source)
    src = source if source.dim() == out.dim() else aten.reshape.default(source, [1] * out.dim())
    keys = aten.reshape.default(wrapped_keys(aten.reshape.default(index, [-1]), out.shape[d]), [1, -1])
    others = [i for i in range(out.dim()) if i != d]
    segment_reduce(op, out, src, keys, out.stride(d), src.stride(d),
                   s_shape=[src.shape[i] for i in others], s_out=[out.stride(i) for i in others],
                   s_src=[src.stride(i) for i in others], include_self=include_self, scale=scale)
    return out


@implements(aten.index_add.default)
def index_add(x, dim, index, source, *, alpha=1):
    out = aten.clone.default(x)
    _index_segments("sum", out, wrap_dim(dim, x.dim()), index, source, True, alpha)
    return out


@implements(aten.index_add_.default)
def index_add_(x, dim, index, source, *, alpha=1):
    _index_segments("sum", x, wrap_dim(dim, x.dim()), index, source, True, alpha)
    return x


@implements(aten.index_reduce.default)
def index_reduce(x, dim, index, source, reduce, *, include_self=True):
    out = aten.clone.default(x)
    _index_segments(_reduce_name(reduce), out, wrap_dim(dim, x.dim()), index, source, include_self)
    return out


@implements(aten.index_reduce_.default)
def index_reduce_(x, dim, index, source, reduce, *, include_self=True):
    _index_segments(_reduce_name(reduce), x, wrap_dim(dim, x.dim()), index, source, include_self)
    return x


# The legacy scatter(reduce='add'|'multiply'): scatter_reduce with include_self.
@implements(aten.scatter.reduce, aten.scatter.value_reduce)
def scatter_reduce_legacy(x, dim, index, src, *, reduce):
    out = aten.clone.default(x)
    return scatter_reduce_(out, dim, index, src, _REDUCE_NAMES[reduce], include_self=True)


@implements(aten.scatter_.reduce, aten.scatter_.value_reduce)
def scatter_reduce_legacy_(x, dim, index, src, *, reduce):
    return scatter_reduce_(x, dim, index, src, _REDUCE_NAMES[reduce], include_self=True)

