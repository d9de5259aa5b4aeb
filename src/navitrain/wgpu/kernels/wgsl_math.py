"""WGSL math that WGSL lacks or gets wrong for PyTorch's semantics, shared by generated kernels.

- NaN: WGSL leaves min/max/clamp of NaN, and many builtins (atan, atan2, tanh on lavapipe) of NaN, to
  the implementation; PyTorch propagates NaN. So every such call goes through a helper here that tests
  its operands explicitly (fmax_nan, clamp_nan, keep_nan; relu_nan is in dtypes.WGSL_HELPERS, which
  the GEMM epilogues see too). NaN tests use the bits (is_nan in dtypes.WGSL_HELPERS): lavapipe folds
  `x != x` to false and evaluates `a != b` as ordered (false for NaN).
- tanh/sigmoid: evaluated through exp, they overflow to NaN for large |x| on some drivers: clamp first
  (tanh(15) is 1 to within f32 rounding), but let NaN through (a clamp would turn it into a bound).
- remainder/fmod/floor division of floats follow the CPU's formulas (fmod first), so infinities give
  what the CPU gives (inf // 2 is NaN, 5 // inf is 0, remainder(-1, inf) is inf).
- pow: WGSL's pow is undefined for negative bases; PyTorch defines integer exponents there.
- erf: not in WGSL. A Taylor series near 0 (relative error < 1e-8 for |x| < 0.5) and Abramowitz &
  Stegun 7.1.26 beyond (absolute error < 1.5e-7), which is within float32 tolerance of torch.erf.
- log1p/expm1: the classic compensated forms, accurate near 0.
- Integer floor division and Python-style remainder.
"""
from __future__ import annotations

F32 = """
fn fmax_nan(a: f32, b: f32) -> f32 { if (is_nan(a) || is_nan(b)) { return a + b; } return max(a, b); }
fn fmin_nan(a: f32, b: f32) -> f32 { if (is_nan(a) || is_nan(b)) { return a + b; } return min(a, b); }
fn keep_nan(x: f32, r: f32) -> f32 { return select(r, x, is_nan(x)); }
fn keep_nan2(a: f32, b: f32, r: f32) -> f32 { return select(r, a + b, is_nan(a) || is_nan(b)); }
fn finite_or_0(x: f32) -> f32 { return select(x, 0.0, (bitcast<u32>(x) & 0x7f800000u) == 0x7f800000u); }
fn clamp_nan(x: f32, lo: f32, hi: f32) -> f32 { return fmin_nan(fmax_nan(x, lo), hi); }
fn tanh_f(x: f32) -> f32 { return keep_nan(x, tanh(clamp(x, -15.0, 15.0))); }
// sigmoid(-inf) is exactly 0 (so silu(-inf) = -inf * 0 = NaN, as on the CPU, not -inf * 6e-39 = -inf).
fn sigmoid_f(x: f32) -> f32 {
  return select(keep_nan(x, 1.0 / (1.0 + exp(-clamp(x, -88.0, 88.0)))), 0.0, x == bitcast<f32>(0xff800000u));
}
fn log1p_f(x: f32) -> f32 {
  let u = 1.0 + x;
  if (u == 1.0) { return x; }
  if (is_nan(x) || is_inf(u) || u <= 0.0) { return select(log(u), bitcast<f32>(0xff800000u), u == 0.0); }
  return log(u) * x / (u - 1.0);
}
fn fmod_f(a: f32, b: f32) -> f32 {
  if (is_nan(a) || is_nan(b) || is_inf(a) || b == 0.0) { return bitcast<f32>(0x7fc00000u); }
  if (is_inf(b)) { return a; }
  return a - b * trunc(a / b);
}
fn remainder_f(a: f32, b: f32) -> f32 {
  let m = fmod_f(a, b);
  return select(m, m + b, (m != 0.0) && ((b < 0.0) != (m < 0.0)));
}
fn floordiv_f(a: f32, b: f32) -> f32 {
  if (b == 0.0 || is_nan(a) || is_nan(b)) { return a / b; }
  let m = fmod_f(a, b);
  var d = (a - m) / b;
  if ((m != 0.0) && ((b < 0.0) != (m < 0.0))) { d = d - 1.0; }
  if (d == 0.0) { return select(0.0, -0.0, (a < 0.0) != (b < 0.0)); }
  let f = floor(d);
  return select(f, f + 1.0, d - f > 0.5);
}
fn expm1_f(x: f32) -> f32 {
  if (abs(x) < 1e-5) { return x + 0.5 * x * x; }
  return exp(x) - 1.0;
}
fn erf_f(x: f32) -> f32 {
  let ax = abs(x);
  if (ax < 0.5) {
    let x2 = x * x;
    return 1.1283791670955126 * x * (1.0 + x2 * (-0.3333333333333333 + x2 * (0.1 + x2 * (-0.023809523809523808 + x2 * 0.004629629629629629))));
  }
  let t = 1.0 / (1.0 + 0.3275911 * ax);
  let poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))));
  return sign(x) * (1.0 - poly * exp(-ax * ax));
}
fn pow_f(x: f32, y: f32) -> f32 {
  // C's pow: pow(x, 0) = pow(1, y) = 1 even for NaN; otherwise NaN in, NaN out.
  if (y == 0.0 || x == 1.0) { return 1.0; }
  if (is_nan(x) || is_nan(y)) { return x + y; }
  if (y == 1.0) { return x; }
  if (y == 2.0) { return x * x; }
  let inf = bitcast<f32>(0x7f800000u);
  let odd = floor(y) == y && abs(y) % 2.0 == 1.0;
  if (is_inf(y)) {
    if (abs(x) == 1.0) { return 1.0; }
    return select(0.0, inf, (abs(x) > 1.0) == (y > 0.0));
  }
  if (x == 0.0 || is_inf(x)) {
    // |x| ** y is 0 or inf; the sign of x survives for odd integer y.
    let big = (x == 0.0) == (y < 0.0);
    let m = select(0.0, inf, big);
    return select(m, -m, odd && (x < 0.0 || (x == 0.0 && bitcast<u32>(x) != 0u)));
  }
  if (x > 0.0) { return exp2(y * log2(x)); }
  if (floor(y) == y) {
    let r = exp2(y * log2(-x));
    return select(r, -r, odd);
  }
  return bitcast<f32>(0x7fc00000u);
}
fn gelu_tanh_grad(g: f32, x: f32) -> f32 {
  let inner = 0.7978845608028654 * (x + 0.044715 * x * x * x);
  let t = tanh_f(inner);
  let dinner = 0.7978845608028654 * (1.0 + 0.134145 * x * x);
  return g * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * dinner);
}
fn atan2_f(y: f32, x: f32) -> f32 {
  if (is_nan(y) || is_nan(x)) { return y + x; }
  // atan2 of two zeros is implementation-defined in WGSL (lavapipe: 3*pi/4); C gives +-0 or +-pi by the signs.
  if (y == 0.0 && x == 0.0) {
    let r = select(0.0, 3.141592653589793, (bitcast<u32>(x) >> 31u) == 1u);
    return select(r, -r, (bitcast<u32>(y) >> 31u) == 1u);
  }
  return atan2(y, x);
}
fn lerp_f(a: f32, b: f32, w: f32) -> f32 { return select(b - (b - a) * (1.0 - w), a + w * (b - a), abs(w) < 0.5); }
// Integer remainders come from `/`, never from `%`: on the H100's Vulkan driver a signed `%` by a negative
// divisor gave wrong values while `/` was right (run 11). a / 0 is a in WGSL, so irem(a, 0) is a.
fn irem(a: i32, b: i32) -> i32 { return a - b * (a / b); }
fn idiv_floor(a: i32, b: i32) -> i32 { let q = a / b; return select(q, q - 1, (a - b * q != 0) && ((a < 0) != (b < 0))); }
fn imod_floor(a: i32, b: i32) -> i32 { let r = irem(a, b); return select(r, r + b, (r != 0) && ((r < 0) != (b < 0))); }
fn pow_i32(a: i32, b: i32) -> i32 { var r = 1; var base = a; var e = b;
  // a negative power of an integer: 1 for 1, +-1 for -1, else 0 (the CPU's powi)
  if (e < 0) { return select(select(0, 1 - 2 * (e & 1), a == -1), 1, a == 1); }
  loop { if (e == 0) { break; } if ((e & 1) == 1) { r = r * base; } base = base * base; e = e >> 1u; } return r; }
"""

I64 = """
fn irem64(a: i64, b: i64) -> i64 { return a - b * (a / b); }
fn idiv_floor64(a: i64, b: i64) -> i64 { let q = a / b; return select(q, q - 1li, (a - b * q != 0li) && ((a < 0li) != (b < 0li))); }
fn imod_floor64(a: i64, b: i64) -> i64 { let r = irem64(a, b); return select(r, r + b, (r != 0li) && ((r < 0li) != (b < 0li))); }
fn pow_i64(a: i64, b: i64) -> i64 { var r = 1li; var base = a; var e = b;
  if (e < 0li) { return select(select(0li, 1li - 2li * (e & 1li), a == -1li), 1li, a == 1li); }
  loop { if (e == 0li) { break; } if ((e & 1li) == 1li) { r = r * base; } base = base * base; e = e >> 1u; } return r; }
"""


def helpers(has_i64: bool) -> str:
    from navitrain.wgpu.kernels import wgsl_special  # erfinv, lgamma, digamma, nextafter, hypot, fmax/fmin

    return F32 + wgsl_special.F32 + (I64 if has_i64 else "")
