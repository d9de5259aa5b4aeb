"""Pointwise losses with their own aten kernels: mse, smooth L1, Huber, binary cross entropy (on
probabilities and on logits), forward and backward.

Each loss is one fused elementwise kernel (the per-element loss, weights included) followed, for 'mean'
and 'sum', by the reduction engine, which accumulates in f32. Backward is one fused elementwise kernel
(the 1/numel of 'mean' travels as a scalar, so it costs no extra pass). Losses built from other ops in
PyTorch (l1_loss, kl_div, cross_entropy) need no kernel here: their pieces run on the device already.

binary_cross_entropy on the CPU raises for inputs outside [0, 1]; checking that here would need a read
back every step, so such inputs give NaN (log of a negative number) instead, which cannot go unnoticed.
"""
from __future__ import annotations

import torch

from navitrain.wgpu.dispatch import implements
from navitrain.wgpu.kernels import pointwise
from navitrain.wgpu.kernels.reduction import reduce
from navitrain.wgpu.promotion import result_type

aten = torch.ops.aten

NONE, MEAN, SUM = 0, 1, 2


def _reduced(name: str, expr: str, inputs: list, dtype: torch.dtype, reduction: int, scalars=()):
    """The per-element loss `expr`, then the requested reduction."""
    if reduction == NONE:
        return pointwise.run(name, expr, inputs, dtype, "f32", scalars)
    per_element = pointwise.run(name, expr, inputs, torch.float32, "f32", scalars)
    return reduce(per_element, None, False, "mean" if reduction == MEAN else "sum", dtype)


def _norm(x, reduction: int) -> float:
    return 1.0 / x.numel() if reduction == MEAN and x.numel() else 1.0


def _backward(name: str, expr: str, grad_output, inputs: list, out_dtype, scalars):
    """grad_input = expr over (grad_output, *inputs), broadcast to the inputs' shape."""
    shape = pointwise.broadcast_shape(grad_output.shape, *(t.shape for t in inputs))
    return pointwise.run(name, expr, [grad_output, *inputs], out_dtype, "f32", scalars, shape=tuple(shape))


# -- mse ------------------------------------------------------------------------------------------------
@implements(aten.mse_loss.default)
def mse_loss(x, target, reduction=MEAN):
    return _reduced("mse_loss", "(a - b) * (a - b)", [x, target], result_type(x, target), reduction)


@implements(aten.mse_loss_backward.default)
def mse_loss_backward(grad_output, x, target, reduction):
    return _backward("mse_loss_bwd", "s0 * (b - c) * a", grad_output, [x, target], x.dtype,
                     [2.0 * _norm(x, reduction)])


# -- smooth L1 and Huber --------------------------------------------------------------------------------
@implements(aten.smooth_l1_loss.default)
def smooth_l1_loss(x, target, reduction=MEAN, beta=1.0):
    if beta < 0:
        raise RuntimeError("smooth_l1_loss does not support negative values for beta.")
    expr = "select(abs(a - b) - 0.5 * s0, 0.5 * (a - b) * (a - b) / s0, abs(a - b) < s0)"
    return _reduced("smooth_l1_loss", expr, [x, target], result_type(x, target), reduction, [float(beta)])


@implements(aten.smooth_l1_loss_backward.default)
def smooth_l1_loss_backward(grad_output, x, target, reduction, beta):
    # s0 = norm, s1 = beta; the branches in PyTorch's order (x - t <= -beta first, so beta = 0 gives sign).
    # keep_nan of the difference: a NaN input or target, or inf - inf, gives NaN (some drivers, NVIDIA's
    # among them, take NaN >= s1 as true, which would give +-1)
    expr = "keep_nan(b - c, select(select(s0 * (b - c) * a / s1, s0 * a, b - c >= s1), -s0 * a, b - c <= -s1))"
    return _backward("smooth_l1_loss_bwd", expr, grad_output, [x, target], x.dtype, [_norm(x, reduction), float(beta)])


@implements(aten.huber_loss.default)
def huber_loss(x, target, reduction=MEAN, delta=1.0):
    if delta <= 0:
        raise RuntimeError(f"huber_loss does not support non-positive values for delta ({delta}).")
    expr = "select(s0 * (abs(a - b) - 0.5 * s0), 0.5 * (a - b) * (a - b), abs(a - b) < s0)"
    return _reduced("huber_loss", expr, [x, target], result_type(x, target), reduction, [float(delta)])


@implements(aten.huber_loss_backward.default)
def huber_loss_backward(grad_output, x, target, reduction, delta):
    # keep_nan of the difference: a NaN input or target, or inf - inf (run 12 on the H100), gives NaN; the
    # H100's Vulkan driver takes NaN >= s1 as true, which would give +-delta
    expr = "keep_nan(b - c, select(select(s0 * (b - c) * a, s0 * s1 * a, b - c >= s1), -s0 * s1 * a, b - c <= -s1))"
    return _backward("huber_loss_bwd", expr, grad_output, [x, target], x.dtype, [_norm(x, reduction), float(delta)])


# -- binary cross entropy ---------------------------------------------------------------------------
@implements(aten.binary_cross_entropy.default)
def binary_cross_entropy(x, target, weight=None, reduction=MEAN):
    # PyTorch clamps each log at -100 so that a probability of exactly 0 or 1 gives a finite loss; the
    # clamp keeps NaN (fmax_nan): the CPU refuses a NaN probability, so the loss must at least be NaN.
    expr = "((b - 1.0) * fmax_nan(log1p_f(-a), -100.0) - b * fmax_nan(log(a), -100.0))"
    inputs = [x, target]
    if weight is not None:
        expr += " * c"
        inputs.append(weight)
    return _reduced("bce", expr, inputs, x.dtype, reduction)


@implements(aten.binary_cross_entropy_backward.default)
def binary_cross_entropy_backward(grad_output, x, target, weight=None, reduction=MEAN):
    # grad * (x - t) / max(x * (1 - x), 1e-12), PyTorch's guard against dividing by zero at 0 and 1.
    expr = "s0 * a * (b - c) / fmax_nan((1.0 - b) * b, 1e-12)"
    inputs = [x, target]
    if weight is not None:
        expr += " * d"
        inputs.append(weight)
    return _backward("bce_bwd", expr, grad_output, inputs, x.dtype, [_norm(x, reduction)])


@implements(aten.binary_cross_entropy_with_logits.default)
def binary_cross_entropy_with_logits(x, target, weight=None, pos_weight=None, reduction=MEAN):
    # (1 - t) * x - lw * log_sigmoid(x), lw = 1 + (pos_weight - 1) * t; log_sigmoid(x) computed stably as
    # min(x, 0) - log1p(exp(-|x|)).
    inputs = [x, target]
    names = "cd"
    w_expr = lw = ""
    if weight is not None:
        w_expr = f" * {names[len(inputs) - 2]}"
        inputs.append(weight)
    if pos_weight is not None:
        lw = f"(1.0 + ({names[len(inputs) - 2]} - 1.0) * b) * "
        inputs.append(pos_weight)
    expr = f"(((1.0 - b) * a - {lw}(fmin_nan(a, 0.0) - log1p_f(exp(-abs(a))))){w_expr})"
    return _reduced("bce_logits", expr, inputs, x.dtype, reduction)
