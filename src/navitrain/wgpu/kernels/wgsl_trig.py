"""WGSL sin, cos, tan, sinpi, cospi and tanpi in f32 that never call the driver's sin/cos/tan.

Vulkan bounds sin/cos only to an absolute 2^-11 on [-pi, pi] (nothing outside it) and tan to sin/cos's
accuracy. The H100's Vulkan driver (580.159) was measured 1.0e-5 absolute off at |x| in [3.2, 100),
1.2e-3 in [1e3, 1e4) (position x frequency of sinusoidal and rotary embeddings), 0.14 in [1e5, 1e6) and
garbage beyond, tan 0.13 off next to a pole and inf beyond 102900, polygamma(1, x) 9% off near negative
integers (run 12); lavapipe happened to be accurate, so tests did not see it. Hence these functions.

Reduction: x = q pi/2 + r, |r| <= pi/4 (a hair more), r carried as hi + lo (lo about an ulp of hi).
- |x| <= 102900, Cody-Waite: k = round(x 2/pi) has |k| < 2^16 and pi/2 = P1 + ... + P6 with P1..P4 of 8
  significant bits and P5 of 6, so every k * Pi but the last is exact; x - k P1 - k P2 is exact (its
  grid, min(ulp(x), 2^-19), holds it in 24 bits), the later subtractions keep their rounding errors
  (TwoSum), and what is left is the rounding of k P6 and P6's own, < 3e-17 absolute. The f32 closest to
  a multiple of pi/2 below 102900 is 252.898..., 4.2e-9 away, so r keeps ~2^-27 of relative accuracy.
  Compilers fold (a - b) - a to -b and reassociate sums unless told otherwise (lavapipe did: TwoSum's
  error came out 0, sin/cos 3.3 ulp off), so tr_opaque hides the TwoSum terms from the algebra.
- beyond, Payne-Hanek in u32 arithmetic: x = m 2^e (m < 2^24), and x 2/pi mod 4 is the low 96 bits of
  m times a 96-bit window of 2/pi's bits starting at bit e - 1 (earlier bits give multiples of 4, later
  ones < 2^-70 in all). The top two bits (rounded) are q, the rest r / (pi/2), whose top 32 bits times
  pi/2 (32-bit fixed point) give r to 2^-30 relative, cut into 24-bit hi and lo. The f32 closest to a
  multiple of pi/2 anywhere is 16367173 * 2^72, 1.6e-9 away (from 2/pi's continued fractions per
  exponent), far above the 2^-70. lavapipe runs both sides of the branch in every lane: sin of 16M
  elements took 570 ms there against the driver's 280 (|x| < 1e3); a GPU skips it unless a warp holds a
  large |x|.
sin(r), cos(r) for |r| <= pi/4: odd/even minimax polynomials (relative error 6e-9 and 4e-9 in exact
arithmetic) on hi, plus lo times the derivative; cos's leading 1 - hh^2 / 2 (hh: hi cut to a multiple of
2^-11) is exact, so each result is one rounding of a sum plus small terms. sin = +-sin(r) or +-cos(r) by q;
tan = sin(r) / cos(r) or -cos(r) / sin(r) from those sums, the quotient corrected by its residual (exact
products of 12-bit halves), a Taylor series for |tan| < 2^-6. NaN and +-inf give NaN, +-0 keeps its sign
(cos(+-0) = 1), as the CPU. Measured on lavapipe against float64, 400k random x per range up to 3.4e38
(benchmarks/trig_accuracy.py): sin and cos <= 0.77 ulp, tan <= 1.11 ulp in every range, the worst cases
for the reduction included (tests/wgpu/test_trig_full_range.py).

- sinpi/cospi/tanpi (x): n = round(x), r = x - n exactly (Sterbenz; |x| >= 2^23 are integers, r = 0),
  |r| <= 1/2, then sin(pi r) on |r| <= 1/4 and cos(pi r) = sin(pi (1/2 - |r|)) beyond (1/2 - |r| is exact),
  so values near the zeros keep their relative accuracy; the sign from n's parity.

Polynomials: weighted least squares on Chebyshev nodes, reweighted (Lawson) towards minimax relative
error, coefficients rounded to f32 (the recipe is in the commit message that added this file). The
constants (2/pi's bits, pi/2 in 64-bit fixed point and in pieces) were computed from Machin's formula in
integers.
"""
from __future__ import annotations

F32 = """
const TR_PIO2_1: f32 = 1.5703125;                  // 201 / 2^7
const TR_PIO2_2: f32 = 0.0004825592041015625;      // 253 / 2^19
const TR_PIO2_3: f32 = 1.26659870147705078125e-06; // 170 / 2^27
const TR_PIO2_4: f32 = 9.895302355289459228515625e-10; // 136 / 2^37
const TR_PIO2_5: f32 = 2.5579538487363607e-12;     // 45 / 2^44
const TR_PIO2_6: f32 = 5.390302953474238e-15;      // the rest, rounded: pi/2 to within 1e-22
// 2/pi's bits after the binary point, 32 a word: word w (1..7) holds bits 32w - 31 .. 32w, word 0 (the
// integer part) and 8 are 0. Picked by selects: llvmpipe copied an indexed const array per thread, 4x slower.
fn tr_two_over_pi_word(w: u32) -> u32 {
  var v = select(0u, 0xa2f9836eu, w == 1u);
  v = select(v, 0x4e441529u, w == 2u);
  v = select(v, 0xfc2757d1u, w == 3u);
  v = select(v, 0xf534ddc0u, w == 4u);
  v = select(v, 0xdb629599u, w == 5u);
  v = select(v, 0x3c439041u, w == 6u);
  return select(v, 0xfe5163abu, w == 7u);
}
fn tr_nan() -> f32 { return bitcast<f32>(0x7fc00000u); }
// sin(r) = r + r z S(z), cos(r) = 1 - z / 2 + z^2 C(z), z = r^2, |r| <= pi/4
fn tr_sin_tail(z: f32) -> f32 {
  return -0.16666650772094727 + z * (0.008332016877830029 + z * -0.00019501869974192232);
}
fn tr_cos_tail(z: f32) -> f32 {
  return 0.04166661202907562 + z * (-0.0013886529486626387 + z * 2.4372719053644687e-05);
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
// x = q pi/2 + hi + lo
struct TrReduced { q: u32, hi: f32, lo: f32 }
// v, hidden from the compiler's algebra: drivers fold a - (a - b) to b and reassociate sums (lavapipe
// did both), which would drop the rounding errors kept below. x is never that NaN here (NaN returned
// earlier), which the compiler cannot know; a test it has seen (is_nan) it folded away.
fn tr_opaque(v: f32, x: f32) -> f32 { return select(v, x, bitcast<u32>(x) == 0x7fc00001u); }
// (a - b rounded, its rounding error): TwoSum of a and -b
fn tr_two_diff(a: f32, b: f32, x: f32) -> vec2<f32> {
  let s = tr_opaque(a - b, x);
  let bv = tr_opaque(s - a, x);
  return vec2<f32>(s, (a - (s - bv)) - (b + bv));
}
fn tr_reduce_cody_waite(x: f32) -> TrReduced {  // |x| <= 102900
  let k = round(x * 0.6366197723675814);
  let t = (x - k * TR_PIO2_1) - k * TR_PIO2_2;  // exact
  let d3 = tr_two_diff(t, k * TR_PIO2_3, x);
  let d4 = tr_two_diff(d3.x, k * TR_PIO2_4, x);
  let d5 = tr_two_diff(d4.x, k * TR_PIO2_5, x);
  let d6 = tr_two_diff(d5.x, k * TR_PIO2_6, x);
  return TrReduced(u32(i32(k)) & 3u, d6.x, (d3.y + d4.y) + (d5.y + d6.y));
}
// the 64-bit product of two u32 as (high word, low word)
fn tr_mul_wide(a: u32, b: u32) -> vec2<u32> {
  let a0 = a & 0xffffu; let a1 = a >> 16u; let b0 = b & 0xffffu; let b1 = b >> 16u;
  let p00 = a0 * b0; let p01 = a0 * b1; let p10 = a1 * b0;
  let mid = (p00 >> 16u) + (p01 & 0xffffu) + (p10 & 0xffffu);
  return vec2<u32>(a1 * b1 + (p01 >> 16u) + (p10 >> 16u) + (mid >> 16u), (mid << 16u) | (p00 & 0xffffu));
}
// the high word of (hi, lo) << n, n < 32 (WGSL takes shift counts mod 32: n = 0 is its own case)
fn tr_shl_hi(hi: u32, lo: u32, n: u32) -> u32 { return select((hi << n) | (lo >> ((32u - n) & 31u)), hi, n == 0u); }
fn tr_pow2(n: i32) -> f32 { return bitcast<f32>(u32(n + 127) << 23u); }  // -126 <= n <= 127
fn tr_reduce_payne_hanek(ax: f32) -> TrReduced {  // ax = |x|, 102900 < ax < inf
  let bits = bitcast<u32>(ax);
  let m = (bits & 0x7fffffu) | 0x800000u;
  let e = i32(bits >> 23u) - 150;  // ax = m 2^e, -7 <= e <= 104
  // 96 bits of 2/pi from bit e - 1, whose weight in ax 2/pi is 2: the low 96 bits of m * window are
  // ax 2/pi mod 4 in units of 2^-94
  let w = u32(e + 30) >> 5u;  // the word holding bit e - 1
  let p = u32(e + 30) & 31u;
  let t0 = tr_two_over_pi_word(w); let t1 = tr_two_over_pi_word(w + 1u);
  let t2 = tr_two_over_pi_word(w + 2u); let t3 = tr_two_over_pi_word(w + 3u);
  let p1 = tr_mul_wide(m, tr_shl_hi(t1, t2, p));
  let p2 = tr_mul_wide(m, tr_shl_hi(t2, t3, p));
  let n2 = p2.y;
  let n1 = p1.y + p2.x;
  let n0 = m * tr_shl_hi(t0, t1, p) + p1.x + select(0u, 1u, n1 < p2.x);
  let q = (n0 + 0x20000000u) >> 30u;  // the nearest multiple of pi/2
  let f0 = n0 - (q << 30u);           // remainder, signed: top word in [-2^29, 2^29)
  let neg = (f0 & 0x80000000u) != 0u;
  // |remainder| (two's complement negation across the words; the lowest word only feeds the carry)
  let a1 = select(n1, ~n1 + select(0u, 1u, n2 == 0u), neg);
  let a0 = select(f0, ~f0 + select(0u, 1u, n2 == 0u && n1 == 0u), neg);
  let a2 = select(n2, ~n2 + 1u, neg);
  // its top 32 bits h: leading zero words out (the remainder is >= 2^-31 quarter periods), then bits
  let z0 = a0 == 0u;
  let b0 = select(a0, a1, z0); let b1 = select(a1, a2, z0);
  let z1 = b0 == 0u;
  let c0 = select(b0, b1, z1); let c1 = select(b1, 0u, z1);
  let lz = countLeadingZeros(c0);
  let h = tr_shl_hi(c0, c1, lz);
  let shift = i32(lz) + select(0, 32, z0) + select(0, 32, z1);  // |remainder| = h 2^(-30 - shift) pi/2
  // times pi/2 (2^31 pi/2 truncated to 32 bits): |r| = g 2^(-61 - shift), to 2^-30 relative
  let g = tr_mul_wide(h, 0xc90fdaa2u);
  let lz2 = countLeadingZeros(g.x);  // 0 or 1
  let u0 = tr_shl_hi(g.x, g.y, lz2);
  let u1 = g.y << lz2;
  let scale = -21 - shift - i32(lz2);
  let hi = f32(u0 >> 8u) * tr_pow2(scale);  // 24 bits each: exact
  let lo = f32(((u0 & 0xffu) << 16u) | (u1 >> 16u)) * tr_pow2(scale - 24);
  return TrReduced(q & 3u, select(hi, -hi, neg), select(lo, -lo, neg));
}
// x finite
fn tr_reduce(x: f32) -> TrReduced {
  if (abs(x) <= 102900.0) { return tr_reduce_cody_waite(x); }
  let rd = tr_reduce_payne_hanek(abs(x));
  if (x > 0.0) { return rd; }
  return TrReduced((4u - rd.q) & 3u, -rd.hi, -rd.lo);  // -x = -q pi/2 - r
}
// sin(r) = s_hi + s_lo and cos(r) = c_hi + c_lo (vec4(s_hi, s_lo, c_hi, c_lo)) of r = hi + lo, |r| <= pi/4
// and a hair; lo enters through the derivative. c_hi = 1 - hh^2 / 2 with hi = hh + hl cut at 2^-11 is
// exact, so cos's rounding is that of one sum.
fn tr_sincos_pairs(hi: f32, lo: f32) -> vec4<f32> {
  let z = hi * hi;
  let hh = floor(hi * 2048.0) * 0.00048828125;
  let hl = hi - hh;
  let s_lo = (hi * z) * tr_sin_tail(z) + lo * (1.0 - 0.5 * z);
  let c_lo = (z * z * tr_cos_tail(z) - (hh * hl + 0.5 * hl * hl)) - lo * hi;
  return vec4<f32>(hi, s_lo, 1.0 - 0.5 * hh * hh, c_lo);
}
// vec2(sin(x), cos(x)) of a finite x
fn tr_sincos(x: f32) -> vec2<f32> {
  let rd = tr_reduce(x);
  let p = tr_sincos_pairs(rd.hi, rd.lo);
  let sc = vec2<f32>(p.x + tr_opaque(p.y, x), p.z + tr_opaque(p.w, x));
  let turned = select(sc, vec2<f32>(sc.y, -sc.x), (rd.q & 1u) == 1u);  // + pi/2
  return select(turned, -turned, (rd.q & 2u) == 2u);                    // + pi
}
fn sincos_f(x: f32) -> vec2<f32> {
  if (is_nan(x) || is_inf(x)) { return vec2<f32>(tr_nan()); }
  if (x == 0.0) { return vec2<f32>(x, 1.0); }
  return tr_sincos(x);
}
fn sin_f(x: f32) -> f32 { return sincos_f(x).x; }
fn cos_f(x: f32) -> f32 { return sincos_f(x).y; }
fn tr_high12(v: f32) -> f32 { return bitcast<f32>(bitcast<u32>(v) & 0xfffff000u); }  // 12 significant bits
// (nh + nl) / (dh + dl) to about half an ulp: the quotient q0 of the rounded sums corrected by the residual
// (nh - q0 dh, exact through 12-bit halves: each product exact, the first difference exact by Sterbenz)
fn tr_div_pairs(nh: f32, nl: f32, dh: f32, dl: f32) -> f32 {
  let d = dh + dl;
  let q0 = (nh + nl) / d;
  let qh = tr_high12(q0); let ql = q0 - qh;
  let dhh = tr_high12(dh); let dhl = dh - dhh;
  let residual = ((((nh - qh * dhh) - qh * dhl) - ql * dhh) - ql * dhl) + (nl - q0 * dl);
  return q0 + residual / d;
}
fn tan_f(x: f32) -> f32 {
  if (is_nan(x) || is_inf(x)) { return tr_nan(); }
  if (x == 0.0) { return x; }
  let rd = tr_reduce(x);
  if ((rd.q & 1u) == 0u && abs(rd.hi) < 0.015625) {  // Taylor (next term < 2^-48 relative): no underflow
    let z = rd.hi * rd.hi;
    return rd.hi + (rd.hi * z * (0.3333333333333333 + z * (0.13333333333333333 + z * 0.05396825396825397))
                    + rd.lo * (1.0 + z));
  }
  let p = tr_sincos_pairs(rd.hi, rd.lo);
  if ((rd.q & 1u) == 0u) { return tr_div_pairs(p.x, p.y, p.z, p.w); }
  return -tr_div_pairs(p.z, p.w, p.x, p.y);
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
