"""Activations and their backward ops (pointwise kernels with PyTorch's exact formulas).

NaN in, NaN out: bounds go through clamp_nan/relu_nan (wgsl_math), never WGSL's clamp/max, which may
drop NaN. Comparisons that pick a gradient test is_nan explicitly, as lavapipe may evaluate a comparison
of NaN either way; where the CPU's scalar and vectorized kernels disagree at NaN (hardtanh_backward:
gradient or 0; hardswish_backward: gradient or NaN) the vectorized one, which large tensors take, wins."""
from __future__ import annotations

import torch

from navitrain.wgpu.dispatch import implements
from navitrain.wgpu.kernels import pointwise
from navitrain.wgpu.kernels.activation_exprs import GELU_ERF, GELU_TANH, INV_SQRT_2

aten = torch.ops.aten


# The only activations the CPU computes on integer tensors; none takes bools.
_INTEGER_OK = ("threshold", "hardtanh")


def _pw(name, expr, inputs, dtype=None, scalars=(), out=None):
    dtype = dtype or inputs[0].dtype
    if not dtype.is_floating_point and (dtype == torch.bool or name not in _INTEGER_OK):
        # As the CPU: an activation of integers would be computed in f32 and silently truncated.
        raise NotImplementedError(f'"{name}" not implemented for \'{str(dtype).replace("torch.", "")}\'')
    return pointwise.run(name, expr, inputs, dtype, "f32", list(scalars), "f" * len(scalars), out=out,
                         shape=tuple(out.shape) if out is not None else None)


@implements(aten.threshold_backward.default)
def threshold_backward(grad, x, threshold):
    return _pw("threshold_bwd", "select(a, 0.0, b <= s0 && !is_nan(b))", [grad, x], scalars=[threshold])


@implements(aten.threshold.default)
def threshold(x, threshold, value):
    return _pw("threshold", "select(a, s1, a <= s0)", [x], scalars=[threshold, value])


@implements(aten.gelu.default)
def gelu(x, *, approximate="none"):
    expr = (GELU_TANH if approximate == "tanh" else GELU_ERF).format(a="a")
    return _pw(f"gelu_{approximate}", expr, [x])


@implements(aten.gelu_backward.default)
def gelu_backward(grad, x, *, approximate="none"):
    if approximate == "tanh":
        expr = ("gelu_tanh_grad(a, b)")
    else:
        expr = ("a * (0.5 * (1.0 + erf_f(b * %r)) + b * 0.3989422804014327 * exp(-0.5 * b * b))" % INV_SQRT_2)
    return _pw(f"gelu_bwd_{approximate}", expr, [grad, x])


@implements(aten.silu.default)
def silu(x):
    return _pw("silu", "a * sigmoid_f(a)", [x])


@implements(aten.silu_.default)
def silu_(x):
    return _pw("silu", "a * sigmoid_f(a)", [x], out=x)


@implements(aten.silu_backward.default)
def silu_backward(grad, x):
    return _pw("silu_bwd", "a * sigmoid_f(b) * (1.0 + b * (1.0 - sigmoid_f(b)))", [grad, x])


def _silu_backward_autograd(grad, x):
    """aten::silu_backward is CompositeImplicitAutograd: without this, autograd of a wgpu tensor runs its
    decomposition (sigmoid, a fill, sub, three muls, add: 8 kernels and 6 temporaries per SiLU of
    EfficientNet) and never reaches the one-kernel handler above. Registered at AutogradPrivateUse1, it
    sends a backward that is not itself differentiated to that handler; a double backward keeps the
    composite, whose pieces autograd records."""
    if torch.is_grad_enabled() and (grad.requires_grad or x.requires_grad):
        sig = torch.sigmoid(x)
        return grad * sig * (1 + x * (1 - sig))
    with torch._C._AutoDispatchBelowAutograd():
        return aten.silu_backward.default(grad, x)


_lib = torch.library.Library("aten", "IMPL")
_lib.impl("silu_backward", _silu_backward_autograd, "AutogradPrivateUse1")


@implements(aten.sigmoid_backward.default)
def sigmoid_backward(grad, y):
    return _pw("sigmoid_bwd", "a * (1.0 - b) * b", [grad, y])


@implements(aten.tanh_backward.default)
def tanh_backward(grad, y):
    return _pw("tanh_bwd", "a * (1.0 - b * b)", [grad, y])


@implements(aten.leaky_relu.default)
def leaky_relu(x, negative_slope=0.01):
    return _pw("leaky_relu", "select(a * s0, a, a > 0.0)", [x], scalars=[negative_slope])


@implements(aten.leaky_relu_.default)
def leaky_relu_(x, negative_slope=0.01):
    return _pw("leaky_relu", "select(a * s0, a, a > 0.0)", [x], scalars=[negative_slope], out=x)


@implements(aten.leaky_relu_backward.default)
def leaky_relu_backward(grad, x, negative_slope, self_is_result):
    return _pw("leaky_relu_bwd", "select(a * s0, a, b > 0.0)", [grad, x], scalars=[negative_slope])


@implements(aten.hardtanh.default)
def hardtanh(x, min_val=-1.0, max_val=1.0):
    return _pw("hardtanh", "clamp_nan(a, s0, s1)", [x], scalars=[min_val, max_val])


@implements(aten.hardtanh_.default)
def hardtanh_(x, min_val=-1.0, max_val=1.0):
    return _pw("hardtanh", "clamp_nan(a, s0, s1)", [x], scalars=[min_val, max_val], out=x)


@implements(aten.hardtanh_backward.default)
def hardtanh_backward(grad, x, min_val, max_val):
    return _pw("hardtanh_bwd", "select(a, 0.0, b <= s0 || b >= s1 || is_nan(b))", [grad, x], scalars=[min_val, max_val])


@implements(aten.elu.default)
def elu(x, alpha=1.0, scale=1.0, input_scale=1.0):
    return _pw("elu", "select(s0 * expm1_f(a * s2), a, a > 0.0) * s1", [x], scalars=[alpha, scale, input_scale])


@implements(aten.elu_backward.default)
def elu_backward(grad, alpha, scale, input_scale, is_result, x):
    if is_result:
        expr = "select(a * s2 * (b + s0 * s1), a * s1, b > 0.0)"
    else:
        expr = "select(a * s2 * s0 * s1 * exp(b * s2), a * s1, b > 0.0)"
    return _pw("elu_bwd_r" if is_result else "elu_bwd", expr, [grad, x], scalars=[alpha, scale, input_scale])


@implements(aten.softplus.default)
def softplus(x, beta=1.0, threshold=20.0):
    return _pw("softplus", "select(log1p_f(exp(a * s0)) / s0, a, a * s0 > s1)", [x], scalars=[beta, threshold])


@implements(aten.softplus_backward.default)
def softplus_backward(grad, x, beta, threshold):
    return _pw("softplus_bwd", "select(a * sigmoid_f(b * s0), a, b * s0 > s1)", [grad, x], scalars=[beta, threshold])


@implements(aten.hardswish.default)
def hardswish(x):
    return _pw("hardswish", "a * clamp_nan(a + 3.0, 0.0, 6.0) / 6.0", [x])


@implements(aten.hardswish_backward.default)
def hardswish_backward(grad, x):
    # As the CPU's kernels since PyTorch 2.1: x <= -3 gives 0 (x = -3 itself too), x >= 3 the gradient.
    return _pw("hardswish_bwd",
               "select(select(a * (b / 3.0 + 0.5), a, b >= 3.0 && !is_nan(b)), 0.0, b <= -3.0 && !is_nan(b))",
               [grad, x])


@implements(aten.hardsigmoid.default)
def hardsigmoid(x):
    return _pw("hardsigmoid", "clamp_nan(a / 6.0 + 0.5, 0.0, 1.0)", [x])


@implements(aten.hardsigmoid_backward.default)
def hardsigmoid_backward(grad, x):
    return _pw("hardsigmoid_bwd", "select(0.0, a / 6.0, b > -3.0 && b < 3.0 && !is_nan(b))", [grad, x])


@implements(aten.mish.default)
def mish(x):
    return _pw("mish", "a * tanh_f(log1p_f(exp(a)))", [x])


@implements(aten.logit.default)
def logit(x, eps=None):
    dtype = x.dtype if x.dtype.is_floating_point else torch.get_default_dtype()  # integers give floats, as on the CPU
    if eps is None:
        return _pw("logit", "log(a / (1.0 - a))", [x], dtype)
    return _pw("logit_eps", "log(clamp_nan(a, s0, 1.0 - s0) / (1.0 - clamp_nan(a, s0, 1.0 - s0)))", [x], dtype,
               scalars=[eps])
