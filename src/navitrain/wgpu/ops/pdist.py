"""pdist (aten._pdist_forward / _pdist_backward): the distances between all row pairs i < j of x [N, M].

The forward is cdist's (ops/distance.py) with each pair as a batch item on the gathered rows x[i],
x[j], computed directly on the differences as the CPU's pdist does (p = 0 by the CPU's own count,
which keeps NaN). The gradient follows DistanceOpsKernel.cpp's per-p backward formulas, including its
NaN behaviour (its sign keeps NaN; for p = inf a NaN distance spreads over both rows); each pair's
gradient goes to row i and, negated, to row j, summed into the rows with index_add -- no [N, N]
matrix, so an inf in row i only reaches its own pairs, as on the CPU.
"""
from __future__ import annotations

import torch

from navitrain.wgpu.dispatch import cpu_fallback, implements
from navitrain.wgpu.ops.distance import cdist_forward

aten = torch.ops.aten
INF = float("inf")
_FLOATS = (torch.float32, torch.float16, torch.bfloat16)


def _pairs(n: int, device):
    """Row indices (i, j) of the pairs i < j in PyTorch's output order (row-major upper triangle)."""
    i, j = torch.triu_indices(n, n, 1)
    return i.to(device), j.to(device)


def _check(x, p):
    if x.dim() != 2:
        raise RuntimeError(f"pdist only supports 2D tensors, got: {x.dim()}D")
    if p < 0:
        raise RuntimeError("pdist only supports non-negative p values")


@implements(aten._pdist_forward.default)
def pdist_forward(x, p=2.0):
    if x.dtype not in _FLOATS:
        return cpu_fallback(aten._pdist_forward.default, (x, p), {})
    _check(x, p)
    n = x.shape[0]
    if n <= 1:
        return aten.empty.memory_format([0], dtype=x.dtype, device=x.device)
    i, j = _pairs(n, x.device)
    rows_i = aten.index_select.default(x, 0, i).unsqueeze(1)  # [P, 1, M]: one cdist of 1 x 1 per pair
    rows_j = aten.index_select.default(x, 0, j).unsqueeze(1)
    if p == 0:
        # The CPU counts min(ceil(|diff|), 1), which is NaN for a NaN difference; cdist's (diff != 0)
        # would count a NaN as 1.
        ones = aten.clamp_max.default(aten.ceil.default(aten.abs.default(aten.sub.Tensor(rows_i, rows_j))), 1)
        return aten.sum.dim_IntList(ones, [-1]).reshape(-1)
    if p == INF and x.shape[1]:
        # The CPU's pdist keeps a NaN difference in its max (cdist's max skips it).
        return aten.amax.default(aten.abs.default(aten.sub.Tensor(rows_i, rows_j)), [-1]).reshape(-1)
    return cdist_forward(rows_i, rows_j, p).reshape(-1)


def _sign(d):
    """The CPU kernel's sign: clamp(ceil(d), 0, 1) + clamp(floor(d), -1, 0), which keeps NaN NaN."""
    return aten.add.Tensor(aten.clamp.default(aten.ceil.default(d), 0, 1),
                           aten.clamp.default(aten.floor.default(d), -1, 0))


def _pair_gradient(d, g, r, p):
    """d(dist)/d(diff) * grad for each pair (DistanceOpsKernel.cpp's backward per p): d [P, M], g, r [P, 1]."""
    zero = aten.zeros.default([], dtype=d.dtype, device=d.device)
    if p == 1:
        return aten.mul.Tensor(g, _sign(d))
    if p == INF:  # grad * sign * (1 - min(1, ceil(| |d| - dist |))): 1 where |d| is the max, NaN stays NaN
        miss = aten.clamp_max.default(aten.ceil.default(aten.abs.default(aten.sub.Tensor(aten.abs.default(d), r))), 1)
        return aten.mul.Tensor(aten.mul.Tensor(g, _sign(d)), aten.rsub.Scalar(miss, 1))
    at_zero = aten.eq.Scalar(r, 0)
    if p == 2:
        return aten.where.self(at_zero, zero, aten.div.Tensor(aten.mul.Tensor(g, d), r))
    scale = aten.div.Tensor(g, aten.pow.Tensor_Scalar(r, p - 1))
    if p < 2:
        per = aten.mul.Tensor(aten.mul.Tensor(_sign(d), aten.pow.Tensor_Scalar(aten.abs.default(d), p - 1)), scale)
        if p < 1:
            at_zero = aten.logical_or.default(at_zero, aten.eq.Scalar(d, 0))
        return aten.where.self(at_zero, zero, per)
    per = aten.mul.Tensor(aten.mul.Tensor(d, aten.pow.Tensor_Scalar(aten.abs.default(d), p - 2)), scale)
    return aten.where.self(at_zero, zero, per)


@implements(aten._pdist_backward.default)
def pdist_backward(grad, x, p, pdist):
    if x.dtype not in _FLOATS or grad.dtype != x.dtype:
        return cpu_fallback(aten._pdist_backward.default, (grad, x, p, pdist), {})
    _check(x, p)
    n = x.shape[0]
    if n <= 1 or x.shape[1] == 0 or p == 0:
        return aten.zeros_like.default(x)
    i, j = _pairs(n, x.device)
    diff = aten.sub.Tensor(aten.index_select.default(x, 0, i), aten.index_select.default(x, 0, j))
    per_pair = _pair_gradient(diff, grad.reshape(-1, 1), pdist.reshape(-1, 1), p)
    gx = aten.index_add.default(aten.zeros_like.default(x), 0, i, per_pair)
    return aten.index_add.default(gx, 0, j, per_pair, alpha=-1)
