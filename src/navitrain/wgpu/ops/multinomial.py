"""torch.multinomial on the device, from GPU ops and the device's random stream.

- with replacement: each draw is a uniform number times the row's total, located in the row's running
  sum by searchsorted (right side, so zero-probability categories, whose interval is empty, are never
  drawn);
- without replacement: the exponential race (each category's E / p with E ~ Exp(1); the num_samples
  smallest win), which draws without replacement with the given weights.
The draws are not the CPU's (another generator), only the distribution is. A CPU generator argument
cannot drive the device's stream: that call takes the counted CPU fallback.
"""
from __future__ import annotations

import torch

from navitrain.wgpu.dispatch import cpu_fallback, implements
from navitrain.wgpu.tensor import to_cpu

aten = torch.ops.aten


def _check(probs, num_samples, replacement):
    if probs.dim() not in (1, 2):
        raise RuntimeError("prob_dist must be 1 or 2 dim")
    if not probs.dtype.is_floating_point:
        raise RuntimeError("multinomial only supports floating-point dtypes for input")
    if num_samples <= 0:
        raise RuntimeError("cannot sample n_sample <= 0 samples")
    if not replacement and num_samples > probs.shape[-1]:
        raise RuntimeError("cannot sample n_sample > prob_dist.size(-1) samples without replacement")
    # One read back, as the CPU's own checks read the data.
    bad, empty_row, too_few = (to_cpu(t).item() for t in (
        ((probs < 0) | ~probs.isfinite()).any(), (probs.sum(-1) <= 0).any(),
        ((probs > 0).sum(-1) < num_samples).any()))
    if bad:
        raise RuntimeError("probability tensor contains either `inf`, `nan` or element < 0")
    if empty_row:
        raise RuntimeError("invalid multinomial distribution (sum of probabilities <= 0)")
    if not replacement and too_few:
        raise RuntimeError("invalid multinomial distribution (with replacement=False, not enough non-negative "
                           "category to sample)")


@implements(aten.multinomial.default)
def multinomial(probs, num_samples, replacement=False, *, generator=None):
    if generator is not None:
        return cpu_fallback(aten.multinomial.default, (probs, num_samples, replacement), {"generator": generator})
    _check(probs, num_samples, replacement)
    rows = probs.reshape(-1, probs.shape[-1]).float()
    if replacement:
        cdf = rows.cumsum(-1)
        u = torch.rand(rows.shape[0], num_samples, device=probs.device) * cdf[:, -1:]
        out = torch.searchsorted(cdf, u, right=True).clamp(max=rows.shape[-1] - 1)
    else:
        race = torch.empty_like(rows).exponential_() / rows  # p = 0: inf, never among the smallest
        out = race.topk(num_samples, -1, largest=False).indices
    return out.reshape(*probs.shape[:-1], num_samples)
