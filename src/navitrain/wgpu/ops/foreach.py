"""`_foreach_*` ops, which torch.optim uses for SGD/Adam/AdamW on the wgpu device: each list op is one
multi-tensor dispatch (navitrain.wgpu.kernels.multi_tensor), whatever the number of parameters.

Ops or arguments the multi-tensor path does not cover (integer lists, non-contiguous tensors, exotic
overloads) run the single-tensor op per element, still on the GPU.
"""
from __future__ import annotations

import operator

import torch

from navitrain.wgpu.dispatch import implements
from navitrain.wgpu.kernels import multi_tensor
from navitrain.wgpu.tensor import WgpuTensor

aten = torch.ops.aten

# Binary ops: expression over a (self) and the other operand b; {alpha} where the op takes alpha.
_BINARY = {
    "add": "a + {alpha} * {b}", "sub": "a - {alpha} * {b}", "mul": "a * {b}", "div": "a / {b}",
    "maximum": "fmax_nan(a, {b})", "minimum": "fmin_nan(a, {b})", "clamp_min": "fmax_nan(a, {b})",
    "clamp_max": "fmin_nan(a, {b})", "pow": "pow_f(a, {b})",
}
# Where a scalar operand computes otherwise than a list of tensors: PyTorch's pow with a scalar exponent is
# sqrt for 0.5 (as in the single-tensor op, ops/elementwise.py).
_SCALAR_FORM = {"pow": "pow_scalar_f(a, {b})"}
_UNARY = {
    "sqrt": "sqrt(a)", "neg": "-a", "exp": "exp(a)", "abs": "abs(a)", "reciprocal": "1.0 / a",
    "sign": "sign(a)", "sigmoid": "sigmoid_f(a)", "log": "log(a)", "tanh": "tanh_f(a)", "rsqrt": "inverseSqrt(a)",
    "expm1": "expm1_f(a)", "log1p": "log1p_f(a)", "floor": "floor(a)", "ceil": "ceil(a)", "round": "round(a)",
    "trunc": "trunc(a)", "frac": "(a - trunc(a))", "sin": "sin_f(a)", "cos": "cos_f(a)", "erf": "erf_f(a)",
}
# Ternary ops: a + value * b (op) c, with the value shared, per tensor, or from a CPU tensor.
_TERNARY = {"addcmul": "a + {v} * b * c", "addcdiv": "a + {v} * b / c"}


def _single(name, inplace):
    """The single-tensor aten op behind a list op; an in-place list op whose single op has no
    in-place form (maximum_, used by amsgrad) computes out of place and copies back."""
    if not inplace:
        return getattr(aten, name)
    if hasattr(aten, name + "_"):
        return getattr(aten, name + "_")
    functional = getattr(aten, name)
    return lambda a, *args, **kwargs: a.copy_(functional(a, *args, **kwargs))


def _per_element(single, inplace):
    """Fallback: the single-tensor op for each element of the lists."""
    def run(*args, **kwargs):
        n = len(next(a for a in args if isinstance(a, (list, tuple))))
        results = []
        for i in range(n):
            call = [a[i] if isinstance(a, (list, tuple)) else a for a in args]
            results.append(single(*call, **kwargs))
        return None if inplace else results
    return run


def _other_operand(other, n, selves=None):
    """(extra input list or None, mode, shared scalars, per-tensor scalars, expression for b)."""
    if isinstance(other, (list, tuple)):
        if other and isinstance(other[0], torch.Tensor):
            if selves is not None and not _same_shapes([selves, other]):
                if all(o.numel() == 1 for o in other):
                    # One-element tensors broadcast over each self tensor (capturable Adam's step sizes).
                    return list(other), "s", [], [], "b"
                return None, "", None, [], ""  # other broadcasts: the per-element path does it
            return list(other), "c", [], [], "b"
        return None, "", [], [list(map(float, other))], "t0"
    if isinstance(other, torch.Tensor):
        if isinstance(other, WgpuTensor) and other.numel() == 1:
            return [other] * n, "s", [], [], "b"
        return None, "", [float(other.item())], [], "s{}"
    return None, "", [float(other)], [], "s{}"


def _binary(name, inplace):
    template = _BINARY[name]
    scalar_template = _SCALAR_FORM.get(name, template)

    def run(self, other, *, alpha=1):
        n = len(self)
        extra, mode, shared, per, b_expr = _other_operand(other, n, self)
        lists = [list(self)] + ([extra] if extra is not None else [])
        if shared is None or not multi_tensor.supported(lists):
            return _per_element(_single(name, inplace), inplace)(
                self, other, **({"alpha": alpha} if "{alpha}" in template else {}))
        scalars = []
        alpha_expr = ""
        if "{alpha}" in template:
            scalars.append(float(alpha))
            alpha_expr = "s0"
        if b_expr == "s{}":
            b_expr = f"s{len(scalars)}"
            scalars += shared
        expr = (template if extra is not None else scalar_template).format(alpha=alpha_expr, b=b_expr)
        modes = "c" + (mode if extra is not None else "")
        out = multi_tensor.apply(f"{name}_{mode or 'scalar'}", expr, lists, list(self) if inplace else None,
                                 scalars, per, modes)
        return None if inplace else out
    return run


def _scalar_pow(scalar, exponents):
    """_foreach_pow.ScalarAndTensor, scalar ** t for each t: capturable Adam's bias corrections, beta ** step
    per parameter (two list ops a step instead of two dispatches per parameter)."""
    exponents = list(exponents)
    if isinstance(scalar, complex) or not multi_tensor.supported([exponents]):
        return [aten.pow.Scalar(scalar, t) for t in exponents]
    return multi_tensor.apply("pow_scalar_base", "pow_f(s0, a)", [exponents], None, [float(scalar)])


# Overloads whose arguments their packet's list-op handler does not take (the scalar is the base).
_OVERLOAD_HANDLERS = {"_foreach_pow.ScalarAndTensor": _scalar_pow}


def _unary(name, inplace):
    expr = _UNARY[name]

    def run(self):
        if not multi_tensor.supported([self]):
            return _per_element(_single(name, inplace), inplace)(self)
        out = multi_tensor.apply(name, expr, [list(self)], list(self) if inplace else None)
        return None if inplace else out
    return run


def _ternary(name, inplace):
    template = _TERNARY[name]

    def run(self, tensor1, tensor2, value=1, *args):
        if args:  # the ScalarList/Tensor overloads pass `scalars` positionally
            value = args[0]
        n = len(self)
        lists = [list(self), list(tensor1), list(tensor2)]
        if not _same_shapes(lists) or not multi_tensor.supported(lists):
            single = _single(name, inplace)
            per = _values(value, n)
            results = [single(a, b, c, value=v) for a, b, c, v in zip(self, tensor1, tensor2, per)]
            return None if inplace else results
        if isinstance(value, (list, tuple)) or (isinstance(value, torch.Tensor) and value.numel() > 1):
            expr, shared, per = template.format(v="t0"), [], [_values(value, n)]
        else:
            expr, shared, per = template.format(v="s0"), [multi_tensor.scalar_of(value)], []
        out = multi_tensor.apply(name, expr, lists, list(self) if inplace else None, shared, per)
        return None if inplace else out
    return run


_shape_of = operator.attrgetter("shape")


def _same_shapes(lists) -> bool:
    """Element i of every list has one shape (the multi-tensor kernel indexes them alike; anything
    that broadcasts takes the per-element path)."""
    shapes = list(map(_shape_of, lists[0]))  # list against list, gathered in C: no Python frame per tensor
    return all(list(map(_shape_of, lst)) == shapes for lst in lists[1:])


def _values(value, n):
    if isinstance(value, torch.Tensor):
        return [float(v) for v in value.detach().cpu().reshape(-1).tolist()] if value.numel() > 1 else \
            [float(value.item())] * n
    if isinstance(value, (list, tuple)):
        return list(map(float, value))
    return [float(value)] * n


def _lerp(inplace):
    def run(self, end, weight):
        n = len(self)
        lists = [list(self), list(end)]
        if isinstance(weight, (list, tuple)) and weight and isinstance(weight[0], torch.Tensor):
            lists.append(list(weight))
            expr, shared, per = "lerp_f(a, b, c)", [], []
        elif isinstance(weight, (list, tuple)):
            expr, shared, per = "lerp_f(a, b, t0)", [], [list(map(float, weight))]
        else:
            expr, shared, per = "lerp_f(a, b, s0)", [multi_tensor.scalar_of(weight)], []
        if not _same_shapes(lists) or not multi_tensor.supported(lists):
            single = aten.lerp_ if inplace else aten.lerp
            ws = lists[2] if len(lists) == 3 else (per[0] if per else [shared[0]] * n)
            results = [single(a, b, w) for a, b, w in zip(self, end, ws)]
            return None if inplace else results
        out = multi_tensor.apply("lerp", expr, lists, list(self) if inplace else None, shared, per)
        return None if inplace else out
    return run


def _register_all() -> None:
    names = sorted({n.split("::")[1].split(".")[0] for n in torch._C._dispatch_get_all_op_names()
                    if n.startswith("aten::_foreach_")})
    for op_name in names:
        base = op_name[len("_foreach_"):]
        inplace = base.endswith("_")
        single = base[:-1] if inplace else base
        if single in ("norm", "copy", "zero", "max", "lerp") or not hasattr(torch.ops.aten, single):
            continue
        if inplace and not hasattr(torch.ops.aten, single + "_") and single not in _BINARY:
            continue
        packet = getattr(aten, op_name)
        if single in _BINARY:
            handler = _binary(single, inplace)
        elif single in _UNARY:
            handler = _unary(single, inplace)
        elif single in _TERNARY:
            handler = _ternary(single, inplace)
        else:
            handler = _per_element(_single(single, inplace), inplace)
        for ov in packet.overloads():
            if not ov.endswith("out"):
                implements(getattr(packet, ov))(_OVERLOAD_HANDLERS.get(f"{op_name}.{ov}", handler))
    for packet, inplace in ((aten._foreach_lerp, False), (aten._foreach_lerp_, True)):
        for ov in packet.overloads():
            if not ov.endswith("out"):
                implements(getattr(packet, ov))(_lerp(inplace))


_register_all()


@implements(aten._foreach_norm.Scalar)
def foreach_norm(tensors, ord=2, dtype=None):
    return [aten.linalg_vector_norm.default(t, ord, dtype=dtype) for t in tensors]


@implements(aten._foreach_copy_.default)
def foreach_copy_(tensors, src, non_blocking=False):
    for t, s in zip(tensors, src):
        aten.copy_.default(t, s)


@implements(aten._foreach_zero_.default)
def foreach_zero_(tensors):
    if multi_tensor.supported([tensors]):
        multi_tensor.apply("zero", "0.0", [list(tensors)], list(tensors))
        return
    for t in tensors:
        aten.zero_.default(t)
