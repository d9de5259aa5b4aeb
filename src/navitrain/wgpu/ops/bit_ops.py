"""Ops on the bits of numbers: bitwise shifts of integers and frexp of floats.

Shifts follow PyTorch's CPU kernel: a left shift by a negative count or by the width of the type or more
gives 0, a right shift by such a count fills with the sign (a >> (width - 1)). WGSL leaves those counts
undefined, so the count is checked in the kernel. Narrow integers (int8, int16, uint8) are computed in
i32 and wrap on store, which gives the CPU's values for every count. int64 needs 64-bit integers in the
shader (compute type i64); without them it takes the counted CPU fallback (NoKernelForDtype).

frexp works on the float32 bits: a normal number's mantissa is its fraction with the exponent of 0.5, a
subnormal one is normalised by its bit length first, and 0, +-inf and NaN come back unchanged with
exponent 0 (as glibc's frexp, which the CPU kernel calls). float16 and bfloat16 values are exact in
float32, and so are their mantissas, so those dtypes share the float32 kernel.
"""
from __future__ import annotations

import torch

from navitrain.wgpu.dispatch import implements
from navitrain.wgpu.dtypes import NoKernelForDtype
from navitrain.wgpu.kernels import pointwise
from navitrain.wgpu.ops.elementwise import apply
from navitrain.wgpu.promotion import result_type
from navitrain.wgpu.tensor import WgpuTensor

aten = torch.ops.aten


def _shift_template(left: bool, compute: str) -> str:
    width = 64 if compute == "i64" else 32
    unsigned = "u64" if compute == "i64" else "u32"
    # one unsigned comparison: a negative count wraps to a huge one. (Signed `i64(s0) < i64(64)` of a
    # scalar count compiled wrong on lavapipe: false for 3.)
    in_range = f"({unsigned}({{b}}) < {unsigned}({width}))"
    if left:
        return f"select({compute}(0), {{a}} << u32({{b}}), {in_range})"
    return f"({{a}} >> u32(select({compute}({width - 1}), {{b}}, {in_range})))"


# c10's names of the dtypes the CPU refuses to shift, for its error message
_C10_NAMES = {torch.float32: "Float", torch.float64: "Double", torch.float16: "Half", torch.bfloat16: "BFloat16",
              torch.bool: "Bool", torch.complex64: "ComplexFloat", torch.complex128: "ComplexDouble"}


def _shift_plan(name: str, a, b):
    dtype = result_type(a, b)
    if dtype.is_floating_point or dtype.is_complex or dtype == torch.bool:
        raise NotImplementedError(f'"{name}_cpu" not implemented for \'{_C10_NAMES.get(dtype, dtype)}\'')
    compute = pointwise.compute_type(dtype)
    if dtype == torch.int64 and compute != "i64":
        raise NoKernelForDtype("int64 shifts need 64-bit integers in the shader")
    return dtype, compute


def _shift_ops(name: str, dunder: str, left: bool):
    def functional(a, b):
        dtype, compute = _shift_plan(name, a, b)
        return apply(name, _shift_template(left, compute), [a, b], dtype, compute)

    def inplace(a, b):
        dtype, compute = _shift_plan(name, a, b)
        if dtype != a.dtype and not torch.can_cast(dtype, a.dtype):
            raise RuntimeError(f"result type {dtype} can't be cast to the desired output type {a.dtype}")
        return apply(name, _shift_template(left, compute), [a, b], a.dtype, compute, out=a, shape=tuple(a.shape))

    packet, inplace_packet = getattr(aten, name), getattr(aten, name + "_")
    implements(packet.Tensor, packet.Tensor_Scalar, packet.Scalar_Tensor)(functional)
    implements(inplace_packet.Tensor, inplace_packet.Tensor_Scalar)(inplace)
    # the operators `a << b` and `a <<= b`
    implements(getattr(aten, f"__{dunder}__").Tensor, getattr(aten, f"__{dunder}__").Scalar)(functional)
    implements(getattr(aten, f"__i{dunder}__").Tensor, getattr(aten, f"__i{dunder}__").Scalar)(inplace)


_shift_ops("bitwise_left_shift", "lshift", left=True)
_shift_ops("bitwise_right_shift", "rshift", left=False)

# The float32 bits of {a}: exponent field, fraction field, and the bit length of a subnormal's fraction.
_FREXP_BITS = """
  let fr_bits = bitcast<u32>(a);
  let fr_field = (fr_bits >> 23u) & 255u;
  let fr_fraction = fr_bits & 8388607u;
  let fr_length = 32u - countLeadingZeros(fr_fraction);
  let fr_normal = fr_field != 0u && fr_field != 255u;
  let fr_subnormal = fr_field == 0u && fr_fraction != 0u;
  let fr_sign_half = (fr_bits & 2147483648u) | (126u << 23u);
  let fr_mantissa = select(select(fr_bits, fr_sign_half | ((fr_fraction << (24u - fr_length)) & 8388607u),
                                  fr_subnormal),
                           fr_sign_half | fr_fraction, fr_normal);
  let fr_exponent = select(select(0, i32(fr_length) - 149, fr_subnormal), i32(fr_field) - 126, fr_normal);"""


@implements(aten.frexp.Tensor)
def frexp(x):
    if not x.dtype.is_floating_point:
        raise RuntimeError("torch.frexp() only supports floating-point dtypes")
    pointwise.compute_type(x.dtype)  # float64: NoKernelForDtype, the counted fallback
    mantissa = pointwise.run("frexp_mantissa", "bitcast<f32>(fr_mantissa)", [x], x.dtype, "f32",
                             shape=tuple(x.shape), prelude=_FREXP_BITS)
    exponent = pointwise.run("frexp_exponent", "fr_exponent", [x], torch.int32, "f32",
                             shape=tuple(x.shape), prelude=_FREXP_BITS)
    return mantissa, exponent


@implements(aten.frexp.Tensor_out)
def frexp_out(x, *, mantissa: WgpuTensor, exponent: WgpuTensor):
    m, e = frexp(x)
    aten.resize_.default(mantissa, list(x.shape))
    aten.resize_.default(exponent, list(x.shape))
    aten.copy_.default(mantissa, m)
    aten.copy_.default(exponent, e)
    return mantissa, exponent
