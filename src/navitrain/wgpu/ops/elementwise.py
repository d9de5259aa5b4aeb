"""Elementwise ops: unary, binary and ternary math, comparisons, where, clamp, activations.

Each op is a WGSL expression template over `{a}`, `{b}`, `{c}`: a tensor operand becomes the loaded
value, a Python number (or a CPU scalar tensor) becomes a parameter, so tensor-tensor and tensor-scalar
forms share kernels. Type promotion follows torch.result_type; math on float16/bfloat16 is done in f32
and rounded on store, as the CPU does.
"""
from __future__ import annotations

import torch

from navitrain.wgpu.dispatch import implements
from navitrain.wgpu.kernels import int_division, pointwise
from navitrain.wgpu.promotion import result_type
from navitrain.wgpu.tensor import WgpuTensor, from_cpu

aten = torch.ops.aten


_FAST_FLOATS = (torch.float32, torch.float16, torch.bfloat16)
_FAST_INTS = (torch.int64, torch.int32)


def _scalar_value(v):
    return v.item() if isinstance(v, torch.Tensor) else v


def _wider_than_i32(v) -> bool:
    if isinstance(v, WgpuTensor):
        return False
    v = _scalar_value(v)
    return type(v) is int and not -2**31 <= v < 2**31


def _kind(compute: str) -> str:
    return "f" if compute == "f32" else "i"


_PLANS: dict = {}


def _plan(template: str, pattern: tuple, load_types: tuple, named: tuple, compute: str):
    """Expression, scalar kinds, input load types and scalar converters for one operand pattern
    (which operands are tensors, which are scalars), built once and cached."""
    subs, kinds, lts, convert = {}, "", [], []
    n_inputs = n_scalars = 0
    for slot, is_tensor, lt in zip("abc", pattern, load_types):
        if is_tensor:
            subs[slot] = pointwise.NAMES[n_inputs]
            n_inputs += 1
            lts.append(lt)
            continue
        if lt == "bool":
            convert.append(lambda v: int(bool(v)))
            kinds += "i"
            subs[slot] = f"(s{n_scalars} != 0)"
        else:
            k = _kind(lt)
            convert.append(float if k == "f" else int)
            kinds += k
            subs[slot] = f"{lt}(s{n_scalars})" if lt == "i64" else f"s{n_scalars}"
        n_scalars += 1
    for key in named:
        k = _kind(compute)
        convert.append(float if k == "f" else int)
        kinds += k
        subs[key] = f"{compute}(s{n_scalars})" if compute == "i64" else f"s{n_scalars}"
        n_scalars += 1
    return template.format(**subs), kinds, lts, convert


def apply(name: str, template: str, operands: list, out_dtype: torch.dtype, compute: str,
          named: dict | None = None, out: WgpuTensor | None = None, load_types: list | None = None,
          shape: tuple | None = None):
    """Run `template` with operands bound to {a}, {b}, {c} and named scalars bound to their names."""
    if compute == "i64" and any(_wider_than_i32(v) for v in operands):
        # Scalars reach the kernel as 32-bit words; an int64 scalar beyond them becomes a 0-d device
        # tensor operand instead, read as i64 (t + 2**40 raised struct.error before).
        operands = [from_cpu(torch.tensor(_scalar_value(v), dtype=torch.int64)) if _wider_than_i32(v) else v
                    for v in operands]
    pattern = tuple(isinstance(v, WgpuTensor) for v in operands)
    lt_key = tuple(load_types) if load_types is not None else (compute,) * len(operands)
    named_keys = tuple(named) if named else ()
    key = (template, pattern, lt_key, named_keys, compute)
    plan = _PLANS.get(key)
    if plan is None:
        plan = _PLANS[key] = _plan(template, pattern, lt_key, named_keys, compute)
    expr, kinds, lts, convert = plan
    inputs = [v for v, t in zip(operands, pattern) if t]
    raw = [_scalar_value(v) for v, t in zip(operands, pattern) if not t]
    if named:
        raw += [_scalar_value(v) for v in named.values()]
    scalars = [c(v) for c, v in zip(convert, raw)]
    if shape is None and not inputs:
        shape = ()
    if shape is None and out is not None and len(inputs) < len(operands):
        shape = pointwise.broadcast_shape(out.shape, *(t.shape for t in inputs))
    elif out is not None and shape is not None:
        _check_broadcasts_to(shape, inputs)
    return pointwise.run(name, expr, inputs, out_dtype, compute, scalars, kinds, out=out,
                         load_types=lts if lts != [compute] * len(inputs) else None, shape=shape)


def _check_broadcasts_to(shape, inputs) -> None:
    """An in-place op's operands must broadcast to its output's shape: the engine, told that shape,
    would otherwise read a larger operand with made-up strides (x.add_(y) of a [5] x and a [4, 5] y)."""
    for t in inputs:
        if t.shape != shape:
            full = pointwise.broadcast_shape(tuple(shape), tuple(t.shape))  # raises where they do not broadcast
            if full != tuple(shape):
                raise RuntimeError(f"output with shape {list(shape)} doesn't match the broadcast shape {list(full)}")


def _promote(*operands) -> torch.dtype:
    # Fast paths for the common cases; everything else follows torch's full rule.
    if len(operands) == 2:
        a, b = operands
        if isinstance(a, torch.Tensor):
            if isinstance(b, torch.Tensor):
                if a.dtype == b.dtype:
                    return a.dtype
            elif type(b) is float:
                if a.dtype.is_floating_point:
                    return a.dtype
            elif type(b) is int and a.dtype != torch.bool:
                return a.dtype
    return result_type(*operands)


def _float_result(dtype: torch.dtype) -> torch.dtype:
    return dtype if dtype.is_floating_point else torch.get_default_dtype()


def _check_inplace(self, result_dtype, name):
    if self.dtype != result_dtype and not torch.can_cast(result_dtype, self.dtype):
        raise RuntimeError(f"result type {str(result_dtype).replace('torch.', '').capitalize()} can't be cast to "
                           f"the desired output type {str(self.dtype).replace('torch.', '').capitalize()}")


# -- binary arithmetic --------------------------------------------------------------------------
def _arith(name, ftemplate, itemplate, btemplate=None, float_result=False):
    """Register op.Tensor, op.Scalar, op_.Tensor, op_.Scalar, op.out for an arithmetic op.
    `float_result`: integer and bool inputs give the default float dtype (atan2), as on the CPU."""
    refuses_bool = name == "sub"
    def compute_of(dtype):
        return pointwise.compute_type(dtype)

    def template_for(compute):
        if compute == "f32":
            if not ftemplate:
                raise RuntimeError(f"{name} is not defined for floating point tensors")
            return ftemplate
        if compute == "bool":
            if btemplate is None:
                raise RuntimeError(f"{name} is not defined for bool tensors")
            return btemplate
        return itemplate.replace("{w}", "64" if compute == "i64" else "")

    # The hot case of training (two float tensors of one dtype, or a float tensor and a Python float,
    # no alpha) skips the general template machinery: one expression, straight to the engine.
    fast_tt = ftemplate.replace(" {alpha} *", "").format(a="a", b="b") if ftemplate else None
    fast_ts = ftemplate.replace(" {alpha} *", "").format(a="a", b="s0") if ftemplate else None

    # In place on an int32/int64 tensor by a Python int (BatchNorm's num_batches_tracked += 1, every layer
    # every step): the same arithmetic, without the template machinery.
    fast_int = itemplate.replace(" {alpha} *", "").format(a="a", b="s0") if name in ("add", "sub", "mul") else None

    checks_divisor = name in ("remainder", "fmod")

    def check(b, compute):
        if checks_divisor and compute in ("i32", "i64"):
            int_division.check_divisor(b, f"aten.{name}")

    def promote(a, b):
        if refuses_bool:
            _refuse_bool_subtraction(a, b)
        dtype = _promote(a, b)
        return _float_result(dtype) if float_result else dtype

    def functional(a, b, *, alpha=None):
        if alpha is None and fast_tt is not None and type(a) is WgpuTensor and a.dtype in _FAST_FLOATS:
            if type(b) is WgpuTensor and b.dtype is a.dtype:
                return pointwise.run(name, fast_tt, [a, b], a.dtype, "f32")
            if type(b) is float:
                return pointwise.run(name, fast_ts, [a], a.dtype, "f32", [b], "f")
        dtype = promote(a, b)
        compute = compute_of(dtype)
        check(b, compute)
        named = {"alpha": alpha if alpha is not None else 1}
        return apply(name, template_for(compute), [a, b], dtype, compute, named if "{alpha}" in ftemplate else None)

    def inplace(a, b, *, alpha=None):
        # The functional fast path's cases, written into `a`: no promotion (the result dtype is a's), so
        # no cast check, and the same expressions (x + 1.0 * y is x + y in floating point).
        if alpha is None and fast_tt is not None and type(a) is WgpuTensor and a.dtype in _FAST_FLOATS:
            if type(b) is WgpuTensor and b.dtype is a.dtype:
                if b.shape != a.shape:
                    _check_broadcasts_to(a.shape, (b,))
                return pointwise.run(name, fast_tt, [a, b], a.dtype, "f32", out=a, shape=tuple(a.shape))
            if type(b) is float:
                return pointwise.run(name, fast_ts, [a], a.dtype, "f32", [b], "f", out=a, shape=tuple(a.shape))
        elif (alpha is None and fast_int is not None and type(b) is int and type(a) is WgpuTensor
              and a.dtype in _FAST_INTS and -2**31 <= b < 2**31):  # the scalar travels as an i32 word
            return pointwise.run(name, fast_int, [a], a.dtype, pointwise.compute_type(a.dtype), [b], "i", out=a,
                                 shape=tuple(a.shape))
        dtype = promote(a, b)
        _check_inplace(a, dtype, name)
        compute = compute_of(dtype)
        check(b, compute)
        named = {"alpha": alpha if alpha is not None else 1}
        return apply(name, template_for(compute), [a, b], a.dtype, compute,
                     named if "{alpha}" in ftemplate else None, out=a, shape=tuple(a.shape))

    def out_variant(a, b, *, alpha=None, out):
        dtype = promote(a, b)
        compute = compute_of(dtype)
        check(b, compute)
        named = {"alpha": alpha if alpha is not None else 1}
        return apply(name, template_for(compute), [a, b], out.dtype, compute,
                     named if "{alpha}" in ftemplate else None, out=out)

    packet = getattr(aten, name)
    inplace_packet = getattr(aten, name + "_", None) if hasattr(torch.ops.aten, name + "_") else None
    for ov in ("Tensor", "Scalar", "default"):
        if ov in packet.overloads():
            implements(getattr(packet, ov))(functional)
        if inplace_packet is not None and ov in inplace_packet.overloads():
            implements(getattr(inplace_packet, ov))(inplace)
    if "out" in packet.overloads():
        implements(packet.out)(out_variant)


_arith("add", "{a} + {alpha} * {b}", "{a} + {alpha} * {b}", "({a} || {b})")
_arith("sub", "{a} - {alpha} * {b}", "{a} - {alpha} * {b}")
_arith("mul", "{a} * {b}", "{a} * {b}", "({a} && {b})")
_arith("maximum", "fmax_nan({a}, {b})", "max({a}, {b})", "({a} || {b})")
_arith("minimum", "fmin_nan({a}, {b})", "min({a}, {b})", "({a} && {b})")
_arith("remainder", "remainder_f({a}, {b})", "imod_floor{w}({a}, {b})")
_arith("fmod", "fmod_f({a}, {b})", "irem{w}({a}, {b})")
_arith("atan2", "atan2_f({a}, {b})", "atan2(f32({a}), f32({b}))", float_result=True)
_arith("bitwise_and", "", "({a} & {b})", "({a} && {b})")
_arith("bitwise_or", "", "({a} | {b})", "({a} || {b})")
_arith("bitwise_xor", "", "({a} ^ {b})", "({a} != {b})")


def _div(a, b, rounding_mode=None, out=None):
    dtype = _promote(a, b)
    if rounding_mode is None:
        dtype = _float_result(dtype)
    compute = pointwise.compute_type(dtype)
    if rounding_mode is not None and compute in ("i32", "i64"):
        int_division.check_divisor(b, f"aten.div(rounding_mode={rounding_mode!r})")
    if rounding_mode is None:
        template = "{a} / {b}"
    elif rounding_mode == "trunc":
        # div_rn: trunc of a 2.5-ulp quotient drops an exact integer (3 b / b = 2.9999998 -> 2)
        template = "trunc(div_rn({a}, {b}))" if compute == "f32" else "({a} / {b})"
    elif rounding_mode == "floor":
        template = ("floordiv_f({a}, {b})" if compute == "f32"
                    else "idiv_floor" + ("64" if compute == "i64" else "") + "({a}, {b})")
    else:
        raise ValueError("div expected rounding_mode to be one of None, 'trunc', or 'floor' "
                         f"but found '{rounding_mode}'")
    if out is not None:
        return apply("div", template, [a, b], out.dtype, compute, out=out,
                     shape=tuple(out.shape) if out is a else None)
    return apply("div", template, [a, b], dtype, compute)


@implements(aten.div.Tensor, aten.div.Scalar)
def div(a, b):
    return _div(a, b)


@implements(aten.div.Tensor_mode, aten.div.Scalar_mode)
def div_mode(a, b, *, rounding_mode=None):
    return _div(a, b, rounding_mode)


@implements(aten.div_.Tensor, aten.div_.Scalar)
def div_(a, b):
    _check_inplace(a, _float_result(_promote(a, b)), "div_")
    return _div(a, b, None, out=a)


@implements(aten.div_.Tensor_mode, aten.div_.Scalar_mode)
def div_mode_(a, b, *, rounding_mode=None):
    return _div(a, b, rounding_mode, out=a)


@implements(aten.div.out)
def div_out(a, b, *, out):
    return _div(a, b, None, out=out)


@implements(aten.floor_divide.default, aten.floor_divide.Scalar)
def floor_divide(a, b):
    return _div(a, b, "floor")


def _refuse_bool_subtraction(a, b):
    if any(v.dtype == torch.bool if isinstance(v, torch.Tensor) else type(v) is bool for v in (a, b)):
        raise RuntimeError("Subtraction, the `-` operator, with a bool tensor is not supported. If you are "
                           "trying to invert a mask, use the `~` or `logical_not()` operator instead.")


@implements(aten.rsub.Tensor, aten.rsub.Scalar)
def rsub(a, b, *, alpha=1):
    _refuse_bool_subtraction(a, b)
    dtype = _promote(a, b)
    compute = pointwise.compute_type(dtype)
    return apply("rsub", "{b} - {alpha} * {a}", [a, b], dtype, compute, {"alpha": alpha})


def _pow(a, b, out=None):
    dtype = _promote(a, b)
    compute = pointwise.compute_type(dtype)
    if compute == "f32":
        if not isinstance(b, torch.Tensor) and b == 2:
            template = "{a} * {a}"
        elif not isinstance(b, torch.Tensor):
            template = "pow_scalar_f({a}, {b})"   # (0.5 and -0.5 are sqrt and rsqrt in PyTorch)
        else:
            template = "pow_f({a}, {b})"
    else:
        template = f"pow_{compute}({{a}}, {{b}})"
    if out is not None:
        return apply("pow", template, [a, b], out.dtype, compute, out=out, shape=tuple(out.shape))
    return apply("pow", template, [a, b], dtype, compute)


@implements(aten.pow.Tensor_Tensor, aten.pow.Tensor_Scalar, aten.pow.Scalar)
def pow_(a, b):
    return _pow(a, b)


@implements(aten.pow_.Tensor, aten.pow_.Scalar)
def pow_inplace(a, b):
    return _pow(a, b, out=a)


# -- comparisons and logic -------------------------------------------------------------------------
# WGSL orders no bools: false < true written as logic.
_BOOL_ORDER = {"<": "(!{a} && {b})", "<=": "(!{a} || {b})", ">": "({a} && !{b})", ">=": "({a} || !{b})"}


def _compare(name, op):
    def template(compute):
        if compute == "bool" and op in _BOOL_ORDER:
            return _BOOL_ORDER[op]
        if op == "!=" and compute == "f32":
            # lavapipe evaluates != as ordered (false when either side is NaN); NaN != anything is true.
            return "(({a} != {b}) || is_nan({a}) || is_nan({b}))"
        return f"({{a}} {op} {{b}})"

    def functional(a, b):
        dtype = _promote(a, b)
        compute = pointwise.compute_type(dtype)
        return apply(name, template(compute), [a, b], torch.bool, compute)

    def inplace(a, b):
        dtype = _promote(a, b)
        compute = pointwise.compute_type(dtype)
        return apply(name, template(compute), [a, b], a.dtype, compute, out=a, shape=tuple(a.shape))

    packet, inplace_packet = getattr(aten, name), getattr(aten, name + "_")
    implements(packet.Tensor, packet.Scalar)(functional)
    implements(inplace_packet.Tensor, inplace_packet.Scalar)(inplace)


for _name, _op in (("eq", "=="), ("ne", "!="), ("lt", "<"), ("le", "<="), ("gt", ">"), ("ge", ">=")):
    _compare(_name, _op)


def _logical(name, template):
    def functional(a, b):
        return apply(name, template, [a, b], torch.bool, "bool", load_types=["bool", "bool"])

    def inplace(a, b):
        return apply(name, template, [a, b], a.dtype, "bool", out=a, load_types=["bool", "bool"], shape=tuple(a.shape))

    implements(getattr(aten, name).default)(functional)
    implements(getattr(aten, name + "_").default)(inplace)


_logical("logical_and", "({a} && {b})")
_logical("logical_or", "({a} || {b})")
_logical("logical_xor", "({a} != {b})")


@implements(aten.logical_not.default)
def logical_not(a):
    return apply("logical_not", "!{a}", [a], torch.bool, "bool", load_types=["bool"])


@implements(aten.bitwise_not.default)
def bitwise_not(a):
    if a.dtype == torch.bool:
        return apply("logical_not", "!{a}", [a], torch.bool, "bool", load_types=["bool"])
    compute = pointwise.compute_type(a.dtype)
    return apply("bitwise_not", "~{a}", [a], a.dtype, compute)


@implements(aten.where.self)
def where(cond, a, b):
    dtype = _promote(a, b)
    compute = pointwise.compute_type(dtype)
    operands = [a, b, cond]
    shape = pointwise.broadcast_shape(*(o.shape for o in operands if isinstance(o, torch.Tensor)))
    return apply("where", "select({b}, {a}, {c})", operands, dtype, compute,
                 load_types=[compute, compute, "bool"], shape=shape)


@implements(aten.where.ScalarSelf, aten.where.ScalarOther, aten.where.Scalar)
def where_scalar(cond, a, b):
    return where(cond, a, b)


@implements(aten.masked_fill.Scalar, aten.masked_fill.Tensor)
def masked_fill(x, mask, value):
    compute = pointwise.compute_type(x.dtype)
    shape = pointwise.broadcast_shape(x.shape, mask.shape)
    return apply("masked_fill", "select({a}, {b}, {c})", [x, value, mask], x.dtype, compute,
                 load_types=[compute, compute, "bool"], shape=shape)


@implements(aten.masked_fill_.Scalar, aten.masked_fill_.Tensor)
def masked_fill_(x, mask, value):
    compute = pointwise.compute_type(x.dtype)
    return apply("masked_fill", "select({a}, {b}, {c})", [x, value, mask], x.dtype, compute,
                 load_types=[compute, compute, "bool"], out=x, shape=tuple(x.shape))


# -- unary math ----------------------------------------------------------------------------------------
def _unary(name, ftemplate, itemplate=None, float_result=True, bool_template=None, nan_in_nan_out=True):
    def result_dtype(a):
        if a.dtype == torch.bool and bool_template is not None:
            return torch.bool
        return _float_result(a.dtype) if float_result else a.dtype

    def template_for(dtype, compute):
        if compute == "f32":
            return ftemplate
        if compute == "bool":
            if bool_template is None:  # WGSL has no arithmetic on bools, and the CPU refuses them too
                raise NotImplementedError(f'"{name}" not implemented for \'Bool\'')
            return bool_template
        if itemplate is None:
            raise RuntimeError(f"{name} is not implemented for {dtype}")
        return itemplate

    if nan_in_nan_out:
        # WGSL leaves builtins of NaN to the implementation (lavapipe: atan(NaN) = 0): pass NaN through.
        ftemplate = f"keep_nan({{a}}, {ftemplate})"

    def functional(a):
        dtype = result_dtype(a)
        compute = pointwise.compute_type(dtype)
        return apply(name, template_for(dtype, compute), [a], dtype, compute)

    def inplace(a):
        dtype = result_dtype(a)
        _check_inplace(a, dtype, name)
        compute = pointwise.compute_type(dtype)
        return apply(name, template_for(dtype, compute), [a], a.dtype, compute, out=a)

    def out_variant(a, *, out):
        dtype = result_dtype(a)
        compute = pointwise.compute_type(dtype)
        return apply(name, template_for(dtype, compute), [a], out.dtype, compute, out=out)

    packet = getattr(aten, name)
    implements(packet.default)(functional)
    if hasattr(torch.ops.aten, name + "_"):
        implements(getattr(aten, name + "_").default)(inplace)
    if "out" in packet.overloads():
        implements(packet.out)(out_variant)


for _name, _f in {
    "exp": "exp({a})", "exp2": "exp2({a})", "expm1": "expm1_f({a})", "log": "log({a})", "log2": "log2({a})",
    "log10": "(log({a}) * 0.4342944819032518)", "log1p": "log1p_f({a})", "sqrt": "sqrt({a})",
    # sin_f/cos_f/tan_f (kernels/wgsl_trig.py): their own range reduction, a driver's is far off (NVIDIA)
    "rsqrt": "inverseSqrt({a})", "sin": "sin_f({a})", "cos": "cos_f({a})", "tan": "tan_f({a})",
    # WGSL's asin/acos lose 4e-4 near |x| -> 1 on lavapipe: through atan2 they are as exact as atan (3e-6).
    "asin": "select(atan2_f({a}, sqrt((1.0 - {a}) * (1.0 + {a}))), {a}, {a} == 0.0)",  # asin(-0) = -0
    "acos": "atan2_f(sqrt((1.0 - {a}) * (1.0 + {a})), {a})",
    "atan": "atan({a})", "sinh": "sinh({a})", "cosh": "cosh({a})", "tanh": "tanh_f({a})",
    "asinh": "asinh({a})", "acosh": "acosh({a})", "atanh": "atanh({a})", "sigmoid": "sigmoid_f({a})",
    "erf": "erf_f({a})", "erfc": "(1.0 - erf_f({a}))", "reciprocal": "(1.0 / {a})",
}.items():
    _unary(_name, _f)

for _name, _f, _i in (
    ("neg", "(-{a})", "(-{a})"), ("abs", "abs({a})", "abs({a})"), ("sign", "sign({a})", "sign({a})"),
    ("floor", "floor({a})", "{a}"), ("ceil", "ceil({a})", "{a}"), ("trunc", "trunc({a})", "{a}"),
    ("round", "round({a})", "{a}"), ("frac", "({a} - trunc({a}))", None),
    ("relu", "relu_nan({a})", "max({a}, 0)"), ("square", "({a} * {a})", "({a} * {a})"),
):
    # sign(NaN) is 0 on the CPU; the others carry NaN through their own arithmetic.
    _unary(_name, _f, _i, float_result=False, nan_in_nan_out=_name not in ("sign", "neg", "square", "relu"),
           bool_template="{a}" if _name == "sign" else None)  # the CPU refuses bools for the others


@implements(aten.isnan.default)
def isnan(a):
    if not a.dtype.is_floating_point:
        return apply("false", "false", [a], torch.bool, "bool", load_types=["bool"])
    return apply("isnan", "is_nan({a})", [a], torch.bool, "f32")


@implements(aten.isinf.default)
def isinf(a):
    if not a.dtype.is_floating_point:
        return apply("false", "false", [a], torch.bool, "bool", load_types=["bool"])
    return apply("isinf", "is_inf({a})", [a], torch.bool, "f32")


@implements(aten.isfinite.default)
def isfinite(a):
    if not a.dtype.is_floating_point:
        return apply("true", "true", [a], torch.bool, "bool", load_types=["bool"])
    return apply("isfinite", "!(is_nan({a}) || is_inf({a}))", [a], torch.bool, "f32")


@implements(aten.nan_to_num.default)
def nan_to_num(a, nan=None, posinf=None, neginf=None):
    if not a.dtype.is_floating_point:
        return aten.clone.default(a)
    fmax = torch.finfo(a.dtype).max
    named = {"n": 0.0 if nan is None else nan, "p": fmax if posinf is None else posinf,
             "q": -fmax if neginf is None else neginf}
    return apply("nan_to_num", "select(select(select({a}, {q}, is_inf({a}) && {a} < 0.0), {p}, "
                 "is_inf({a}) && {a} > 0.0), {n}, is_nan({a}))", [a], a.dtype, "f32", named)


# -- clamp -------------------------------------------------------------------------------------------
def _clamp(x, lo, hi, out=None):
    dtype = x.dtype
    for v in (lo, hi):
        if v is not None:
            dtype = result_type(x, v) if dtype == x.dtype else torch.promote_types(dtype, result_type(x, v))
    compute = pointwise.compute_type(dtype)
    f = compute == "f32"
    # WGSL's max/min take no bools: on bools they are || and &&.
    hi_fn, lo_fn = ("fmax_nan", "fmin_nan") if f else ("max", "min")
    expr, operands = "{a}", [x]
    if lo is not None:
        expr = f"({expr} || {{b}})" if compute == "bool" else f"{hi_fn}({expr}, {{b}})"
        operands.append(lo)
    if hi is not None:
        slot = "b" if lo is None else "c"
        expr = f"({expr} && {{{slot}}})" if compute == "bool" else f"{lo_fn}({expr}, {{{slot}}})"
        operands.append(hi)
    if out is not None:
        return apply("clamp", expr, operands, out.dtype, compute, out=out, shape=tuple(out.shape))
    return apply("clamp", expr, operands, dtype, compute)


@implements(aten.clamp.default, aten.clamp.Tensor)
def clamp(x, min=None, max=None):
    return _clamp(x, min, max)


@implements(aten.clamp_.default, aten.clamp_.Tensor)
def clamp_(x, min=None, max=None):
    return _clamp(x, min, max, out=x)


@implements(aten.clamp_min.default, aten.clamp_min.Tensor)
def clamp_min(x, min):
    return _clamp(x, min, None)


@implements(aten.clamp_min_.default, aten.clamp_min_.Tensor)
def clamp_min_(x, min):
    return _clamp(x, min, None, out=x)


@implements(aten.clamp_max.default, aten.clamp_max.Tensor)
def clamp_max(x, max):
    return _clamp(x, None, max)


@implements(aten.clamp_max_.default, aten.clamp_max_.Tensor)
def clamp_max_(x, max):
    return _clamp(x, None, max, out=x)


# -- ternary ------------------------------------------------------------------------------------------
@implements(aten.addcmul.default)
def addcmul(x, t1, t2, *, value=1):
    dtype = result_type(x, t1, t2)
    compute = pointwise.compute_type(dtype)
    return apply("addcmul", "{a} + {v} * {b} * {c}", [x, t1, t2], dtype, compute, {"v": value})


@implements(aten.addcmul_.default)
def addcmul_(x, t1, t2, *, value=1):
    compute = pointwise.compute_type(x.dtype)
    return apply("addcmul", "{a} + {v} * {b} * {c}", [x, t1, t2], x.dtype, compute, {"v": value}, out=x,
                 shape=tuple(x.shape))


@implements(aten.addcdiv.default)
def addcdiv(x, t1, t2, *, value=1):
    _check_addcdiv(t1, t2)
    dtype = result_type(x, t1, t2)
    compute = pointwise.compute_type(dtype)
    return apply("addcdiv", "{a} + {v} * {b} / {c}", [x, t1, t2], dtype, compute, {"v": value})


def _check_addcdiv(t1, t2):
    if not t1.dtype.is_floating_point and not t2.dtype.is_floating_point:
        raise RuntimeError("Integer division with addcdiv is no longer supported (as on the CPU): use "
                           "(input + value * torch.trunc(tensor1 / tensor2)).to(input.dtype)")


@implements(aten.addcdiv_.default)
def addcdiv_(x, t1, t2, *, value=1):
    _check_addcdiv(t1, t2)
    compute = pointwise.compute_type(x.dtype)
    return apply("addcdiv", "{a} + {v} * {b} / {c}", [x, t1, t2], x.dtype, compute, {"v": value}, out=x,
                 shape=tuple(x.shape))


@implements(aten.lerp.Scalar, aten.lerp.Tensor)
def lerp(a, b, weight):
    dtype = _promote(a, b)
    return apply("lerp", "lerp_f({a}, {b}, {c})", [a, b, weight], dtype, "f32")


@implements(aten.lerp_.Scalar, aten.lerp_.Tensor)
def lerp_(a, b, weight):
    return apply("lerp", "lerp_f({a}, {b}, {c})", [a, b, weight], a.dtype, "f32", out=a, shape=tuple(a.shape))

