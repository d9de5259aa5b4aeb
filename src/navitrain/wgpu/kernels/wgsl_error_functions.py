"""WGSL erfcx (the scaled complementary error function e^(x^2) erfc(x)) and ndtri (the inverse of the
normal distribution function) in f32; log_ndtr reaches the GPU through PyTorch's decomposition, which
is written with erfcx.

- erfcx, 0 <= x < 4: Taylor polynomials around c = 0.25, 0.75, ..., 3.75 (|x - c| <= 0.25). erfcx solves
  y' = 2 x y - 2/sqrt(pi), so with y = sum a_n (x - c)^n: a_1 = 2c a_0 - 2/sqrt(pi) and
  (n+1) a_{n+1} = 2c a_n + 2 a_{n-1}; a_0 = e^(c^2) erfc(c) in float64. Thirteen terms leave < 1e-10.
  x >= 4: Laplace's continued fraction erfcx(x) = 1/(sqrt(pi) (x + (1/2)/(x + 1/(x + (3/2)/(x + ...)))))
  sixteen levels deep (< 1e-12 at x = 4). x < 0: erfcx(x) = 2 e^(x^2) - erfcx(-x), with x^2 split as
  xh^2 + (x - xh)(x + xh), xh = x rounded to 1/256, so e^(x^2) keeps float32's relative precision.
- ndtri(p): M. Giles' erfinv polynomials (wgsl_special.erfinv_f) with w = -log(4 p (1 - p)) from p itself
  (2p - 1 would lose p's digits), for 0.05 <= p <= 0.5 (and 1 - p, exact there, for p > 0.5). Below,
  Newton's method on log Phi(z) = log p, where log Phi(z) = log(erfcx(t) / 2) - t^2 and
  Phi'/Phi = sqrt(2/pi) / erfcx(t), t = -z/sqrt(2): it keeps relative precision down to the smallest
  float32, starting from z = -sqrt(u - log(2 pi u)), u = -2 log p (the tail's leading asymptotics).
"""
from __future__ import annotations

import math
from functools import lru_cache

ERFCX_PIECES = 8          # centers 0.25, 0.75, ..., 3.75
ERFCX_TERMS = 13
ERFCX_CF_DEPTH = 16


@lru_cache(maxsize=None)
def erfcx_taylor() -> tuple[tuple[float, ...], ...]:
    out = []
    for i in range(ERFCX_PIECES):
        c = 0.25 + 0.5 * i
        a = [math.exp(c * c) * math.erfc(c)]
        a.append(2 * c * a[0] - 2 / math.sqrt(math.pi))
        for n in range(1, ERFCX_TERMS - 1):
            a.append((2 * c * a[n] + 2 * a[n - 1]) / (n + 1))
        out.append(tuple(a))
    return tuple(out)


def helpers() -> str:
    table = ",\n  ".join(", ".join(repr(v) for v in piece) for piece in erfcx_taylor())
    return (F32.replace("ERFCX_TABLE", table).replace("ERFCX_N", str(ERFCX_PIECES * ERFCX_TERMS))
            .replace("ERFCX_TERMS", str(ERFCX_TERMS)).replace("ERFCX_CF_DEPTH", f"{ERFCX_CF_DEPTH}.0"))


F32 = """
const EF_TAYLOR = array<f32, ERFCX_N>(
  ERFCX_TABLE);
fn ef_inf() -> f32 { return bitcast<f32>(0x7f800000u); }
// erfcx(x) for x >= 0
fn ef_erfcx_pos(x: f32) -> f32 {
  if (x == ef_inf()) { return 0.0; }
  if (x < 4.0) {
    let piece = min(i32(x * 2.0), 7);
    let t = x - (0.25 + 0.5 * f32(piece));
    let base = piece * ERFCX_TERMS;
    var acc = EF_TAYLOR[base + ERFCX_TERMS - 1];
    for (var k = ERFCX_TERMS - 2; k >= 0; k = k - 1) { acc = acc * t + EF_TAYLOR[base + k]; }
    return acc;
  }
  var t = x;
  for (var k = ERFCX_CF_DEPTH; k > 0.0; k = k - 1.0) { t = x + 0.5 * k / t; }
  return 1.0 / (1.7724538509055159 * t);
}
// e^(x^2) with x^2 = xh^2 + (x - xh)(x + xh) (xh^2 exact), so the exponent has no rounding error
fn ef_exp_square(x: f32) -> f32 {
  let xh = round(x * 256.0) / 256.0;
  return exp(xh * xh) * exp((x - xh) * (x + xh));
}
fn erfcx_f(x: f32) -> f32 {
  if (is_nan(x)) { return x; }
  if (x >= 0.0) { return ef_erfcx_pos(x); }
  if (x < -9.5) { return ef_inf(); }  // 2 e^(x^2) overflows float32 from -9.4 on
  return 2.0 * ef_exp_square(x) - ef_erfcx_pos(-x);
}
// ndtri(p) for 0 < p <= 0.5
fn ef_ndtri_lower(p: f32) -> f32 {
  if (p >= 0.05) {
    // erfinv(2p - 1) by Giles' polynomials (kernels/wgsl_special.py) in w = -log(1 - (2p-1)^2) = -log(4 p (1 - p))
    return 1.4142135623730951 * giles_erfinv_poly(-log(4.0 * p * (1.0 - p))) * (2.0 * p - 1.0);
  }
  // a subnormal p from its bits (p = m 2^-149): drivers may flush subnormal operands of log to zero
  let bits = bitcast<u32>(p);
  let log_p = select(log(p), log(f32(bits)) - 103.27892990343184, (bits & 0x7f800000u) == 0u);
  let u = -2.0 * log_p;
  var z = -sqrt(u - log(6.283185307179586 * u));
  for (var i = 0; i < 4; i = i + 1) {
    let t = -z * 0.7071067811865476;
    let e = ef_erfcx_pos(t);
    let log_phi = log(0.5 * e) - t * t;
    z = z - (log_phi - log_p) * e * 1.2533141373155003;  // / sqrt(2/pi)
  }
  return z;
}
fn ndtri_f(p: f32) -> f32 {
  if (is_nan(p) || p < 0.0 || p > 1.0) { return bitcast<f32>(0x7fc00000u); }
  if (p == 0.0) { return -ef_inf(); }
  if (p == 1.0) { return ef_inf(); }
  if (p > 0.5) { return -ef_ndtri_lower(1.0 - p); }
  return ef_ndtri_lower(p);
}
"""
