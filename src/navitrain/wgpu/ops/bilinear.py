"""aten._trilinear (nn.functional.bilinear's product x1^T W x2) as batched matrix products.

The CPU's algorithm (Linear.cpp): unsqueeze each operand at its expand dims, then contract i1 with i2
over the summed dims i3 does not have, and that result with i3 over the rest, each contraction one
bmm (`sumproduct_pair`: dims sorted into batch / left-only / right-only / summed, permuted and
reshaped to [batch, left, sum] x [batch, sum, right]). So no [B, O, I, J] product is materialized and
the sums run through the GEMM kernels. Its gradients are _trilinear again (PyTorch's derivative
formula), so they land here too.
"""
from __future__ import annotations

import math

import torch

from navitrain.wgpu.dispatch import cpu_fallback, implements

aten = torch.ops.aten
_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.int64)


def _sumproduct_pair(left, right, sum_dims: set[int], keepdim: bool):
    """sum over sum_dims of left * right (same number of dims, broadcastable), as one bmm."""
    ndim = left.dim()
    batch, lonly, ronly, summed = [], [], [], []
    for d in range(ndim):
        big_l, big_r = left.shape[d] > 1, right.shape[d] > 1
        if d in sum_dims:
            if big_l and big_r:
                summed.append(d)
            elif big_l:
                left = aten.sum.dim_IntList(left, [d], True)
            elif big_r:
                right = aten.sum.dim_IntList(right, [d], True)
        elif big_l and big_r:
            batch.append(d)
        elif big_l:
            lonly.append(d)
        elif big_r:
            ronly.append(d)
    # size 1 on both sides (a one-sided sum left size 1); each operand also carries the other's
    # own dims with size 1, so both permutations name every dim
    ones = [d for d in range(ndim) if d not in batch + lonly + ronly + summed]
    size = lambda t, dims: math.prod(t.shape[d] for d in dims)
    nb, nl, nr, ns = size(left, batch), size(left, lonly), size(right, ronly), size(left, summed)
    a = aten.reshape.default(aten.permute.default(left, batch + lonly + summed + ronly + ones), [nb, nl, ns])
    b = aten.reshape.default(aten.permute.default(right, batch + summed + ronly + lonly + ones), [nb, ns, nr])
    product = aten.bmm.default(a, b)
    order = batch + lonly + ronly + summed + ones  # the product's dims, summed ones now of size 1
    sizes = ([left.shape[d] for d in batch] + [left.shape[d] for d in lonly] + [right.shape[d] for d in ronly]
             + [1] * (len(summed) + len(ones)))
    result = aten.permute.default(aten.reshape.default(product, sizes), [order.index(d) for d in range(ndim)])
    if not keepdim:
        for d in sorted(sum_dims, reverse=True):
            result = aten.squeeze.dim(result, d)
    return result


def _unsqueezed(t, expand, total_dim):
    for d in range(total_dim):
        if d in expand:
            t = aten.unsqueeze.default(t, d)
    return t


@implements(aten._trilinear.default)
def trilinear(i1, i2, i3, expand1, expand2, expand3, sumdim, unroll_dim=1):
    if not (i1.dtype == i2.dtype == i3.dtype and i1.dtype in _DTYPES):
        return cpu_fallback(aten._trilinear.default, (i1, i2, i3, expand1, expand2, expand3, sumdim, unroll_dim), {})
    total_dim = i1.dim() + len(expand1)
    i1 = _unsqueezed(i1, set(expand1), total_dim)
    i2 = _unsqueezed(i2, set(expand2), total_dim)
    i3 = _unsqueezed(i3, set(expand3), total_dim)
    sums = set(sumdim)
    if i1.numel() == 0 or i2.numel() == 0 or i3.numel() == 0:
        shape = [0 if 0 in (i1.shape[d], i2.shape[d], i3.shape[d]) else max(i1.shape[d], i2.shape[d], i3.shape[d])
                 for d in range(total_dim) if d not in sums]
        return aten.zeros.default(shape, dtype=i1.dtype, device=i1.device)
    # Dims summed that i3 lacks are summed with i1 * i2 already (the CPU's order of contraction).
    first = {d for d in sums if i3.shape[d] == 1}
    out = _sumproduct_pair(i1, i2, first, True)
    return _sumproduct_pair(out, i3, sums, False)
