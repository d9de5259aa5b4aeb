"""embedding_bag (sum, mean, max; per_sample_weights, padding_idx, include_last_offset) and its
gradients, from GPU ops: the bag of each index comes from a search of the bag starts (offset2bag), rows
are gathered with index_select and summed into their bags with index_add (max: scatter_reduce amax,
with the first maximum's index kept for the gradient, as on the CPU). Empty bags are 0.

The four outputs are aten's (output, offset2bag, bag_size, max_indices); bag_size counts the indices of
a bag other than padding_idx, and the gradient handlers below read them back in that meaning.
"""
from __future__ import annotations

import torch

from navitrain.wgpu.dispatch import cpu_fallback, implements

aten = torch.ops.aten
SUM, MEAN, MAX = 0, 1, 2


def _offset2bag(indices, offsets, include_last_offset):
    bags = offsets.numel() - (1 if include_last_offset else 0)
    starts = offsets[:bags].to(torch.int64)
    pos = torch.arange(indices.numel(), device=indices.device)
    return torch.searchsorted(starts, pos, right=True) - 1, bags


def _kept(indices, padding_idx):
    return indices != padding_idx if padding_idx >= 0 else torch.ones_like(indices, dtype=torch.bool)


@implements(aten._embedding_bag.default, aten._embedding_bag_forward_only.default)
def embedding_bag(weight, indices, offsets, scale_grad_by_freq=False, mode=SUM, sparse=False,
                  per_sample_weights=None, include_last_offset=False, padding_idx=-1):
    if per_sample_weights is not None and mode != SUM:
        raise NotImplementedError("embedding_bag: per_sample_weights was not None. per_sample_weights is only "
                                  "supported for mode='sum'")
    offset2bag, bags = _offset2bag(indices, offsets, include_last_offset)
    dim = weight.shape[1]
    kept = _kept(indices, padding_idx)
    rows = weight.index_select(0, indices.to(torch.int64))
    if per_sample_weights is not None:
        rows = rows * per_sample_weights.unsqueeze(1)
    zero = torch.zeros((), dtype=weight.dtype, device=weight.device)
    bag_size = torch.zeros(bags, dtype=torch.int64, device=weight.device).index_add_(0, offset2bag, kept.long())
    max_indices = torch.zeros(bags if mode == MAX else 0, dim if mode == MAX else 0, dtype=torch.int64,
                              device=weight.device)
    if mode == MAX:
        n = indices.numel()
        pos1 = torch.arange(n, device=weight.device)
        # The CPU scans a bag with `row > max`: a NaN counts only as the bag's first (kept) element.
        first_kept = torch.full((bags,), n, dtype=torch.int64, device=weight.device).scatter_reduce(
            0, offset2bag, torch.where(kept, pos1, n), "amin", include_self=True)
        is_first = (pos1 == first_kept.index_select(0, offset2bag)).unsqueeze(1)
        lowest = torch.full((), -float("inf"), dtype=weight.dtype, device=weight.device)
        rows = torch.where(kept.unsqueeze(1) & (is_first | ~rows.isnan()), rows, lowest)
        where = offset2bag.unsqueeze(1).expand(-1, dim)
        out = torch.full((bags, dim), -float("inf"), dtype=weight.dtype, device=weight.device)
        out = out.scatter_reduce(0, where, rows, "amax", include_self=True)
        # the first position holding each bag's maximum, as the CPU's strict '>' scan keeps it
        pos = pos1.unsqueeze(1).expand(-1, dim)
        best = out.index_select(0, offset2bag)
        hit = ((rows == best) | (rows.isnan() & best.isnan())) & kept.unsqueeze(1)
        first = torch.full((bags, dim), n, dtype=torch.int64, device=weight.device)
        first = first.scatter_reduce(0, where, torch.where(hit, pos, n), "amin", include_self=True)
        empty = (bag_size == 0).unsqueeze(1)
        max_indices = torch.where(empty | (first >= n), -1, indices.to(torch.int64)[first.clamp(max=max(n - 1, 0))])
        out = torch.where(empty, zero, out)
    else:
        rows = torch.where(kept.unsqueeze(1), rows, zero)
        out = torch.zeros(bags, dim, dtype=weight.dtype, device=weight.device).index_add_(0, offset2bag, rows)
        if mode == MEAN:
            out = out / bag_size.clamp(min=1).unsqueeze(1).to(weight.dtype)
    return out, offset2bag, bag_size, max_indices


def _dense_backward(grad, indices, offset2bag, bag_size, maximum_indices, num_weights, scale_grad_by_freq,
                    mode, per_sample_weights, padding_idx):
    if scale_grad_by_freq:
        # The CPU's frequencies here are not plain index counts (an index seen once can be halved); rather
        # than guess its rule, run it there (counted).
        return cpu_fallback(aten._embedding_bag_dense_backward.default,
                            (grad, indices, offset2bag, bag_size, maximum_indices, num_weights, scale_grad_by_freq,
                             mode, per_sample_weights, padding_idx), {})
    dim = grad.shape[1]
    gw = torch.zeros(num_weights, dim, dtype=grad.dtype, device=grad.device)
    if mode == MAX:
        valid = maximum_indices >= 0
        src = torch.where(valid, grad, torch.zeros((), dtype=grad.dtype, device=grad.device))
        return gw.scatter_add_(0, maximum_indices.clamp(min=0), src)
    idx = indices.to(torch.int64)
    rows = grad.index_select(0, offset2bag)
    if mode == MEAN:
        rows = rows / bag_size.clamp(min=1).index_select(0, offset2bag).unsqueeze(1).to(grad.dtype)
    if per_sample_weights is not None:
        rows = rows * per_sample_weights.unsqueeze(1)
    rows = torch.where(_kept(idx, padding_idx).unsqueeze(1), rows, torch.zeros((), dtype=grad.dtype,
                                                                                 device=grad.device))
    return gw.index_add_(0, idx, rows)


@implements(aten._embedding_bag_backward.default)
def embedding_bag_backward(grad, indices, offsets, offset2bag, bag_size, maximum_indices, num_weights,
                           scale_grad_by_freq, mode, sparse, per_sample_weights, padding_idx=-1):
    if sparse:
        raise NotImplementedError("navitrain wgpu: embedding_bag(sparse=True) gradients are not supported "
                                  "(sparse tensors have no wgpu layout); use sparse=False")
    return _dense_backward(grad, indices, offset2bag, bag_size, maximum_indices, num_weights, scale_grad_by_freq,
                           mode, per_sample_weights, padding_idx)


implements(aten._embedding_bag_dense_backward.default)(_dense_backward)


@implements(aten._embedding_bag_per_sample_weights_backward.default)
def per_sample_weights_backward(grad, weight, indices, offsets, offset2bag, mode, padding_idx=-1):
    idx = indices.to(torch.int64)
    out = (grad.index_select(0, offset2bag) * weight.index_select(0, idx)).sum(1)
    return torch.where(_kept(idx, padding_idx), out, torch.zeros((), dtype=out.dtype, device=out.device))
