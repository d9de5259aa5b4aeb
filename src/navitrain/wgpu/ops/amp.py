"""The two ops behind torch.amp.GradScaler: unscale-and-check gradients, and update the loss scale.
Both stay on the device (no read-back per step), built from existing kernels."""
from __future__ import annotations

import torch

from navitrain.wgpu.dispatch import implements

aten = torch.ops.aten


@implements(aten._amp_foreach_non_finite_check_and_unscale_.default)
def amp_unscale_(grads, found_inf, inv_scale):
    for g in grads:
        bad = aten.any.default(aten.logical_not.default(aten.isfinite.default(g)))
        aten.copy_.default(found_inf,
                           aten.maximum.default(found_inf, aten._to_copy.default(bad, dtype=found_inf.dtype)))
        aten.mul_.Tensor(g, inv_scale)


@implements(aten._amp_update_scale_.default)
def amp_update_scale_(scale, growth_tracker, found_inf, growth_factor, backoff_factor, growth_interval):
    found = aten.gt.Scalar(found_inf, 0.0)
    tracker = aten.where.self(found, aten.zeros_like.default(growth_tracker), aten.add.Scalar(growth_tracker, 1))
    grow = aten.eq.Scalar(tracker, growth_interval)
    grown = aten.where.self(grow, aten.mul.Scalar(scale, growth_factor), scale)
    new_scale = aten.where.self(found, aten.mul.Scalar(scale, backoff_factor), grown)
    aten.copy_.default(scale, new_scale)
    aten.copy_.default(growth_tracker, aten.where.self(grow, aten.zeros_like.default(tracker), tracker))
    return scale
