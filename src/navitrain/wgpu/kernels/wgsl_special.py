"""WGSL special functions PyTorch has and WGSL lacks: erfinv, lgamma, digamma, nextafter, hypot.

Appended to every generated kernel's helpers by wgsl_math.helpers (naga drops what a kernel does not
call). Float32 accuracy is what the CPU tests need (atol = rtol = 1e-4), not correct rounding:
- erfinv: M. Giles' single-precision polynomials in w = -log(1 - x^2) ("Approximating the erfinv
  function", GPU Computing Gems, 2010), relative error ~4e-7; |x| = 1 is +-inf, |x| > 1 NaN.
- lgamma: shift x up to >= 8 (subtracting the log of the product), then Stirling's series to 1/x^5;
  x < 0.5 by reflection, log(pi / |sin(pi x)|) - lgamma(1 - x), with sin(pi x) = sinpi_f(x) (wgsl_trig:
  reduced exactly by the nearest integer, no driver sin) so poles (0, -1, -2, ...) are exactly +inf as
  on the CPU and values near them keep their relative accuracy.
- digamma: recurrence up to x >= 6, then the asymptotic series; x < 0 by reflection with pi / tan(pi x)
  = pi cospi(x) / sinpi(x) (wgsl_trig); digamma(+-0) = -+inf and negative integers NaN, as PyTorch's
  calc_digamma.
- polygamma(n >= 1, x) = (-1)^(n+1) n! zeta(n+1, x), the Hurwitz zeta summed directly up to x + k >= 10
  (integer powers by multiplication, so negative x works as in the CPU's Cephes zeta) and finished by
  Euler-Maclaurin with five Bernoulli terms.
- nextafter: on the bits (float32 here; float16/bfloat16 step their own ulp in ops/special.py).
- hypot: scaled by the larger magnitude so squares do not overflow; hypot(+-inf, NaN) = inf.
"""
from __future__ import annotations

F32 = """
const SP_PI: f32 = 3.14159265358979;
fn sp_nan() -> f32 { return bitcast<f32>(0x7fc00000u); }
fn sp_inf() -> f32 { return bitcast<f32>(0x7f800000u); }
// Giles' single-precision erfinv polynomials: erfinv(x) = x * giles_erfinv_poly(w), w = -log((1 - x)(1 + x)).
// Also ndtri's (kernels/wgsl_error_functions.py), which computes w from p without forming 2p - 1.
fn giles_erfinv_poly(w_in: f32) -> f32 {
  var w = w_in;
  var p: f32;
  if (w < 5.0) {
    w = w - 2.5;
    p = 2.81022636e-08; p = 3.43273939e-07 + p * w; p = -3.5233877e-06 + p * w; p = -4.39150654e-06 + p * w;
    p = 0.00021858087 + p * w; p = -0.00125372503 + p * w; p = -0.00417768164 + p * w;
    p = 0.246640727 + p * w; p = 1.50140941 + p * w;
  } else {
    w = sqrt(w) - 3.0;
    p = -0.000200214257; p = 0.000100950558 + p * w; p = 0.00134934322 + p * w; p = -0.00367342844 + p * w;
    p = 0.00573950773 + p * w; p = -0.0076224613 + p * w; p = 0.00943887047 + p * w;
    p = 1.00167406 + p * w; p = 2.83297682 + p * w;
  }
  return p;
}
fn erfinv_f(x: f32) -> f32 {
  if (is_nan(x) || abs(x) > 1.0) { return sp_nan(); }
  if (abs(x) == 1.0) { return x * sp_inf(); }
  return giles_erfinv_poly(-log((1.0 - x) * (1.0 + x))) * x;
}
fn sp_lgamma_pos(x0: f32) -> f32 {
  var x = x0; var prod = 1.0; var shift = 0.0;
  loop { if (x >= 8.0) { break; } prod = prod * x; x = x + 1.0;
         if (prod > 1e30) { shift = shift + log(prod); prod = 1.0; } }
  let r = 1.0 / x; let r2 = r * r;
  let series = r * (0.0833333333333 - r2 * (0.00277777777778 - r2 * 0.000793650793651));
  return (x - 0.5) * log(x) - x + 0.918938533204673 + series - log(prod) - shift;
}
fn lgamma_f(x: f32) -> f32 {
  if (is_nan(x)) { return x; }
  if (abs(x) == sp_inf()) { return sp_inf(); }
  if (x >= 0.5) { return sp_lgamma_pos(x); }
  let s = abs(sinpi_f(x));  // wgsl_trig: relative accuracy near the poles, whatever the driver's sin
  if (s == 0.0) { return sp_inf(); }
  return log(SP_PI / s) - sp_lgamma_pos(1.0 - x);
}
fn sp_digamma_pos(x0: f32) -> f32 {
  var x = x0; var acc = 0.0;
  loop { if (x >= 6.0) { break; } acc = acc - 1.0 / x; x = x + 1.0; }
  let r2 = 1.0 / (x * x);
  return acc + log(x) - 0.5 / x - r2 * (0.0833333333333 - r2 * (0.00833333333333 - r2 * 0.00396825396825));
}
fn digamma_f(x: f32) -> f32 {
  if (is_nan(x)) { return x; }
  if (x == 0.0) { return select(-sp_inf(), sp_inf(), (bitcast<u32>(x) & 0x80000000u) != 0u); }
  if (x == sp_inf()) { return x; }
  if (x > 0.0) { return sp_digamma_pos(x); }
  if (x == floor(x)) { return sp_nan(); }
  return sp_digamma_pos(1.0 - x) - pi_cotpi_f(x);
}
fn nextafter_f(a: f32, b: f32) -> f32 {
  if (is_nan(a) || is_nan(b)) { return a + b; }
  if (a == b) { return b; }
  if (a == 0.0) { return select(bitcast<f32>(0x80000001u), bitcast<f32>(1u), b > 0.0); }
  let u = bitcast<u32>(a);
  return bitcast<f32>(select(u - 1u, u + 1u, (b > a) == (a > 0.0)));
}
fn hypot_f(a: f32, b: f32) -> f32 {
  let x = abs(a); let y = abs(b);
  if (x == sp_inf() || y == sp_inf()) { return sp_inf(); }
  if (is_nan(a) || is_nan(b)) { return a + b; }
  let m = max(x, y);
  if (m == 0.0) { return 0.0; }
  let p = x / m; let q = y / m;
  return m * sqrt(p * p + q * q);
}
fn copysign_f(a: f32, b: f32) -> f32 {
  return bitcast<f32>((bitcast<u32>(a) & 0x7fffffffu) | (bitcast<u32>(b) & 0x80000000u));
}
fn fmax_f(a: f32, b: f32) -> f32 { return select(select(max(a, b), a, is_nan(b)), b, is_nan(a)); }
fn fmin_f(a: f32, b: f32) -> f32 { return select(select(min(a, b), a, is_nan(b)), b, is_nan(a)); }
fn sp_inv_pow(b: f32, s: i32) -> f32 { var p = 1.0; for (var i = 0; i < s; i = i + 1) { p = p * b; } return 1.0 / p; }
fn sp_hurwitz_zeta(s: i32, q: f32) -> f32 {
  if (q <= 0.0 && q == floor(q)) { return sp_inf(); }
  var a = q; var acc = 0.0;
  loop { if (a >= 10.0) { break; } acc = acc + sp_inv_pow(a, s); a = a + 1.0; }
  let fs = f32(s);
  let inv_as = sp_inv_pow(a, s);
  acc = acc + a * inv_as / (fs - 1.0) + 0.5 * inv_as;
  let inv_a2 = 1.0 / (a * a);
  var t = fs * inv_as / a;  // s(s+1)...(s+2j-2) / a^(s+2j-1), j = 1
  acc = acc + t / 12.0;
  t = t * (fs + 1.0) * (fs + 2.0) * inv_a2; acc = acc - t / 720.0;
  t = t * (fs + 3.0) * (fs + 4.0) * inv_a2; acc = acc + t / 30240.0;
  t = t * (fs + 5.0) * (fs + 6.0) * inv_a2; acc = acc - t / 1209600.0;
  t = t * (fs + 7.0) * (fs + 8.0) * inv_a2; acc = acc + t / 47900160.0;
  return acc;
}
fn polygamma_f(nf: f32, x: f32) -> f32 {
  let n = i32(nf);
  if (n == 0) { return digamma_f(x); }
  if (n == 1) { return trigamma_f(x); }
  if (is_nan(x) || x == sp_inf()) { return sp_nan(); }  // the CPU's zeta gives NaN at +inf
  var fact = 1.0; for (var i = 2; i <= n; i = i + 1) { fact = fact * f32(i); }
  let sign = select(-1.0, 1.0, (n & 1) == 1);
  return sign * fact * sp_hurwitz_zeta(n + 1, x);
}
// trigamma by PyTorch's CPU formula (reflection below 0.5, six steps, asymptotic series), but with
// sin(pi x) from sinpi_f: the CPU's float32 kernel takes sin of the rounded product pi * x, whose error
// (|x| 2^-24 absolute) is all of sin near an integer -- up to 100% off near the poles against float64,
// and a rounding that drivers contract into an fma differently (9% apart on the H100, run 12).
fn trigamma_f(x0: f32) -> f32 {
  var x = x0; var sign = 1.0; var result = 0.0;
  if (x < 0.5) { sign = -1.0; let s = sinpi_f(x); result = result - (SP_PI * SP_PI) / (s * s); x = 1.0 - x; }
  for (var i = 0; i < 6; i = i + 1) { result = result + 1.0 / (x * x); x = x + 1.0; }
  let ixx = 1.0 / (x * x);
  result = result + (1.0 + 1.0 / (2.0 * x) + ixx * (1.0 / 6.0 - ixx * (1.0 / 30.0 - ixx * (1.0 / 42.0)))) / x;
  return sign * result;
}
"""
