"""WGSL orthogonal polynomials of PyTorch's torch.special: Chebyshev T, U, V, W (plain and shifted to
[0, 1]), Hermite H and He, Laguerre L, Legendre P, each of (x, n) with an integer-valued n.

They follow PyTorch's definitions (ATen/native/Math.h) case by case, since those define the values users
get: n < 0 gives 0 (as does a NaN or infinite n, which the CPU's cast to int64 makes negative); the
Chebyshev kinds have closed forms cos(n acos x) etc. above a small order for |x| < 1 (the thresholds
differ per kind and are PyTorch's), exact values at the interval's ends, and the three-term recurrence
elsewhere, stopped once it turns NaN (so overflow ends the loop after at most ~2e5 steps); Hermite gives
NaN above order 128 (float32's limit in PyTorch). Laguerre and Legendre recur n times: the handlers
send orders above MAX_RECURRENCE_ORDER to the CPU rather than run such loops in one GPU thread.
acos is computed to ~1e-7 (pl_acos): WGSL's acos loses ~4e-4 near |x| = 1 on lavapipe.
"""
from __future__ import annotations

MAX_RECURRENCE_ORDER = 1 << 16

# kind: 0 = T, 1 = U, 2 = V, 3 = W. `shifted`: y = 2x - 1 (PyTorch's shifted_chebyshev_polynomial_*).
F32 = """
fn pl_order(nf: f32) -> f32 {
  // the CPU casts n to int64: NaN and +-inf become negative (and so give 0)
  if (is_nan(nf) || is_inf(nf)) { return -1.0; }
  return trunc(nf);
}
// acos to ~1e-7: the closed forms multiply the angle by n, and WGSL's acos (4e-4 near |y| = 1 on
// lavapipe) or atan (3e-6) are not enough. Near |y| = 1, 2 asin(sqrt((1 - |y|)/2)) with asin's Taylor
// series (argument <= 0.23); elsewhere one Newton step on cos(t) = y from atan2's estimate.
fn pl_asin_small(s: f32) -> f32 {
  let s2 = s * s;
  return s * (1.0 + s2 * (1.0 / 6.0 + s2 * (3.0 / 40.0 + s2 * (15.0 / 336.0
               + s2 * (105.0 / 3456.0 + s2 * (945.0 / 42240.0))))));
}
fn pl_acos(y: f32) -> f32 {
  if (y > 0.9) { return 2.0 * pl_asin_small(sqrt(0.5 * (1.0 - y))); }
  if (y < -0.9) { return 3.141592653589793 - 2.0 * pl_asin_small(sqrt(0.5 * (1.0 + y))); }
  let t = atan2_f(sqrt((1.0 - y) * (1.0 + y)), y);
  return t + (cos(t) - y) / sin(t);
}
fn pl_even(n: f32) -> bool { return n - 2.0 * floor(0.5 * n) == 0.0; }
fn pl_chebyshev(kind: i32, shifted: bool, x: f32, nf: f32) -> f32 {
  let n = pl_order(nf);
  if (n < 0.0) { return 0.0; }
  if (is_nan(x)) { return select(x, 1.0, n == 0.0); }
  let y = select(x, x + x - 1.0, shifted);
  let at_plus_one = select(abs(x) == 1.0 && x > 0.0, x == 1.0, shifted);
  let at_minus_one = select(abs(x) == 1.0 && x < 0.0, x == 0.0, shifted);
  let odd_sign = select(-1.0, 1.0, pl_even(n));
  if (at_plus_one) {
    if (kind == 1) { return n + 1.0; }
    if (kind == 3) { return n + n + 1.0; }
    return 1.0;
  }
  if (at_minus_one) {
    if (kind == 1) { return odd_sign * (n + 1.0); }
    if (kind == 2) { return odd_sign * (n + n + 1.0); }
    return odd_sign;
  }
  var threshold = select(8.0, 6.0, kind == 0);
  if (shifted) { threshold = select(6.0, 4.0, kind == 3); }
  if (n > threshold && abs(y) < 1.0) {
    let t = pl_acos(y);
    if (kind == 0) { return cos_f(n * t); }
    if (kind == 1) {
      let s = sin_f(t);
      if (s != 0.0) { return sin_f((n + 1.0) * t) / s; }
      return (n + 1.0) * cos_f((n + 1.0) * t) / y;
    }
    if (kind == 2) {
      if (sin_f(t / 2.0) != 1.0) { return cos_f((n + 0.5) * t) / cos_f(t / 2.0); }
      return odd_sign * (n + n + 1.0);
    }
    if (cos_f(t / 2.0) != 1.0) { return sin_f((n + 0.5) * t) / sin_f(t / 2.0); }
    if (x > 0.0 && !shifted) { return n + n + 1.0; }
    return odd_sign;
  }
  var q = y;
  if (kind == 1) { q = y + y; }
  if (kind == 2) { q = y + y - 1.0; }
  if (kind == 3) { q = y + y + 1.0; }
  if (n == 0.0) { return 1.0; }
  if (n == 1.0) { return q; }
  var p = 1.0;
  var r = q;
  let count = i32(n);
  // several steps a loop pass: llvmpipe's loop limit (wgsl_polynomials.STEPS_PER_PASS)
  for (var k = 2; k <= count && !is_nan(q); k = k + CHEBYSHEV_STEPS_PER_PASS) {
CHEBYSHEV_STEPS
  }
  return r;
}
fn chebyshev_t_f(x: f32, n: f32) -> f32 { return pl_chebyshev(0, false, x, n); }
fn chebyshev_u_f(x: f32, n: f32) -> f32 { return pl_chebyshev(1, false, x, n); }
fn chebyshev_v_f(x: f32, n: f32) -> f32 { return pl_chebyshev(2, false, x, n); }
fn chebyshev_w_f(x: f32, n: f32) -> f32 { return pl_chebyshev(3, false, x, n); }
fn shifted_chebyshev_t_f(x: f32, n: f32) -> f32 { return pl_chebyshev(0, true, x, n); }
fn shifted_chebyshev_u_f(x: f32, n: f32) -> f32 { return pl_chebyshev(1, true, x, n); }
fn shifted_chebyshev_v_f(x: f32, n: f32) -> f32 { return pl_chebyshev(2, true, x, n); }
fn shifted_chebyshev_w_f(x: f32, n: f32) -> f32 { return pl_chebyshev(3, true, x, n); }
// Hermite: physicists' H (H_{k+1} = 2x H_k - 2k H_{k-1}) and probabilists' He (He_{k+1} = x He_k - k He_{k-1}).
fn hermite_h_f(x: f32, nf: f32) -> f32 {
  let n = pl_order(nf);
  if (n < 0.0) { return 0.0; }
  if (n == 0.0) { return 1.0; }
  if (n == 1.0) { return x + x; }
  if (n > 128.0) { return bitcast<f32>(0x7fc00000u); }
  var p = 1.0; var q = x + x; var r = 0.0;
  let count = i32(n);
  for (var k = 2; k < count + count; k = k + 2) {
    r = (x + x) * q - f32(k) * p;
    p = q; q = r;
  }
  return r;
}
fn hermite_he_f(x: f32, nf: f32) -> f32 {
  let n = pl_order(nf);
  if (n < 0.0) { return 0.0; }
  if (n == 0.0) { return 1.0; }
  if (n == 1.0) { return x; }
  if (n > 128.0) { return bitcast<f32>(0x7fc00000u); }
  var p = 1.0; var q = x; var r = 0.0;
  let count = i32(n);
  for (var k = 1; k < count; k = k + 1) {
    r = x * q - f32(k) * p;
    p = q; q = r;
  }
  return r;
}
fn laguerre_l_f(x: f32, nf: f32) -> f32 {
  let n = pl_order(nf);
  if (n < 0.0) { return 0.0; }
  if (abs(x) == 0.0 && !is_nan(x)) { return 1.0; }
  if (n == 0.0) { return 1.0; }
  if (n == 1.0) { return 1.0 - x; }
  var p = 1.0; var q = 1.0 - x; var r = q;
  let count = i32(n);
  for (var k = 1; k < count && !is_nan(q); k = k + 1) {
    let kf = f32(k);
    r = (((kf + kf) + (1.0 - x)) * q - kf * p) / (kf + 1.0);
    p = q; q = r;
  }
  return r;
}
fn legendre_p_f(x: f32, nf: f32) -> f32 {
  let n = pl_order(nf);
  if (n < 0.0) { return 0.0; }
  if (is_nan(x)) { return select(x, 1.0, n == 0.0); }
  if (abs(x) == 1.0) { return select(-1.0, 1.0, x > 0.0 || pl_even(n)); }
  if (n == 0.0) { return 1.0; }
  if (n == 1.0) { return x; }
  var p = 1.0; var q = x; var r = q;
  let count = i32(n);
  for (var k = 1; k < count && !is_nan(q); k = k + 1) {
    let kf = f32(k);
    r = ((kf + kf + 1.0) * x * q - kf * p) / (kf + 1.0);
    p = q; q = r;
  }
  return r;
}
"""

# The recurrence above runs until it overflows to NaN: up to ~185,000 steps for T_n(1 + 2^-23), more than
# llvmpipe's 65535 loop passes per kernel (kernels/loop_budget.py). Eight steps a pass keep that under
# 24,000 passes. The NaN test between passes only is exact: once q is NaN every later step is NaN too.
STEPS_PER_PASS = 8
F32 = F32.replace("CHEBYSHEV_STEPS_PER_PASS", str(STEPS_PER_PASS)).replace("CHEBYSHEV_STEPS", "\n".join(
    f"    if (k + {i} <= count) {{ r = (y + y) * q - p; p = q; q = r; }}" for i in range(STEPS_PER_PASS)))


def helpers() -> str:
    return F32
