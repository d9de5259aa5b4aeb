"""torch.logspace on the device (every overload: scalar or 0-d tensor ends, functional and out=).

PyTorch's decomposition computes in float64 (linspace, then pow), which has no WGSL type, so it ran on
the CPU. Here the CPU kernel (RangeFactories.cpp) is followed: the exponent is start + step * i for the
first half and end - step * (steps - 1 - i) for the second, where start, end and end - start are rounded
to the output dtype and the rest is double. Here the step, the exponent, log2(base) and their product
are each two float32 words (error-free sums and fma products), and base ** e = 2 ** (e * log2(base))
takes exp2 of the fraction only and scales by the integer part, so the result is good to a few float32
ulp even for large exponents. Integer dtypes, non-finite ends and non-positive bases take the counted
CPU fallback: the CPU truncates a double result to an integer (a float32 one may land on the other side
of an integer), and signs of negative powers would need the exponent's parity.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from navitrain.wgpu.dispatch import implements
from navitrain.wgpu.dtypes import NoKernelForDtype
from navitrain.wgpu.kernels import pointwise
from navitrain.wgpu.tensor import empty, to_cpu

aten = torch.ops.aten
_FLOATS = (torch.float32, torch.float16, torch.bfloat16)


def _expression() -> tuple[str, str]:
    # s0 start, s1 end, s2 / s3 step (high, low word), s4 / s5 log2(base) (high, low), s6 steps, s7 steps / 2.
    # The exponent and its product with log2(base) are carried as two float32 words each (error-free
    # products through fma, sums through two_sum), as the CPU computes them in double.
    prelude = """
  let ls_first = gi < u32(s7);
  let ls_t = f32(select(u32(s6) - 1u - gi, gi, ls_first));
  let ls_p = s2 * ls_t;
  let ls_p_lo = fma(s2, ls_t, -ls_p) + s3 * ls_t;
  let ls_a = select(s1, s0, ls_first);
  let ls_b = select(-ls_p, ls_p, ls_first);
  let ls_e = ls_a + ls_b;
  let ls_bb = ls_e - ls_a;
  let ls_e_lo = ((ls_a - (ls_e - ls_bb)) + (ls_b - ls_bb)) + select(-ls_p_lo, ls_p_lo, ls_first);
  let ls_y = ls_e * s4;
  let ls_y_lo = fma(ls_e, s4, -ls_y) + ls_e * s5 + ls_e_lo * s4;
  let ls_whole = floor(ls_y);
  let ls_value = ldexp(exp2((ls_y - ls_whole) + ls_y_lo), i32(clamp_nan(ls_whole, -300.0, 300.0)));"""
    # NaN ends stay NaN; exponents beyond the float range give inf / 0 through ldexp
    return prelude, "select(ls_value, ls_e + s4, is_nan(ls_e) || is_nan(s4))"


def _split(value: float) -> tuple[float, float]:
    """value as the sum of two float32 numbers (high word, then the rest)."""
    high = float(np.float32(value))
    return high, float(np.float32(value - high))


def _round_host(value: float, dtype: torch.dtype) -> float:
    """value rounded to dtype, as the CPU rounds each step of its float32 / float16 / bfloat16 arithmetic."""
    return float(torch.tensor(float(np.float32(value)), dtype=torch.float32).to(dtype))


def _fill(out, start, end, steps: int, base: float):
    dtype = out.dtype
    if dtype not in _FLOATS:
        raise NoKernelForDtype(f"logspace in {dtype} (the CPU computes it in double)")
    start, end = float(start), float(end)
    if not (math.isfinite(start) and math.isfinite(end)):
        raise NoKernelForDtype("logspace with a non-finite end")
    if base <= 0 or math.isinf(base) or math.isnan(base):
        raise NoKernelForDtype("logspace of a non-positive or non-finite base")
    if steps == 0:
        return out
    if steps == 1:  # the CPU fills base ** start with start as given, not rounded to the dtype
        try:
            value = math.pow(base, start)
        except OverflowError:
            value = math.inf
        return aten.fill_.Scalar(out, _round_host(value, dtype))
    start, end = _round_host(float(start), dtype), _round_host(float(end), dtype)
    step = _round_host(end - start, dtype) / (steps - 1)  # the difference in the dtype, the quotient in double
    prelude, expr = _expression()
    return pointwise.run("logspace", expr, [], dtype, "f32",
                         [start, end, *_split(step), *_split(math.log2(base)), steps, steps // 2], "ffffffii",
                         out=out, shape=(steps,), prelude=prelude)


def _scalar(v):
    if isinstance(v, torch.Tensor):
        if v.dim() != 0:
            raise RuntimeError("logspace only supports 0-dimensional start and end tensors, but got "
                               f"{'start' if v is not None else 'end'} with {v.dim()} dimension(s).")
        return to_cpu(v).item()  # (a 0-d wgpu tensor: read back, as the CPU kernel reads it)
    return v


def _logspace(start, end, steps, base=10.0, *, dtype=None, layout=None, device=None, pin_memory=None):
    if steps < 0:
        raise RuntimeError("number of steps must be non-negative")
    start, end = _scalar(start), _scalar(end)
    if any(isinstance(v, complex) for v in (start, end)):
        raise NoKernelForDtype("complex logspace")
    out = empty([steps], dtype or torch.get_default_dtype())
    return _fill(out, start, end, steps, float(base))


def _logspace_out(start, end, steps, base=10.0, *, out):
    if steps < 0:
        raise RuntimeError("number of steps must be non-negative")
    start, end = _scalar(start), _scalar(end)
    if out.numel() != steps:
        aten.resize_.default(out, [steps])
    if not out.is_contiguous():
        raise NoKernelForDtype("logspace into a non-contiguous tensor")
    return _fill(out, start, end, steps, float(base))


implements(aten.logspace.default, aten.logspace.Tensor_Tensor, aten.logspace.Tensor_Scalar,
           aten.logspace.Scalar_Tensor)(_logspace)
implements(aten.logspace.out, aten.logspace.Tensor_Tensor_out, aten.logspace.Tensor_Scalar_out,
           aten.logspace.Scalar_Tensor_out)(_logspace_out)
