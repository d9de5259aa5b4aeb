"""Special and IEEE functions: erfinv, lgamma, digamma, polygamma, fmax/fmin, hypot, copysign, nextafter,
round(decimals=), the hardshrink/softshrink gradients, and torch.equal.

Before these kernels the ops went through PyTorch's reference decompositions to prims (prims.erf_inv,
prims.fmax, ...) that had no kernel, so each call ran on the CPU. The WGSL lives in wgsl_special.
Integer and bool inputs follow the CPU: float results where it promotes (erfinv, lgamma, digamma,
copysign), the CPU's error where it has no kernel (hypot, nextafter, round(decimals=) on integers).
"""
from __future__ import annotations

import torch

from navitrain.wgpu.dispatch import implements
from navitrain.wgpu.dtypes import NoKernelForDtype
from navitrain.wgpu.kernels import pointwise
from navitrain.wgpu.ops.elementwise import _float_result, _promote, _unary, apply
from navitrain.wgpu.tensor import to_cpu

aten = torch.ops.aten


def _type_name(dtype: torch.dtype) -> str:
    return {torch.int64: "Long", torch.int32: "Int", torch.int16: "Short", torch.int8: "Char",
            torch.uint8: "Byte", torch.bool: "Bool"}.get(dtype, str(dtype).replace("torch.", ""))


def _binary(name, ftemplate, itemplate=None, btemplate=None, float_result=False, float32_only=False,
            narrow_templates=None):
    """Register name.default and name.out for a binary op computed by the given WGSL templates.
    `narrow_templates`: float16 / bfloat16 templates of a float32_only op."""
    def plan(a, b):
        dtype = _promote(a, b)
        if float_result:
            dtype = _float_result(dtype)
        narrow = (narrow_templates or {}).get(dtype)
        if float32_only and dtype.is_floating_point and dtype != torch.float32 and narrow is None:
            # the bit-level kernel is float32's; other widths have other ulps (counted CPU fallback)
            raise NoKernelForDtype(f"{name} has a float32 kernel only")
        compute = pointwise.compute_type(dtype)
        template = narrow or {"f32": ftemplate, "bool": btemplate}.get(compute, itemplate)
        if template is None:
            raise NotImplementedError(f'"{name}_cpu" not implemented for \'{_type_name(dtype)}\'')
        return dtype, compute, template

    def functional(a, b):
        dtype, compute, template = plan(a, b)
        return apply(name, template, [a, b], dtype, compute)

    def out_variant(a, b, *, out):
        _, compute, template = plan(a, b)
        return apply(name, template, [a, b], out.dtype, compute, out=out)

    packet = getattr(aten, name)
    implements(packet.default)(functional)
    implements(packet.out)(out_variant)
    return functional


_binary("fmax", "fmax_f({a}, {b})", "max({a}, {b})", "({a} || {b})")
_binary("fmin", "fmin_f({a}, {b})", "min({a}, {b})", "({a} && {b})")
_binary("hypot", "hypot_f({a}, {b})")
# nextafter in float16 / bfloat16 (values exact in float32): bfloat16 is float32's upper half, so its
# neighbour is one step of 1 << 16 in the float32 bits (a zero steps to the smallest subnormal, +-inf to
# the largest finite value). float16 adds its ulp, 2^(exponent - 10) with the exponent at least -14,
# halved when stepping toward zero from a power of two; +-inf steps to +-65504 and 65504 up to inf (the
# float16 store rounds 65536 to inf). NaN in, NaN out; equal operands give b.
_BF16_NEXTAFTER = ("select(select(select(bitcast<f32>(select(bitcast<u32>({a}) - 65536u, bitcast<u32>({a}) + 65536u, "
                   "({b} > {a}) == ({a} > 0.0))), bitcast<f32>(select(0x80010000u, 0x00010000u, {b} > 0.0)), "
                   "{a} == 0.0), {b}, {a} == {b}), {a} + {b}, is_nan({a}) || is_nan({b}))")
_F16_EXPONENT = "(i32((bitcast<u32>({a}) >> 23u) & 255u) - 127)"
_F16_ULP = (f"ldexp(1.0, max({_F16_EXPONENT}, -14) - 10 - select(0, 1, (({{b}} > {{a}}) != ({{a}} > 0.0)) && "
            f"(bitcast<u32>({{a}}) & 8388607u) == 0u && {_F16_EXPONENT} > -14))")
_F16_NEXTAFTER = (f"select(select(select(select({{a}} + select(-1.0, 1.0, {{b}} > {{a}}) * {_F16_ULP}, "
                  "select(-65504.0, 65504.0, {a} > 0.0), is_inf({a})), select(-5.960464477539063e-08, "
                  "5.960464477539063e-08, {b} > 0.0), {a} == 0.0), {b}, {a} == {b}), {a} + {b}, "
                  "is_nan({a}) || is_nan({b}))")
_binary("nextafter", "nextafter_f({a}, {b})", float32_only=True,
        narrow_templates={torch.float16: _F16_NEXTAFTER, torch.bfloat16: _BF16_NEXTAFTER})
_copysign = _binary("copysign", "copysign_f({a}, {b})", float_result=True)
implements(aten.copysign.Tensor, aten.copysign.Scalar)(_copysign)

_unary("erfinv", "erfinv_f({a})")
_unary("lgamma", "lgamma_f({a})")
_unary("digamma", "digamma_f({a})")


@implements(aten.polygamma.default)
def polygamma(n, x):
    if n < 0:
        raise RuntimeError("polygamma(n, x) does not support negative n.")
    dtype = _float_result(x.dtype)
    return apply("polygamma", "polygamma_f({n}, {a})", [x], dtype, pointwise.compute_type(dtype), {"n": n})


@implements(aten.polygamma.out)
def polygamma_out(n, x, *, out):
    return aten.copy_.default(out, polygamma(n, x))


@implements(aten.equal.default)
def equal(a, b):
    """torch.equal: same shape and every element equal (NaN is not equal to itself); one read back."""
    if tuple(a.shape) != tuple(b.shape):
        return False
    if a.numel() == 0:
        return True
    return bool(to_cpu(aten.all.default(aten.eq.Tensor(a, b))).item())


@implements(aten.signbit.default)
def signbit(x):
    compute = pointwise.compute_type(x.dtype)
    if compute == "f32":  # on the bits: signbit(-0.0) and of a negative NaN are true
        return apply("signbit", "((bitcast<u32>({a}) & 0x80000000u) != 0u)", [x], torch.bool, compute)
    if compute == "bool":
        return apply("signbit", "false", [x], torch.bool, compute)
    return apply("signbit", "({a} < 0)", [x], torch.bool, compute)


@implements(aten.round.decimals)
def round_decimals(x, *, decimals=0):
    if not x.dtype.is_floating_point:
        raise NotImplementedError(f'"round_cpu" not implemented for \'{_type_name(x.dtype)}\'')
    compute = pointwise.compute_type(x.dtype)
    # The CPU's formula: scale by 10^|decimals|, round half to even, scale back; its division is correctly
    # rounded, WGSL's '/' only to 2.5 ulp (1 ulp off for 26% of values on NVIDIA): div_rn.
    if decimals >= 0:
        return apply("round_decimals", "div_rn(round({a} * {t}), {t})", [x], x.dtype, compute,
                     {"t": 10.0 ** decimals})
    return apply("round_decimals", "(round(div_rn({a}, {t})) * {t})", [x], x.dtype, compute, {"t": 10.0 ** -decimals})


@implements(aten.hardshrink_backward.default, aten.softshrink_backward.default)
def shrink_backward(grad, x, lambd):
    # Both shrinks have slope 1 outside [-lambd, lambd] and 0 inside; a NaN input gets 0, as on the CPU.
    dtype = _promote(grad, x)
    return apply("shrink_backward", "select(0.0, {a}, ({b} < -{l}) || ({b} > {l}))", [grad, x], dtype,
                 pointwise.compute_type(dtype), {"l": lambd})
