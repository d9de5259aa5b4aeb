"""Pairwise distances: cdist (aten._cdist_forward / _cdist_backward) from GPU ops.

Computed directly on the differences x1[i] - x2[j] (a [..., r1, r2, m] tensor), as the CPU does for
small inputs; the CPU's matrix-product shortcut for large Euclidean ones rounds worse, not better, so
results agree to float32 tolerance either way. The gradient follows the CPU's per-p formulas
(p = 0: zero; 1: sign; 2: diff / dist; inf: sign where |diff| is the max; otherwise
sign * |diff|^(p-1) / dist^(p-1)), with 0 where dist is 0.

NaN differences (a NaN, or inf - inf) as the CPU's kernel treats them: p = 0 counts min(ceil(|diff|), 1),
which is NaN; p = inf keeps a running std::max(agg, |diff|) from 0, which never takes a NaN (all-NaN
rows give 0); the gradients of p = 1 and inf use its vectorized sign, NaN for NaN.
"""
from __future__ import annotations

import torch

from navitrain.wgpu.dispatch import implements

aten = torch.ops.aten
INF = float("inf")


def _diff(x1, x2):
    return x1.unsqueeze(-2) - x2.unsqueeze(-3)


@implements(aten._cdist_forward.default)
def cdist_forward(x1, x2, p, compute_mode=None):
    if p < 0:
        raise RuntimeError("cdist only supports non-negative p values")
    d = _diff(x1, x2)
    if p == 0:
        return torch.where(d.isnan(), d, (d != 0).to(d.dtype)).sum(-1)
    if p == INF:
        a = d.abs()
        return torch.where(a.isnan(), 0.0, a).amax(-1) if d.shape[-1] else a.sum(-1)
    if p == 1:
        return d.abs().sum(-1)
    if p == 2:
        return (d * d).sum(-1).sqrt()
    return d.abs().pow(p).sum(-1).pow(1.0 / p)


@implements(aten._cdist_backward.default)
def cdist_backward(grad, x1, x2, p, dist):
    d = _diff(x1, x2)
    g, r = grad.unsqueeze(-1), dist.unsqueeze(-1)
    zero = torch.zeros((), dtype=d.dtype, device=d.device)
    if p == 0:
        return torch.zeros_like(x1)
    if p == 1:
        per = torch.where(d.isnan(), d, d.sign()) * g
    elif p == 2:
        per = torch.where(r == 0, zero, d * g / r)
    elif p == INF:
        # the CPU's 1 - min(1, ceil(||diff| - dist|)): NaN where |diff| - dist is (inf - inf, a NaN)
        at_max = 1 - torch.minimum(torch.ones((), dtype=d.dtype, device=d.device), (d.abs() - r).abs().ceil())
        per = torch.where(d.isnan(), d, d.sign()) * at_max * g
    else:
        per = d.sign() * d.abs().pow(p - 1) * g / r.pow(p - 1)
        per = torch.where((r == 0) | ((d == 0) & (p < 1)), zero, per)
    return per.sum(-2)
