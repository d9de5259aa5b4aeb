"""Pointwise expressions computed in float64 where the adapter has shader-f64 (issue 17).

Handlers write their float templates once, for f32 (`a + s0 * b`, `keep_nan(a, sqrt(a))`, ...). When an
operand or the result is float64, the pointwise engine asks `translate` for the same expression in f64:
it is accepted only if every name in it is an operand, a scalar, or a function that is exact in f64 on
Vulkan (arithmetic, comparisons, select, abs, sqrt, floor/ceil/round/trunc, fma and the NaN-safe
helpers below). Anything else -- exp, log, pow, sin, tanh (GLSL.std.450 takes 16/32-bit floats only),
a cast to f32, a bit trick on f32 bits -- raises NoKernelForDtype, so the op takes the counted CPU
fallback rather than an f32 approximation.

Float scalars are Python doubles: each travels as its two 32-bit halves (the parameter block holds
32-bit words and naga has no bitcast to f64) and is rebuilt exactly by `f64_from_bits`.
"""
from __future__ import annotations

import re
import struct

from navitrain.wgpu.dtypes import NoKernelForDtype

# f32 helper -> its f64 twin; the names the expression may keep as they are.
_RENAMED = {"keep_nan": "keep_nan64", "keep_nan2": "keep_nan2_64", "fmax_nan": "fmax_nan64",
            "fmin_nan": "fmin_nan64", "clamp_nan": "clamp_nan64", "is_nan": "is_nan64"}
_EXACT = frozenset({"select", "abs", "sqrt", "floor", "ceil", "round", "trunc", "fma", "a", "b", "c", "d"})
_TOKEN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|[0-9][0-9.]*[A-Za-z]*")
_SCALAR = re.compile(r"s([0-3])$")
_LITERAL = re.compile(r"[0-9]+(\.[0-9]*)?$")  # no suffix: an abstract number, exact as f64 where it is as f32

# NaN tests go through f32: a NaN stays NaN, every other double gives a number or inf.
HELPERS = """
fn is_nan64(x: f64) -> bool { return is_nan(f32(x)); }
fn keep_nan64(x: f64, r: f64) -> f64 { return select(r, x, is_nan64(x)); }
fn keep_nan2_64(a: f64, b: f64, r: f64) -> f64 { return select(r, a + b, is_nan64(a) || is_nan64(b)); }
fn fmax_nan64(a: f64, b: f64) -> f64 { if (is_nan64(a) || is_nan64(b)) { return a + b; } return max(a, b); }
fn fmin_nan64(a: f64, b: f64) -> f64 { if (is_nan64(a) || is_nan64(b)) { return a + b; } return min(a, b); }
fn clamp_nan64(x: f64, lo: f64, hi: f64) -> f64 { return fmin_nan64(fmax_nan64(x, lo), hi); }
fn f64_from_bits(lo_bits: i32, hi_bits: i32) -> f64 {
  let lo = bitcast<u32>(lo_bits);
  let hi = bitcast<u32>(hi_bits);
  let expo = i32((hi >> 20u) & 0x7ffu);
  let mant = f64(hi & 0xfffffu) * 4294967296.0lf + f64(lo);  // exact: below 2^52
  var mag = ldexp(mant, -1074);  // zero and subnormals
  if (expo > 0) { mag = ldexp(mant + 4503599627370496.0lf, expo - 1075); }
  if (expo == 0x7ff) { mag = f64(bitcast<f32>(select(0x7fc00000u, 0x7f800000u, mant == 0.0lf))); }
  return select(mag, -mag, (hi >> 31u) != 0u);
}
"""


def double_words(value: float) -> tuple[int, int]:
    """A double's (low, high) 32-bit halves as signed words, for two i32 parameters."""
    return struct.unpack("<ii", struct.pack("<d", float(value)))


def translate(expr: str, scalar_kinds: str, load_types: tuple) -> tuple[str, str, tuple, str]:
    """(expression in f64, scalar kinds of the f64 kernel, load types, prelude rebuilding the scalars),
    or NoKernelForDtype where `expr` is not exact in f64."""
    def exact(m: re.Match) -> str:
        tok = m.group(0)
        if tok[0].isdigit():
            if _LITERAL.match(tok):
                return tok
        elif _SCALAR.match(tok):
            return "q" + tok[1:]  # the rebuilt double, named apart from its words
        elif tok in _RENAMED:
            return _RENAMED[tok]
        elif tok in _EXACT:
            return tok
        raise NoKernelForDtype(f"no exact float64 kernel for `{expr}` ({tok})")

    expr64 = _TOKEN.sub(exact, expr)
    if any(lt not in ("f32", "bool") for lt in load_types):
        raise NoKernelForDtype(f"float64 operands loaded as {load_types}")
    kinds, prelude, word = "", [], 0
    for k, kind in enumerate(scalar_kinds):
        if kind == "f":
            prelude.append(f"  let q{k} = f64_from_bits(s{word}, s{word + 1});")
            kinds += "ii"
            word += 2
        else:
            prelude.append(f"  let q{k} = s{word};")
            kinds += "i"
            word += 1
    lts = tuple("f64" if lt == "f32" else lt for lt in load_types)
    return expr64, kinds, lts, "\n".join(prelude)


def scalar_words(scalars, scalar_kinds: str) -> list:
    """The f64 kernel's scalar words for the values of an f32 kernel's scalars."""
    words = []
    for v, kind in zip(scalars, scalar_kinds):
        if kind == "f":
            words.extend(double_words(v))
        else:
            words.append(int(v))
    return words
