"""Factories that take a wgpu tensor as their template (x.new_zeros, torch.zeros_like, ...) and arange."""
from __future__ import annotations

import torch

from navitrain.wgpu.dispatch import implements
from navitrain.wgpu.kernels import pointwise
from navitrain.wgpu.kernels.copy import fill
from navitrain.wgpu.tensor import DEVICE, empty, empty_like

aten = torch.ops.aten


def _check_device(device) -> None:
    if device is not None and torch.device(device).type != DEVICE.type:
        raise NotImplementedError(f"a *_like/new_* factory for device {device} from a wgpu tensor")


def _like(x, dtype, device, memory_format):
    _check_device(device)
    dtype = dtype or x.dtype
    if memory_format in (None, torch.preserve_format):
        return empty_like(x, dtype)
    strides = torch.empty(x.shape, device="meta").to(memory_format=memory_format).stride()
    return empty(x.shape, dtype, strides)


@implements(aten.empty_like.default)
def empty_like_(x, *, dtype=None, layout=None, device=None, pin_memory=None, memory_format=None):
    return _like(x, dtype, device, memory_format)


@implements(aten.zeros_like.default)
def zeros_like(x, *, dtype=None, layout=None, device=None, pin_memory=None, memory_format=None):
    return fill(_like(x, dtype, device, memory_format), 0)


@implements(aten.ones_like.default)
def ones_like(x, *, dtype=None, layout=None, device=None, pin_memory=None, memory_format=None):
    return fill(_like(x, dtype, device, memory_format), 1)


@implements(aten.full_like.default)
def full_like(x, fill_value, *, dtype=None, layout=None, device=None, pin_memory=None, memory_format=None):
    return fill(_like(x, dtype, device, memory_format), fill_value)


@implements(aten.new_empty.default)
def new_empty(x, size, *, dtype=None, layout=None, device=None, pin_memory=None):
    _check_device(device)
    return empty(size, dtype or x.dtype)


@implements(aten.new_empty_strided.default)
def new_empty_strided(x, size, stride, *, dtype=None, layout=None, device=None, pin_memory=None):
    _check_device(device)
    return empty(size, dtype or x.dtype, stride)


@implements(aten.new_zeros.default)
def new_zeros(x, size, *, dtype=None, layout=None, device=None, pin_memory=None):
    return fill(new_empty(x, size, dtype=dtype, device=device), 0)


@implements(aten.new_ones.default)
def new_ones(x, size, *, dtype=None, layout=None, device=None, pin_memory=None):
    return fill(new_empty(x, size, dtype=dtype, device=device), 1)


@implements(aten.new_full.default)
def new_full(x, size, fill_value, *, dtype=None, layout=None, device=None, pin_memory=None):
    return fill(new_empty(x, size, dtype=dtype, device=device), fill_value)


@implements(aten.arange.start_out)
def arange_out(start, end, step=1, *, out):
    # torch.arange(..., device="wgpu") allocates an empty `out` and lands here; size it like aten does.
    import math

    from navitrain.wgpu.ops.views import resize_

    if step == 0:
        raise RuntimeError("step must be nonzero")
    if (step > 0 and start > end) or (step < 0 and start < end):
        raise RuntimeError("upper bound and larger bound inconsistent with step sign")
    if out.dtype.is_floating_point:
        n = int(math.ceil((float(end) - float(start)) / float(step)))
    else:
        n = int(math.ceil((int(end) - int(start)) / int(step)))
    if out.numel() != n:
        resize_(out, [n])
    compute = pointwise.compute_type(out.dtype)
    if compute == "f32":
        expr, kinds, vals = "s0 + f32(gi) * s1", "ff", [float(start), float(step)]
    else:
        expr, kinds, vals = f"{compute}(s0) + {compute}(gi) * {compute}(s1)", "ii", [int(start), int(step)]
    if not out.is_contiguous():
        raise NotImplementedError("arange into a non-contiguous tensor")
    return pointwise.run("arange", expr, [], out.dtype, compute, vals, kinds, out=out, shape=(n,)) if n else out


# Random tensors shaped like a wgpu tensor (torch.randn_like(x), ...): a new tensor, then the in-place
# distribution kernels of ops/random.py (a `generator` argument is accepted and, as there, ignored:
# the device has one Philox stream, seeded by torch.manual_seed).
@implements(aten.rand_like.default, aten.rand_like.generator)
def rand_like(x, *, generator=None, dtype=None, layout=None, device=None, pin_memory=None, memory_format=None):
    from navitrain.wgpu.ops.random import uniform_

    return uniform_(_like(x, dtype, device, memory_format), 0.0, 1.0)


@implements(aten.randn_like.default, aten.randn_like.generator)
def randn_like(x, *, generator=None, dtype=None, layout=None, device=None, pin_memory=None, memory_format=None):
    from navitrain.wgpu.ops.random import normal_

    return normal_(_like(x, dtype, device, memory_format), 0.0, 1.0)


@implements(aten.randint_like.default, aten.randint_like.generator)
def randint_like(x, high, *, generator=None, dtype=None, layout=None, device=None, pin_memory=None,
                 memory_format=None):
    return randint_like_low(x, 0, high, dtype=dtype, device=device, memory_format=memory_format)


@implements(aten.randint_like.low_dtype, aten.randint_like.low_generator_dtype)
def randint_like_low(x, low, high, *, generator=None, dtype=None, layout=None, device=None, pin_memory=None,
                     memory_format=None):
    from navitrain.wgpu.ops.random import random_from

    if high <= low:
        raise RuntimeError(f"randint_like: low ({low}) must be less than high ({high})")
    return random_from(_like(x, dtype, device, memory_format), low, high)
