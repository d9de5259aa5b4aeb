"""WGSL Bessel and Airy functions in f32: J0, J1, Y0, Y1, I0, I1 (and e^-|x| scaled), K0, K1 (and
e^x scaled), the spherical j0 and Airy Ai. Methods are textbook mathematics, chosen so float32 keeps
its digits (measured against float64 references in tests/wgpu/test_special_functions.py):
- I_nu (nu = 0, 1): the power series sum (x^2/4)^k / (k! (k+nu)!) for |x| <= 30 (positive terms, no
  cancellation), the Hankel asymptotic series e^x / sqrt(2 pi x) sum (-1)^k a_k(nu) / x^k beyond
  (a_k = prod_{j<=k} (4nu^2 - (2j-1)^2) / (k! 8^k); eleven terms reach 1e-9 at x = 30). I_nu(x) for
  x near the overflow threshold is exp(x/2) * (exp(x/2) * ...), so it does not overflow early.
- K_nu (any real nu; 0, 1 and 1/3 for Airy): e^x K_nu(x) = integral_0^inf exp(-2x sinh^2(t/2)) cosh(nu t)
  dt by the trapezoidal rule, which converges geometrically for this integrand (analytic in the strip
  |Im t| < pi/2): step 0.5 gives ~1e-8; for large x the integrand narrows like 1/sqrt(x), so the step
  is 0.6/sqrt(x). Below x = 1e-6 the leading terms of the small-x expansions.
- J0, J1, Y0, Y1 for 1e-3 <= x < 25: Miller's backward recurrence J_{k-1} = (2k/x) J_k - J_{k+1} from
  an order well above x, normalized by 1 = J0 + 2 sum J_2k; Y0 and Y1 from the Neumann series
  Y0 = (2/pi)((ln(x/2) + gamma) J0 - 2 sum (-1)^k J_2k / k) and its derivative (Y1 = -Y0'). Absolute
  error ~1e-7, the size of float32 rounding of the O(1) terms. x >= 25: Hankel's asymptotic P, Q series;
  x < 1e-3: the first terms of the power series.
- spherical j0: sin(x)/x, its Taylor series below 0.5 (as PyTorch defines it).
- Airy Ai: x > 0 from K_1/3: Ai(x) = sqrt(x/3) K_1/3(2/3 x^1.5) / pi; -10 <= x <= 0 from Taylor
  expansions of the ODE y'' = x y around centers 0, -1, ..., -10, whose values Ai(c), Ai'(c) are
  propagated from Ai(0), Ai'(0) in float64 when the helpers are built (airy_centers()); x < -10 the
  asymptotic form with the u_k coefficients (DLMF 9.7.9).
"""
from __future__ import annotations

from functools import lru_cache

AIRY_AI0 = 0.355028053887817239260  # Ai(0) = 1 / (3^(2/3) Gamma(2/3))
AIRY_AIP0 = -0.258819403792806798405  # Ai'(0) = -1 / (3^(1/3) Gamma(1/3))
AIRY_CENTERS = 11  # centers 0, -1, ..., -10


def _taylor_step(y: float, dy: float, c: float, d: float, terms: int = 40) -> tuple[float, float]:
    """y(c + d), y'(c + d) for y'' = x y from y(c), y'(c): Taylor coefficients b_{n+2} (n+2)(n+1) =
    c b_n + b_{n-1}."""
    b = [y, dy, c * y / 2.0]
    for n in range(1, terms):
        b.append((c * b[n] + b[n - 1]) / ((n + 2) * (n + 1)))
    value = sum(bn * d ** n for n, bn in enumerate(b))
    slope = sum(n * bn * d ** (n - 1) for n, bn in enumerate(b) if n)
    return value, slope


@lru_cache(maxsize=None)
def airy_centers() -> tuple[tuple[float, float], ...]:
    """(Ai(c), Ai'(c)) at c = 0, -1, ..., -10, stepped from x = 0 in quarter steps (float64)."""
    y, dy, c = AIRY_AI0, AIRY_AIP0, 0.0
    out = [(y, dy)]
    for _ in range(AIRY_CENTERS - 1):
        for _ in range(4):
            y, dy = _taylor_step(y, dy, c, -0.25)
            c -= 0.25
        out.append((y, dy))
    return tuple(out)


def _f32(v: float) -> str:
    return repr(float(v))


def helpers() -> str:
    centers = airy_centers()
    table = ", ".join(_f32(v) for pair in centers for v in pair)
    return F32.replace("AIRY_TABLE", table).replace("AIRY_N", str(2 * len(centers)))


F32 = """
const BS_PI: f32 = 3.14159265358979;
const BS_EULER: f32 = 0.5772156649015329;
fn bs_nan() -> f32 { return bitcast<f32>(0x7fc00000u); }
fn bs_inf() -> f32 { return bitcast<f32>(0x7f800000u); }
// sinh by its series near 0, where (e^a - e^-a)/2 loses the relative precision the K integrand needs.
fn bs_sinh(a: f32) -> f32 {
  if (abs(a) >= 0.5) { return sinh(a); }
  let a2 = a * a;
  return a * (1.0 + a2 / 6.0 * (1.0 + a2 / 20.0 * (1.0 + a2 / 42.0 * (1.0 + a2 / 72.0))));
}
// a * b = p + e exactly (Dekker): each operand split into its top 12 significant bits and the rest.
fn bs_two_prod(a: f32, b: f32) -> vec2<f32> {
  let p = a * b;
  let ah = bitcast<f32>(bitcast<u32>(a) & 0xfffff000u); let al = a - ah;
  let bh = bitcast<f32>(bitcast<u32>(b) & 0xfffff000u); let bl = b - bh;
  return vec2<f32>(p, ((ah * bh - p) + ah * bl + al * bh) + al * bl);
}
// I_nu(x), 0 <= x <= 30, nu in {0, 1}: the power series.
fn bs_i_series(nu: f32, x: f32) -> f32 {
  let q = 0.25 * x * x;
  var term = select(1.0, 0.5 * x, nu == 1.0);
  var sum = term;
  for (var k = 1.0; k < 120.0; k = k + 1.0) {
    term = term * q / (k * (k + nu));
    sum = sum + term;
    if (term <= sum * 1e-8) { break; }
  }
  return sum;
}
// e^-x I_nu(x), x >= 30: Hankel's asymptotic series.
fn bs_i_asym_scaled(nu: f32, x: f32) -> f32 {
  let mu = 4.0 * nu * nu;
  var term = 1.0; var sum = 1.0;
  for (var k = 1.0; k < 12.0; k = k + 1.0) {
    let odd = 2.0 * k - 1.0;
    term = -term * (mu - odd * odd) / (8.0 * k * x);
    sum = sum + term;
  }
  return sum / (sqrt(2.0 * BS_PI) * sqrt(x));  // 2 pi x would overflow near the top of the range
}
// I_nu(x) for x >= 0 (scaled: times e^-x).
fn bs_i_pos(nu: f32, x: f32, scaled: bool) -> f32 {
  // PyTorch: I_nu(+-inf) is NaN, the scaled functions 0 there
  if (x == bs_inf()) { return select(bs_nan(), 0.0, scaled); }
  if (x > 100.0 && !scaled) { return bs_inf(); }
  if (x <= 30.0) {
    let s = bs_i_series(nu, x);
    return select(s, s * exp(-x), scaled);
  }
  let a = bs_i_asym_scaled(nu, x);
  if (scaled) { return a; }
  let half = exp(0.5 * x);
  return half * (half * a);
}
fn bessel_i0_f(x: f32) -> f32 { return keep_nan(x, bs_i_pos(0.0, abs(x), false)); }
fn bessel_i0e_f(x: f32) -> f32 { return keep_nan(x, bs_i_pos(0.0, abs(x), true)); }
fn bessel_i1_f(x: f32) -> f32 { return keep_nan(x, sign(x) * bs_i_pos(1.0, abs(x), false)); }
fn bessel_i1e_f(x: f32) -> f32 { return keep_nan(x, sign(x) * bs_i_pos(1.0, abs(x), true)); }

// e^x K_nu(x), x > 0, by the trapezoidal rule on integral_0^inf exp(-2x sinh^2(t/2)) cosh(nu t) dt.
fn bs_k_scaled(nu: f32, x: f32) -> f32 {
  let h = min(0.5, 0.6 / sqrt(x));
  var sum = 0.5;
  for (var k = 1.0; k < 400.0; k = k + 1.0) {
    let t = k * h;
    let s = bs_sinh(0.5 * t);
    let f = exp(-2.0 * x * s * s) * cosh(nu * t);
    sum = sum + f;
    if (f <= sum * 1e-9) { break; }
  }
  return sum * h;
}
// K_nu(x) (scaled: times e^x) for nu in {0, 1}: NaN below 0, inf at 0, 0 at inf.
fn bs_k(nu: f32, x: f32, scaled: bool) -> f32 {
  if (is_nan(x) || x < 0.0) { return bs_nan(); }
  if (x == 0.0) { return bs_inf(); }
  if (x == bs_inf()) { return 0.0; }
  if (x < 1e-6) {
    let l = log(0.5 * x) + BS_EULER;
    let k = select(-l, 1.0 / x, nu == 1.0);
    return select(k, k * exp(x), scaled);
  }
  let ks = bs_k_scaled(nu, x);
  return select(ks * exp(-x), ks, scaled);
}
fn bessel_k0_f(x: f32) -> f32 { return bs_k(0.0, x, false); }
fn bessel_k1_f(x: f32) -> f32 { return bs_k(1.0, x, false); }
fn bessel_k0e_f(x: f32) -> f32 { return bs_k(0.0, x, true); }
fn bessel_k1e_f(x: f32) -> f32 { return bs_k(1.0, x, true); }

// J0, J1, Y0, Y1 of x > 0 as vec4(J0, J1, Y0, Y1).
fn bs_jy(x: f32) -> vec4<f32> {
  if (x < 1e-3) {
    let l = log(0.5 * x) + BS_EULER;
    let j0 = 1.0 - 0.25 * x * x;
    return vec4<f32>(j0, 0.5 * x * (1.0 - 0.125 * x * x), (2.0 / BS_PI) * (l * j0 + 0.25 * x * x),
                     -2.0 / (BS_PI * x) + (x / BS_PI) * (l - 0.5));
  }
  if (x >= 25.0) {
    // Hankel: J_nu = sqrt(2/(pi x)) (P cos(chi) - Q sin(chi)), Y_nu = sqrt(2/(pi x)) (P sin(chi) + Q cos(chi)),
    // chi = x - (nu/2 + 1/4) pi; cos/sin of x itself (exact) rotated by the constant phase.
    let amp = sqrt(2.0 / (BS_PI * x));
    let sc = sincos_f(x); let cx = sc.y; let sx = sc.x;  // wgsl_trig: a driver's are far off at large x
    var r = vec4<f32>(0.0);
    for (var nu = 0; nu < 2; nu = nu + 1) {
      let mu = 4.0 * f32(nu * nu);
      var term = 1.0; var p = 1.0; var q = 0.0;
      for (var k = 1; k < 12; k = k + 1) {
        let odd = 2.0 * f32(k) - 1.0;
        term = term * (mu - odd * odd) / (8.0 * f32(k) * x);
        // a_k / x^k enters P (k even) and Q (k odd) with signs + - + - by pairs
        let s = select(-1.0, 1.0, ((k / 2) & 1) == 0);
        if ((k & 1) == 1) { q = q + s * term; } else { p = p + s * term; }
      }
      // cos(x - phi), sin(x - phi) with phi = pi/4 (nu = 0) or 3 pi/4 (nu = 1)
      let c4 = 0.7071067811865476;
      var cc: f32; var ss: f32;
      if (nu == 0) { cc = c4 * (cx + sx); ss = c4 * (sx - cx); } else { cc = c4 * (sx - cx); ss = -c4 * (cx + sx); }
      r[nu] = amp * (p * cc - q * ss);
      r[nu + 2] = amp * (p * ss + q * cc);
    }
    return r;
  }
  // Miller: backward recurrence from an even order n_start well above x, rescaled to stay finite.
  let n_start = 2 * i32(0.5 * (x + 12.0 + 3.0 * pow(x, 1.0 / 3.0))) + 2;
  var j_next = 0.0;     // J_{k+1}
  var j = 1e-30;        // J_k, k = n_start
  var j_prev2 = 0.0;    // J_{k+2}, for the Y1 sum
  var norm = 0.0; var s0 = 0.0; var s1 = 0.0;
  for (var k = n_start; k > 0; k = k - 1) {
    let jm = (2.0 * f32(k) / x) * j - j_next;  // J_{k-1}
    j_prev2 = j_next; j_next = j; j = jm;
    let m = k - 1;
    if (m > 0 && (m & 1) == 0) {
      let half = m / 2;
      let sgn = select(-1.0, 1.0, (half & 1) == 0);
      norm = norm + 2.0 * j;
      s0 = s0 + sgn * j / f32(half);
    }
    if (m > 0 && (m & 1) == 1) {
      // m = 2h - 1: term (-1)^h (J_{2h-1} - J_{2h+1}) / h
      let h = (m + 1) / 2;
      let sgn = select(-1.0, 1.0, (h & 1) == 0);
      s1 = s1 + sgn * (j - j_prev2) / f32(h);
    }
    if (abs(j) > 1e15) {
      j = j * 1e-15; j_next = j_next * 1e-15; j_prev2 = j_prev2 * 1e-15;
      norm = norm * 1e-15; s0 = s0 * 1e-15; s1 = s1 * 1e-15;
    }
  }
  norm = norm + j;
  let j0 = j / norm; let j1 = j_next / norm;
  let l = log(0.5 * x) + BS_EULER;
  let y0 = (2.0 / BS_PI) * (l * j0 - 2.0 * s0 / norm);
  let y1 = (2.0 / BS_PI) * (l * j1 - j0 / x + s1 / norm);
  return vec4<f32>(j0, j1, y0, y1);
}
fn bessel_j0_f(x: f32) -> f32 {
  let a = abs(x);
  if (is_nan(x) || a == bs_inf()) { return bs_nan(); }  // PyTorch: NaN at +-inf
  if (a == 0.0) { return 1.0; }
  return bs_jy(a).x;
}
fn bessel_j1_f(x: f32) -> f32 {
  let a = abs(x);
  if (is_nan(x) || a == bs_inf()) { return bs_nan(); }
  if (a == 0.0) { return x; }
  return sign(x) * bs_jy(a).y;
}
fn bessel_y0_f(x: f32) -> f32 {
  if (is_nan(x) || x < 0.0) { return bs_nan(); }
  if (x == 0.0) { return -bs_inf(); }
  if (x == bs_inf()) { return bs_nan(); }
  return bs_jy(x).z;
}
fn bessel_y1_f(x: f32) -> f32 {
  if (is_nan(x) || x < 0.0) { return bs_nan(); }
  if (x == 0.0) { return -bs_inf(); }
  if (x == bs_inf()) { return bs_nan(); }
  return bs_jy(x).w;
}
fn spherical_bessel_j0_f(x: f32) -> f32 {
  if (is_nan(x)) { return x; }
  if (is_inf(x)) { return 0.0; }
  if (abs(x) < 0.5) {
    let x2 = x * x;
    return 1.0 + x2 * (-1.0 / 6.0 + x2 * (1.0 / 120.0 + x2 * (-1.0 / 5040.0
                 + x2 * (1.0 / 362880.0 + x2 * (-1.0 / 39916800.0)))));
  }
  return sin_f(x) / x;
}

const AIRY_CENTER_VALUES = array<f32, AIRY_N>(AIRY_TABLE);
fn airy_ai_f(x: f32) -> f32 {
  if (is_nan(x) || is_inf(x)) { return bs_nan(); }  // PyTorch: NaN at +-inf
  if (x > 0.0) {
    let zeta = (2.0 / 3.0) * x * sqrt(x);
    if (zeta > 105.0) { return 0.0; }
    if (zeta < 1e-6) {
      // Ai near 0 from its Taylor series (the K integral needs zeta > 0 with room).
      return 0.355028053887817 - 0.258819403792807 * x;
    }
    return sqrt(x / 3.0) * bs_k_scaled(1.0 / 3.0, zeta) * exp(-zeta) / BS_PI;
  }
  if (x >= -10.0) {
    // Taylor expansion of y'' = x y around the nearest center c (|x - c| <= 0.5).
    let idx = i32(round(-x));
    let c = -f32(idx);
    let d = x - c;
    let b0 = AIRY_CENTER_VALUES[2 * idx];      // Ai(c)
    let b1 = AIRY_CENTER_VALUES[2 * idx + 1];  // Ai'(c)
    var sum = b0 + b1 * d;
    var dn = d;
    // b_{n+2} = (c b_n + b_{n-1}) / ((n+2)(n+1)); keep b_{n-1}, b_n, b_{n+1}
    var bn_m1 = 0.0; var bn = b0; var bn_p1 = b1;
    for (var n = 0; n < 24; n = n + 1) {
      let nf = f32(n);
      let b_new = (c * bn + bn_m1) / ((nf + 2.0) * (nf + 1.0));
      dn = dn * d;
      sum = sum + b_new * dn;
      bn_m1 = bn; bn = bn_p1; bn_p1 = b_new;
    }
    return sum;
  }
  // x < -10: Ai(-z) = pi^-1/2 z^-1/4 (cos(zeta - pi/4) sum (-1)^k u_2k / zeta^2k
  //                                  + sin(zeta - pi/4) sum (-1)^k u_2k+1 / zeta^(2k+1))
  let z = -x;
  // zeta = (2/3) z^1.5 as zeta + zeta_lo: at z = 87 one float32 ulp of zeta (6e-5) is already a phase
  // error of the size of the tolerance. The rounding errors of sqrt and of the products come from
  // Dekker's exact products (operands split on their bits, so no compiler can fold the split away).
  let r = sqrt(z);
  let rr = bs_two_prod(r, r);
  let dr = ((z - rr.x) - rr.y) / (2.0 * r);        // sqrt(z) = r + dr
  let zr = bs_two_prod(z, r);
  let pe = zr.y + z * dr;                          // z sqrt(z) = zr.x + pe
  let c_hi = 0.6666666865348816;                   // float32(2/3) = 2/3 + 1.99e-8
  let zp = bs_two_prod(zr.x, c_hi);
  let zeta = zp.x;
  let zeta_lo = zp.y + pe * c_hi - zr.x * 1.9868215e-8;
  var u = 1.0; var even = 1.0; var odd = 0.0;
  for (var k = 1; k < 8; k = k + 1) {
    // u_k = u_{k-1} (6k-5)(6k-3)(6k-1) / ((2k-1) 216 k)
    let kf = f32(k);
    u = u * (6.0 * kf - 5.0) * (6.0 * kf - 3.0) * (6.0 * kf - 1.0) / ((2.0 * kf - 1.0) * 216.0 * kf) / zeta;
    let s = select(-1.0, 1.0, ((k / 2) & 1) == 0);
    if ((k & 1) == 1) { odd = odd + s * u; } else { even = even + s * u; }
  }
  let c4 = 0.7071067811865476;
  // cos and sin of zeta + zeta_lo (zeta_lo reaches ~1 for z ~ 1e5, past a linear correction)
  let cl = cos_f(zeta_lo); let sl = sin_f(zeta_lo);
  let scz = sincos_f(zeta);  // wgsl_trig: full-range reduction, a driver's is far off at large zeta
  let cz = scz.y * cl - scz.x * sl; let sz = scz.x * cl + scz.y * sl;
  let cm = c4 * (cz + sz);   // cos(zeta - pi/4)
  let sm = c4 * (sz - cz);   // sin(zeta - pi/4)
  return (cm * even + sm * odd) / (sqrt(BS_PI) * sqrt(sqrt(z)));
}
"""
