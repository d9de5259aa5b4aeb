"""Embedding: the lookup (a gather of table rows) and its backward, deterministic without atomics.

The backward sorts the token ids (stable) and lets the first thread of each run of equal ids, per
embedding column, add up that run's gradient rows in their original order and write the table row
once: no float atomics, the same result on every run, and the CPU's order of additions. Rows of
padding_idx and rows no token used stay zero; scale_grad_by_freq divides each sum by its run length.
"""
from __future__ import annotations

import torch

from navitrain.wgpu.dispatch import implements
from navitrain.wgpu.ops.copy import fill
from navitrain.wgpu.ops.indexing import _as_device, indexed_copy, segment_reduce, wrapped_keys
from navitrain.wgpu.tensor import empty

aten = torch.ops.aten


@implements(aten.embedding.default)
def embedding(weight, indices, padding_idx=-1, scale_grad_by_freq=False, sparse=False):
    if weight.dim() != 2:
        raise RuntimeError("'weight' must be 2-D")
    if indices.dtype not in (torch.int64, torch.int32):
        raise RuntimeError(f"Expected tensor for argument #1 'indices' to have one of the following scalar types: "
                           f"Long, Int; but got {indices.dtype} instead")
    indices = _as_device(indices)
    shape = list(indices.shape) + [weight.shape[1]]
    out = empty(shape, weight.dtype)
    nd = indices.dim()
    indexed_copy("gather", shape, out, list(out.stride()), weight, [0] * nd + [weight.stride(1)],
                 [(indices, list(indices.stride()) + [0], weight.shape[0], weight.stride(0))])
    return out


@implements(aten.embedding_dense_backward.default)
def embedding_dense_backward(grad_output, indices, num_weights, padding_idx, scale_grad_by_freq):
    indices = _as_device(indices)
    dim = grad_output.shape[-1]
    grad_weight = fill(empty([num_weights, dim], grad_output.dtype), 0)
    n = indices.numel()
    if n == 0 or dim == 0:
        return grad_weight
    grad = aten.reshape.default(grad_output, [n, dim])
    keys = aten.reshape.default(wrapped_keys(aten.reshape.default(indices, [n]), num_weights), [1, n])
    segment_reduce("sum", grad_weight, grad, keys, dim, grad.stride(0), s_shape=[dim], s_out=[1],
                   s_src=[grad.stride(1)], include_self=False, by_freq=scale_grad_by_freq,
                   skip_key=padding_idx if padding_idx >= 0 else None)
    return grad_weight
