"""WGSL Hurwitz zeta and the regularized incomplete gamma functions (igamma = P, igammac = Q) in f32.

- zeta(s, q) = sum_k (q + k)^-s: summed directly until q + k >= max(9, s) (or until the rest, bounded by
  t (1 + a/(s-1)) for the last term t, is below 1e-9 of the sum), then the Euler-Maclaurin tail
  a^(1-s)/(s-1) + a^-s/2 + sum_j B_2j/(2j)! s(s+1)...(s+2j-2) a^(-s-2j+1) with seven Bernoulli terms;
  from a >= s successive terms shrink by ~(2 pi)^-2. PyTorch's special cases: s = 1 gives inf, s < 1 NaN,
  q a non-positive integer inf, q < 0 with a non-integer s NaN (negative bases: integer powers with their
  sign). At most 65536 direct terms (q below -65536): beyond, NaN rather than a partial sum.
- P(a, x) by its series x^a e^-x / Gamma(a+1) sum_n x^n / ((a+1)...(a+n)) for x < a + 1, Q(a, x) by
  Legendre's continued fraction (modified Lentz) otherwise, the other as 1 - it. The prefactor
  x^a e^-x / Gamma(a+1) for a >= 10 is exp(-a (r - log(1+r))) / sqrt(2 pi a) / e^(Stirling correction),
  r = (x-a)/a (r - log(1+r) by its series for |r| < 1/4), so x near a large a does not cancel large
  logarithms in float32. At most 2000 series or fraction terms (enough for a up to ~1e5): where that does
  not converge the result is NaN rather than a wrong value. PyTorch's special cases for 0 and inf.
"""
from __future__ import annotations

F32 = """
fn gf_nan() -> f32 { return bitcast<f32>(0x7fc00000u); }
fn gf_inf() -> f32 { return bitcast<f32>(0x7f800000u); }
// a^-s; a < 0 only with an integer s (the sign of the integer power)
fn gf_pow_neg(a: f32, s: f32) -> f32 {
  let m = exp2(-s * log2(abs(a)));
  let odd = s - 2.0 * floor(0.5 * s) == 1.0;
  return select(m, -m, a < 0.0 && odd);
}
fn zeta_f(s: f32, q: f32) -> f32 {
  if (is_nan(s) || is_nan(q)) { return s + q; }
  if (s == 1.0) { return gf_inf(); }
  if (s < 1.0) { return gf_nan(); }
  if (q <= 0.0) {
    if (q == floor(q)) { return gf_inf(); }
    if (s != floor(s)) { return gf_nan(); }
  }
  // as the CPU's float64 evaluation comes out: q^-inf is inf below 1, 1 at 1, and NaN beyond (its
  // Euler-Maclaurin tail meets inf * 0); q = +inf is NaN likewise
  if (s == gf_inf()) { return select(select(gf_nan(), 1.0, q == 1.0), gf_inf(), q < 1.0); }
  if (q == gf_inf()) { return gf_nan(); }
  let direct_until = max(9.0, s);
  var a = q;
  var sum = 0.0;
  var steps = 0;
  loop {
    if (a >= direct_until) { break; }
    if (steps >= 65536) { return gf_nan(); }
    let t = gf_pow_neg(a, s);
    sum = sum + t;
    a = a + 1.0;
    steps = steps + 1;
    if (a > 0.0 && abs(t) * (1.0 + a / (s - 1.0)) <= abs(sum) * 1e-9) { return sum; }
  }
  let inv_as = gf_pow_neg(a, s);
  var acc = sum + a * inv_as / (s - 1.0) + 0.5 * inv_as;
  let inv_a2 = 1.0 / (a * a);
  var t = s * inv_as / a;  // s (s+1) ... (s+2j-2) a^(-s-2j+1), j = 1
  acc = acc + t / 12.0;
  t = t * (s + 1.0) * (s + 2.0) * inv_a2; acc = acc - t / 720.0;
  t = t * (s + 3.0) * (s + 4.0) * inv_a2; acc = acc + t / 30240.0;
  t = t * (s + 5.0) * (s + 6.0) * inv_a2; acc = acc - t / 1209600.0;
  t = t * (s + 7.0) * (s + 8.0) * inv_a2; acc = acc + t / 47900160.0;
  t = t * (s + 9.0) * (s + 10.0) * inv_a2; acc = acc - t * 5.284190138687493e-10;
  t = t * (s + 11.0) * (s + 12.0) * inv_a2; acc = acc + t * 1.0831671406261942e-11;
  return acc;
}
// x^a e^-x / Gamma(a + 1), a > 0, x > 0 finite
fn gf_prefactor(a: f32, x: f32) -> f32 {
  if (a < 10.0) { return exp(a * log(x) - x - lgamma_f(a + 1.0)); }
  let r = (x - a) / a;
  var phi: f32;  // r - log(1 + r)
  if (abs(r) < 0.25) {
    var rn = r * r; phi = 0.0;
    for (var n = 2.0; n < 16.0; n = n + 1.0) {
      phi = phi + select(-1.0, 1.0, n - 2.0 * floor(0.5 * n) == 0.0) * rn / n;
      rn = rn * r;
    }
  } else {
    phi = r - log1p_f(r);
  }
  let ia = 1.0 / a;
  let corr = ia * (1.0 / 12.0 - ia * ia * (1.0 / 360.0 - ia * ia / 1260.0));
  return exp(-a * phi - corr) / sqrt(6.283185307179586 * a);
}
// vec2(P, Q) for a > 0, x > 0 finite
fn gf_incomplete(a: f32, x: f32) -> vec2<f32> {
  let d = gf_prefactor(a, x);
  if (x < a + 1.0) {
    var term = 1.0; var sum = 1.0; var converged = false;
    for (var n = 1.0; n < 2000.0; n = n + 1.0) {
      term = term * x / (a + n);
      sum = sum + term;
      if (term <= sum * 1e-8) { converged = true; break; }
    }
    if (!converged) { return vec2<f32>(gf_nan(), gf_nan()); }
    let p = d * sum;
    return vec2<f32>(p, 1.0 - p);
  }
  // Q = a d / (x + 1 - a - 1 (1 - a) / (x + 3 - a - 2 (2 - a) / (x + 5 - a - ...))), modified Lentz
  let tiny = 1e-30;
  var b = x + 1.0 - a;
  var c = 1.0 / tiny;
  var dd = 1.0 / b;
  var h = dd;
  var converged = false;
  for (var i = 1.0; i < 2000.0; i = i + 1.0) {
    let an = -i * (i - a);
    b = b + 2.0;
    dd = an * dd + b; if (abs(dd) < tiny) { dd = tiny; }
    c = b + an / c; if (abs(c) < tiny) { c = tiny; }
    dd = 1.0 / dd;
    let delta = dd * c;
    h = h * delta;
    if (abs(delta - 1.0) < 1e-7) { converged = true; break; }
  }
  if (!converged) { return vec2<f32>(gf_nan(), gf_nan()); }
  let q = a * d * h;
  return vec2<f32>(1.0 - q, q);
}
fn igamma_f(a: f32, x: f32) -> f32 {
  if (is_nan(a) || is_nan(x)) { return a + x; }
  if (x < 0.0 || a < 0.0) { return gf_nan(); }
  if (a == 0.0) { return select(gf_nan(), 1.0, x > 0.0); }
  if (x == 0.0) { return 0.0; }
  if (is_inf(a)) { return select(0.0, gf_nan(), is_inf(x)); }
  if (is_inf(x)) { return 1.0; }
  return gf_incomplete(a, x).x;
}
fn igammac_f(a: f32, x: f32) -> f32 {
  if (is_nan(a) || is_nan(x)) { return a + x; }
  if (x < 0.0 || a < 0.0) { return gf_nan(); }
  if (a == 0.0) { return select(gf_nan(), 0.0, x > 0.0); }
  if (x == 0.0) { return 1.0; }
  if (is_inf(a)) { return select(1.0, gf_nan(), is_inf(x)); }
  if (is_inf(x)) { return 0.0; }
  return gf_incomplete(a, x).y;
}
"""


def helpers() -> str:
    return F32
