"""The aten ops that `fusion.py` may merge into one pointwise kernel, as WGSL expression templates.

Each rule turns one FX node's arguments into a `Rule`: a template over `{a}`, `{b}`, `{c}` and the
operands bound to them (graph nodes or Python numbers), with the kind each slot expects ("f": an f32
value, "b": a bool). The templates are the ones the unfused handlers run (ops/elementwise.py,
ops/activations.py, ops/random.py), NaN-safe helpers included, so a fused chain computes what the
unfused ops compute, up to the rounding of intermediates that fusion.py reproduces per dtype.
tests/wgpu/test_fusion.py runs every rule fused against the unfused handler, so a template that drifts
from its handler fails there.

A rule returns None for any form it does not cover (a rounding mode, an integer exponent of an
integer tensor, a bool scalar, ...): that node then stays unfused.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from navitrain.wgpu.kernels.activation_exprs import GELU_ERF, GELU_TANH, INV_SQRT_2

aten = torch.ops.aten
prims = torch.ops.prims

F32_MAX = float(np.finfo(np.float32).max)


@dataclass(frozen=True)
class Rule:
    template: str          # WGSL over {a}, {b}, {c}
    operands: tuple        # torch.fx.Node or a Python number per slot
    kinds: str             # per slot: "f" (f32 value) or "b" (bool)


def is_number(v) -> bool:
    """A Python int or float (bools are refused: their promotion rules differ)."""
    return type(v) in (int, float)


def f32_literal(v) -> str | None:
    """WGSL for the f32 the unfused handlers would pass for Python number `v` (rounded to f32, as the
    parameter block rounds it); None where packing would have failed (a finite value beyond f32)."""
    v = float(v)
    if v != v:
        return "bitcast<f32>(0x7fc00000u)"
    if v in (float("inf"), float("-inf")):
        return "bitcast<f32>(0x7f800000u)" if v > 0 else "bitcast<f32>(0xff800000u)"
    if abs(v) > F32_MAX:
        return None
    # The decimal repr of the f32 value read as a double is that value exactly: no rounding left to WGSL.
    return f"({float(np.float32(v))!r})"


def _binary(template):
    def rule(args, kwargs):
        a, b = args[0], args[1]
        if not all(is_number(v) or isinstance(v, torch.fx.Node) for v in (a, b)):
            return None
        return Rule(template, (a, b), "ff")
    return rule


def _with_alpha(op: str, reverse: bool = False):
    """add/sub/rsub: alpha 1 (or none) is `a + b` (1 * b is b exactly); otherwise the handler's form."""
    def rule(args, kwargs):
        a, b = args[0], args[1]
        alpha = kwargs.get("alpha", args[2] if len(args) > 2 else None)
        if reverse:
            a, b = b, a
        if not all(is_number(v) or isinstance(v, torch.fx.Node) for v in (a, b)):
            return None
        if alpha is None or (is_number(alpha) and alpha == 1):
            return Rule(f"{{a}} {op} {{b}}", (a, b), "ff")
        if not is_number(alpha):
            return None
        return Rule(f"{{a}} {op} {{c}} * {{b}}", (a, b, alpha), "fff")
    return rule


def _unary(template):
    def rule(args, kwargs):
        return Rule(template, (args[0],), "f") if not kwargs else None
    return rule


def _keep_nan(call: str):
    """The unfused unary handlers wrap builtins that may drop NaN: keep_nan(x, f(x))."""
    return _unary(f"keep_nan({{a}}, {call})")


def _gelu(args, kwargs):
    approximate = kwargs.get("approximate", args[1] if len(args) > 1 else "none")
    if approximate in ("tanh", "none"):  # the unfused handler's own expression (kernels/activation_exprs.py)
        return Rule(GELU_TANH if approximate == "tanh" else GELU_ERF, (args[0],), "f")
    return None


def _gelu_backward(args, kwargs):
    approximate = kwargs.get("approximate", args[2] if len(args) > 2 else "none")
    if approximate == "tanh":
        return Rule("gelu_tanh_grad({a}, {b})", tuple(args[:2]), "ff")
    if approximate == "none":
        return Rule(f"{{a}} * (0.5 * (1.0 + erf_f({{b}} * {INV_SQRT_2!r})) + {{b}} * 0.3989422804014327 * "
                    "exp(-0.5 * {b} * {b}))", tuple(args[:2]), "ff")
    return None


def _threshold_backward(args, kwargs):
    grad, x, threshold = args
    if not is_number(threshold):
        return None
    return Rule("select({a}, 0.0, {b} <= {c} && !is_nan({b}))", (grad, x, threshold), "fff")


def _where(args, kwargs):
    cond, a, b = args
    if not isinstance(cond, torch.fx.Node) or not all(is_number(v) or isinstance(v, torch.fx.Node) for v in (a, b)):
        return None
    return Rule("select({b}, {a}, {c})", (a, b, cond), "ffb")


def _clamp(args, kwargs):
    x = args[0]
    lo = kwargs.get("min", args[1] if len(args) > 1 else None)
    hi = kwargs.get("max", args[2] if len(args) > 2 else None)
    return _bounds(x, lo, hi)


def _bounds(x, lo, hi):
    expr, operands = "{a}", [x]
    for bound, helper in ((lo, "fmax_nan"), (hi, "fmin_nan")):
        if bound is None:
            continue
        if not (is_number(bound) or isinstance(bound, torch.fx.Node)):
            return None
        expr = f"{helper}({expr}, {{{'abc'[len(operands)]}}})"
        operands.append(bound)
    if len(operands) == 1:
        return None
    return Rule(expr, tuple(operands), "f" * len(operands))


def _pow(args, kwargs):
    x, exponent = args
    if not is_number(exponent):
        return None
    if exponent == 2:
        return Rule("{a} * {a}", (x,), "f")
    if exponent == 0.5:
        return Rule("sqrt({a})", (x,), "f")
    return Rule("pow_f({a}, {b})", (x, exponent), "ff")


def _float_conversion(args, kwargs):
    """_to_copy / convert_element_type to another float dtype: the value itself; fusion.py rounds it
    to the node's dtype. (fusion.py only fuses nodes whose values are float.)"""
    allowed = {"dtype", "layout", "device", "memory_format"}
    if set(kwargs) - allowed or kwargs.get("layout") not in (None, torch.strided) \
            or kwargs.get("memory_format") not in (None, torch.preserve_format) \
            or kwargs.get("device") not in (None, *_this_device(args[0])):
        return None
    return Rule("{a}", (args[0],), "f")


def _this_device(x) -> tuple:
    """The device of node `x`'s value (a _to_copy naming it changes nothing), or nothing."""
    val = x.meta.get("val") if isinstance(x, torch.fx.Node) else None
    return (val.device,) if isinstance(val, torch.Tensor) else ()


def _clone(args, kwargs):
    """A copy into the node's own layout (a contiguous one for a matmul's operand): the value itself;
    fusion.py stores a group's result in its root's layout."""
    if set(kwargs) - {"memory_format"} or kwargs.get("memory_format") not in (
            None, torch.preserve_format, torch.contiguous_format):
        return None
    return Rule("{a}", (args[0],), "f")


def _expand_to_own_shape(args, kwargs):
    """expand to the shape the value already has (a decomposed attention's operands): the value itself.
    Only where the value overlaps nowhere, so that a group ending here may store it in that layout."""
    x, size = args[0], args[1]
    v = x.meta.get("val") if isinstance(x, torch.fx.Node) else None
    if not isinstance(v, torch.Tensor) or kwargs.get("implicit") or len(size) != v.dim():
        return None
    if any(s not in (-1, d) for s, d in zip(size, v.shape)) or any(st == 0 and d > 1 for st, d in zip(
            v.stride(), v.shape)):
        return None
    return Rule("{a}", (x,), "f")


def _dropout_backward(args, kwargs):
    grad, mask, scale = args
    if not is_number(scale):
        return None
    return Rule("{a} * f32({b}) * {c}", (grad, mask, scale), "fbf")


def _leaky_relu(args, kwargs):
    slope = kwargs.get("negative_slope", args[1] if len(args) > 1 else 0.01)
    return Rule("select({a} * {b}, {a}, {a} > 0.0)", (args[0], slope), "ff") if is_number(slope) else None


def _hardtanh(args, kwargs):
    lo = args[1] if len(args) > 1 else kwargs.get("min_val", -1.0)
    hi = args[2] if len(args) > 2 else kwargs.get("max_val", 1.0)
    if not (is_number(lo) and is_number(hi)):
        return None
    return Rule("clamp_nan({a}, {b}, {c})", (args[0], lo, hi), "fff")


RULES = {
    aten.add.Tensor: _with_alpha("+"), aten.add.Scalar: _with_alpha("+"),
    aten.sub.Tensor: _with_alpha("-"), aten.sub.Scalar: _with_alpha("-"),
    aten.rsub.Tensor: _with_alpha("-", reverse=True), aten.rsub.Scalar: _with_alpha("-", reverse=True),
    aten.mul.Tensor: _binary("{a} * {b}"), aten.mul.Scalar: _binary("{a} * {b}"),
    aten.div.Tensor: _binary("{a} / {b}"), aten.div.Scalar: _binary("{a} / {b}"),
    aten.neg.default: _unary("(-{a})"),
    aten.relu.default: _unary("relu_nan({a})"),
    aten.exp.default: _keep_nan("exp({a})"),
    aten.log.default: _keep_nan("log({a})"),
    aten.sqrt.default: _keep_nan("sqrt({a})"),
    aten.rsqrt.default: _keep_nan("inverseSqrt({a})"),
    aten.tanh.default: _keep_nan("tanh_f({a})"),
    aten.sigmoid.default: _keep_nan("sigmoid_f({a})"),
    aten.silu.default: _unary("{a} * sigmoid_f({a})"),
    aten.gelu.default: _gelu,
    aten.gelu_backward.default: _gelu_backward,
    aten.sigmoid_backward.default: _binary("{a} * (1.0 - {b}) * {b}"),
    aten.tanh_backward.default: _binary("{a} * (1.0 - {b} * {b})"),
    aten.threshold_backward.default: _threshold_backward,
    aten.leaky_relu.default: _leaky_relu,
    aten.hardtanh.default: _hardtanh,
    aten.where.self: _where,
    aten.clamp.default: _clamp, aten.clamp.Tensor: _clamp,
    aten.clamp_min.default: lambda args, kwargs: _bounds(args[0], args[1], None),
    aten.clamp_min.Tensor: lambda args, kwargs: _bounds(args[0], args[1], None),
    aten.clamp_max.default: lambda args, kwargs: _bounds(args[0], None, args[1]),
    aten.clamp_max.Tensor: lambda args, kwargs: _bounds(args[0], None, args[1]),
    aten.pow.Tensor_Scalar: _pow,
    aten._to_copy.default: _float_conversion,
    prims.convert_element_type.default: lambda args, kwargs: Rule("{a}", (args[0],), "f"),
    aten.native_dropout_backward.default: _dropout_backward,
    aten.clone.default: _clone,
    aten.expand.default: _expand_to_own_shape,
}


def rule_for(node: torch.fx.Node) -> Rule | None:
    """The rule of a call_function node, or None where the op (or this form of it) is not fusable."""
    make = RULES.get(node.target) if node.op == "call_function" else None
    return make(tuple(node.args), dict(node.kwargs)) if make is not None else None
