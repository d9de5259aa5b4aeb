"""rrelu (aten.rrelu_with_noise and its backward), from GPU ops, as PyTorch's CPU kernel defines it.

Training: each x <= 0 is scaled by a slope drawn uniformly from [lower, upper) with the device's
generator (ops/random.py), recorded in `noise` (1 elsewhere, NaN included: NaN <= 0 is false), which
the backward multiplies the gradient by. Evaluation, or training with lower == upper (to 1e-6):
leaky_relu with the mean slope (lower + upper) / 2, forward and backward.
"""
from __future__ import annotations

import torch

from navitrain.wgpu.dispatch import cpu_fallback, implements

aten = torch.ops.aten
_FLOATS = (torch.float32, torch.float16, torch.bfloat16)


def _rrelu(x, noise, lower, upper, training, generator):
    if not training:
        return aten.leaky_relu.default(x, (float(lower) + float(upper)) / 2)
    slopes = aten.uniform_.default(aten.empty_like.default(x), float(lower), float(upper), generator=generator)
    negative = aten.le.Scalar(x, 0)
    aten.copy_.default(noise, aten.where.ScalarOther(negative, slopes, 1.0))
    return aten.where.self(negative, aten.mul.Tensor(x, slopes), x)


@implements(aten.rrelu_with_noise.default)
def rrelu_with_noise(x, noise, lower=0.125, upper=1.0 / 3.0, training=False, generator=None):
    if x.dtype not in _FLOATS:
        return cpu_fallback(aten.rrelu_with_noise.default, (x, noise, lower, upper, training, generator), {})
    return _rrelu(x, noise, lower, upper, training, generator)


@implements(aten.rrelu_with_noise_.default)
def rrelu_with_noise_(x, noise, lower=0.125, upper=1.0 / 3.0, training=False, generator=None):
    if x.dtype not in _FLOATS:
        return cpu_fallback(aten.rrelu_with_noise_.default, (x, noise, lower, upper, training, generator), {})
    return aten.copy_.default(x, _rrelu(x, noise, lower, upper, training, generator))


@implements(aten.rrelu_with_noise_backward.default)
def rrelu_with_noise_backward(grad, x, noise, lower, upper, training, self_is_result):
    if grad.dtype not in _FLOATS:
        return cpu_fallback(aten.rrelu_with_noise_backward.default,
                            (grad, x, noise, lower, upper, training, self_is_result), {})
    if training and float(upper) - float(lower) > 1e-6:
        return aten.mul.Tensor(grad, noise)
    return aten.leaky_relu_backward.default(grad, x, (float(lower) + float(upper)) / 2, self_is_result)
