"""WGSL tan, sinpi, cospi and tanpi in f32 that do not depend on the driver's sin/cos/tan.

Vulkan bounds sin/cos only to an absolute 2^-11 on [-pi, pi] and tan to sin/cos's accuracy, so near a
zero of sin or cos (tan's poles, sin(pi x) at integers in the gamma reflections) the driver's relative
error is unbounded: the H100's Vulkan driver gave tan 0.13 off near a pole and polygamma(1, x) 9% off
near negative integers (run 12), where lavapipe happened to be exact enough.

- tan_f: x = k pi/2 + r by Cody-Waite, pi/2 = P1 + ... + P5 with P1..P4 of 8 significant bits, so
  k * Pi is exact for |k| < 2^16 (|x| < ~1.03e5), each subtraction is exact while r is small (Sterbenz;
  contracting a product into an fma changes nothing, the products being exact), and r is off by the
  rounding of k * P5, < 1e-14 at 1e5: r keeps its relative accuracy unless x lies within ~1e-8 of a pole.
  tan(r) = sin(r) / cos(r), |r| <= pi/4, with odd/even minimax polynomials (relative error 3e-9 and
  6e-11 in exact arithmetic) and a correctly rounded division (div_rn); odd k gives -cos(r) / sin(r).
  A few ulp in all: <= 4.2 ulp measured on lavapipe up to 1.03e5, points next to the poles included.
  Beyond |x| = 102900 the products k * Pi would round (r off by ~|x| 2^-24, tan by 1e3 relative near
  poles), so tan_f takes the driver's tan there, as before this file (lavapipe: <= 6e-5 relative up to 1e6,
  5e-4 up to 1e7, no accuracy beyond); a Payne-Hanek reduction (the CPU's) would be the fix. NaN and
  +-inf give NaN, +-0 keeps its sign, as the CPU.
- sinpi/cospi/tanpi (x): n = round(x), r = x - n exactly (Sterbenz; |x| >= 2^23 are integers, r = 0),
  |r| <= 1/2, then sin(pi r) on |r| <= 1/4 and cos(pi r) = sin(pi (1/2 - |r|)) beyond (1/2 - |r| is exact),
  so values near the zeros keep their relative accuracy; the sign from n's parity.

Polynomials: weighted least squares on Chebyshev nodes, reweighted (Lawson) towards minimax relative
error, coefficients rounded to f32 (the recipe is in the commit message that added this file).
"""
from __future__ import annotations

F32 = """
const TR_PIO2_1: f32 = 1.5703125;                  // 201 / 2^7
const TR_PIO2_2: f32 = 0.0004825592041015625;      // 253 / 2^19
const TR_PIO2_3: f32 = 1.26659870147705078125e-06; // 170 / 2^27
const TR_PIO2_4: f32 = 9.895302355289459228515625e-10; // 136 / 2^37
const TR_PIO2_5: f32 = 2.5633440682570896e-12;     // the rest, rounded: pi/2 to within 1e-19
fn tr_nan() -> f32 { return bitcast<f32>(0x7fc00000u); }
// sin(r), cos(r) for |r| <= pi/4
fn tr_sin_poly(r: f32) -> f32 {
  let z = r * r;
  return r + r * z * (-0.16666650772094727 + z * (0.008332016877830029 + z * -0.00019501869974192232));
}
fn tr_cos_poly(r: f32) -> f32 {
  let z = r * r;
  return 1.0 + z * (-0.5 + z * (0.04166661202907562 + z * (-0.0013886529486626387 + z * 2.4372719053644687e-05)));
}
// sin(pi r), cos(pi r) for |r| <= 1/4
fn tr_sinpi_poly(r: f32) -> f32 {
  let z = r * r;
  return r * (3.1415927410125732 + z * (-5.167707920074463 + z * (2.5497612953186035 + z * -0.5890136361122131)));
}
fn tr_cospi_poly(r: f32) -> f32 {
  let z = r * r;
  return 1.0 + z * (-4.934802055358887 + z * (4.058706760406494 + z * (-1.3350359201431274 + z * 0.23126129806041718)));
}
fn tr_is_odd(n: f32) -> bool { return n - 2.0 * floor(0.5 * n) != 0.0; }  // n integral; |n| >= 2^24 is even
fn tan_f(x: f32) -> f32 {
  if (is_nan(x) || is_inf(x)) { return tr_nan(); }
  if (x == 0.0) { return x; }
  if (abs(x) > 102900.0) { return tan(x); }  // k * Pi would round: the driver's own reduction, see above
  let k = round(x * 0.6366197723675814);
  let r = ((((x - k * TR_PIO2_1) - k * TR_PIO2_2) - k * TR_PIO2_3) - k * TR_PIO2_4) - k * TR_PIO2_5;
  let s = tr_sin_poly(r);
  let c = tr_cos_poly(r);
  return select(div_rn(s, c), -div_rn(c, s), tr_is_odd(k));
}
// vec2(sin(pi r), cos(pi r)) of r = x - round(x), |r| <= 1/2, and whether round(x) is odd
fn tr_pi_reduced(x: f32) -> vec2<f32> {
  let r = x - round(x);
  let a = abs(r);
  let s = select(tr_cospi_poly(0.5 - a), tr_sinpi_poly(a), a <= 0.25);
  let c = select(tr_sinpi_poly(0.5 - a), tr_cospi_poly(a), a <= 0.25);
  return vec2<f32>(select(s, -s, r < 0.0), c);
}
fn sinpi_f(x: f32) -> f32 {
  if (is_nan(x) || is_inf(x)) { return tr_nan(); }
  let s = tr_pi_reduced(x).x;
  return select(s, -s, tr_is_odd(round(x)));
}
fn cospi_f(x: f32) -> f32 {
  if (is_nan(x) || is_inf(x)) { return tr_nan(); }
  let c = tr_pi_reduced(x).y;
  return select(c, -c, tr_is_odd(round(x)));
}
fn tanpi_f(x: f32) -> f32 {  // period 1: the parity cancels
  if (is_nan(x) || is_inf(x)) { return tr_nan(); }
  let sc = tr_pi_reduced(x);
  return div_rn(sc.x, sc.y);
}
// pi / tan(pi x) = pi cos(pi x) / sin(pi x), the digamma reflection's term
fn pi_cotpi_f(x: f32) -> f32 {
  let sc = tr_pi_reduced(x);
  return 3.141592653589793 * div_rn(sc.y, sc.x);
}
"""
