"""WGSL math that WGSL lacks or gets wrong for PyTorch's semantics, shared by generated kernels.

- NaN: WGSL leaves min/max/clamp of NaN, and many builtins (atan, atan2, tanh on lavapipe) of NaN, to
  the implementation; PyTorch propagates NaN. So every such call goes through a helper here that tests
  its operands explicitly (fmax_nan, clamp_nan, keep_nan; relu_nan is in dtypes.WGSL_HELPERS, which
  the GEMM epilogues see too). NaN tests use the bits (is_nan in dtypes.WGSL_HELPERS): lavapipe folds
  `x != x` to false and evaluates `a != b` as ordered (false for NaN).
- tanh/sigmoid: evaluated through exp, they overflow to NaN for large |x| on some drivers: clamp first
  (tanh(15) is 1 to within f32 rounding), but let NaN through (a clamp would turn it into a bound).
- remainder/fmod/floor division of floats follow the CPU's formulas (fmod first, exact as C's), so
  infinities give what the CPU gives (inf // 2 is NaN, 5 // inf is 0, remainder(-1, inf) is inf).
- pow: WGSL's pow is undefined for negative bases; PyTorch defines integer exponents there.
- erf: not in WGSL. A Taylor series near 0 (relative error < 1e-8 for |x| < 0.5) and Abramowitz &
  Stegun 7.1.26 beyond (absolute error < 1.5e-7), which is within float32 tolerance of torch.erf.
- log1p/expm1: the classic compensated forms, accurate near 0.
- div_rn: a / b correctly rounded, for results the CPU computes by one division and tests demand
  exactly (round(decimals=), floor division); see its comment.
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
  return fmod_exact(a, b);
}
// C's fmod, exact (musl's fmodf: shift-and-subtract on the significands, one step per exponent of the
// quotient, at most 277): a - b * trunc(a / b) in floats is off by the rounding of the product for large
// quotients, and by b where the 2.5-ulp '/' gives 2.9999998 for a = 3 b. a, b finite, b != 0.
fn fmod_exact(a: f32, b: f32) -> f32 {
  let ua = bitcast<u32>(a); let ub = bitcast<u32>(b) & 0x7fffffffu;
  let sx = ua & 0x80000000u;
  if ((ua & 0x7fffffffu) <= ub) { return select(a, bitcast<f32>(sx), (ua & 0x7fffffffu) == ub); }
  var ex = i32((ua >> 23u) & 0xffu); var ey = i32(ub >> 23u);
  var mx = ua; var my = ub;
  if (ex == 0) {
    var i = ua << 9u;
    loop { if ((i >> 31u) != 0u) { break; } ex = ex - 1; i = i << 1u; }
    mx = ua << u32(1 - ex);
  } else { mx = (ua & 0x7fffffu) | 0x800000u; }
  if (ey == 0) {
    var i = ub << 9u;
    loop { if ((i >> 31u) != 0u) { break; } ey = ey - 1; i = i << 1u; }
    my = ub << u32(1 - ey);
  } else { my = (ub & 0x7fffffu) | 0x800000u; }
  loop {
    if (ex <= ey) { break; }
    if (mx >= my) { mx = mx - my; if (mx == 0u) { return bitcast<f32>(sx); } }
    mx = mx << 1u; ex = ex - 1;
  }
  if (mx >= my) { mx = mx - my; if (mx == 0u) { return bitcast<f32>(sx); } }
  loop { if ((mx >> 23u) != 0u) { break; } mx = mx << 1u; ex = ex - 1; }
  if (ex > 0) { mx = (mx - 0x800000u) | (u32(ex) << 23u); } else { mx = mx >> u32(1 - ex); }
  return bitcast<f32>(mx | sx);
}
fn remainder_f(a: f32, b: f32) -> f32 {
  let m = fmod_f(a, b);
  return select(m, m + b, (m != 0.0) && ((b < 0.0) != (m < 0.0)));
}
fn floordiv_f(a: f32, b: f32) -> f32 {
  if (b == 0.0 || is_nan(a) || is_nan(b)) { return a / b; }
  let m = fmod_f(a, b);
  var d = div_rn(a - m, b);  // the CPU's (a - fmod) / b, correctly rounded
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
    return 1.1283791670955126 * x
      * (1.0 + x2 * (-0.3333333333333333 + x2 * (0.1 + x2 * (-0.023809523809523808 + x2 * 0.004629629629629629))));
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
fn pow_scalar_f(x: f32, y: f32) -> f32 {
  // torch.pow with a scalar exponent: 0.5 and -0.5 are sqrt and rsqrt there (-inf ** 0.5 is nan,
  // -0.0 ** -0.5 is -inf, where C's pow gives inf and 0); other exponents as pow_f.
  if (y == 0.5) { return sqrt(x); }
  if (y == -0.5) { return 1.0 / sqrt(x); }
  return pow_f(x, y);
}
// a / b correctly rounded (the CPU's division): Vulkan bounds WGSL's '/' only to 2.5 ulp (NVIDIA's is
// off by 1 ulp for ~1/4 of quotients), and fma need not be fused, so the quotient is corrected in integers.
// With a = ma 2^ea, b = mb 2^eb and a candidate q = mq 2^eq (24-bit significands), X = ma 2^s / mb,
// s = ea - eb - eq + 1 (in [23, 26] near the quotient), is a / b in half-ulps of q's binade. With
// D = ma 2^s - 2 mq mb (50-bit products, exact in two u32 words), a / b lies beyond q's upper midpoint
// (2 mq + 1) mb iff D > mb, and below its lower one iff D < -mb ((4 mq - 1) mb against ma 2^(s+1), so
// D < -mb / 2, at a power of two, whose lower neighbour is half an ulp away). a / b is never exactly a
// midpoint (an odd 25-bit significand times mb has more than 24 bits). Otherwise the rounded significand
// is round(X / 2) = mq + floor((D + mb) / (2 mb)): one jump, however many ulps q0 is off (the driver's
// 2.5 and more). A jump that would leave q's binade stops at its edge and the next round goes on with the
// neighbouring binade's ulp; every round re-checks the midpoints, so the answer is exact when the loop
// stops. Zeros, infinities, NaN, subnormal operands and quotients near the ends of the range keep the
// driver's '/'.
fn dr_mul64(x: u32, y: u32) -> vec2<u32> {
  let xl = x & 0xffffu; let xh = x >> 16u; let yl = y & 0xffffu; let yh = y >> 16u;
  let ll = xl * yl; let lh = xl * yh; let hl = xh * yl;
  let mid = (ll >> 16u) + (lh & 0xffffu) + (hl & 0xffffu);
  return vec2<u32>(xh * yh + (lh >> 16u) + (hl >> 16u) + (mid >> 16u), (ll & 0xffffu) | (mid << 16u));
}
fn dr_shl64(x: u32, s: u32) -> vec2<u32> {  // x << s, 0 < s < 32
  return vec2<u32>(x >> (32u - s), x << s);
}
fn dr_sub64(x: vec2<u32>, y: vec2<u32>) -> vec2<u32> {  // x - y, two's complement
  return vec2<u32>(x.x - y.x - select(0u, 1u, x.y < y.y), x.y - y.y);
}
// How many ulps of q's binade to move, floor((D + mb) / (2 mb)), in floats (integer division is slow on
// lavapipe, which scalarises it): |D| < 2^30 (q within 32 ulps, as from any driver's '/') converts within
// 64 of D, so the floor is right unless (D + mb) / (2 mb) is within 1e-5 of an integer, where it is one
// off and the next round's check moves the last ulp; farther off (only tests get there) the high word
// gives an estimate that the next round refines. At least one ulp, towards a / b. (Every value is finite:
// no NaN reaches the clamp.)
fn dr_jump(d: vec2<u32>, mb: u32, up: bool) -> i32 {
  let near = (d.x == 0u && d.y < 0x40000000u) || (d.x == 0xffffffffu && d.y >= 0xc0000000u);
  let dn = select(f32(bitcast<i32>(d.x)) * 4294967296.0 + f32(d.y), f32(bitcast<i32>(d.y)), near);
  let k = i32(clamp(floor((dn + f32(mb)) / f32(2u * mb)), -16777216.0, 16777216.0));
  return select(min(k, -1), max(k, 1), up);
}
fn div_rn(a: f32, b: f32) -> f32 { return div_rn_from(a, b, a / b); }
fn div_rn_from(a: f32, b: f32, q0: f32) -> f32 {  // q0: a / b to within a few ulps (tests pass a perturbed one)
  let ua = bitcast<u32>(a) & 0x7fffffffu; let ub = bitcast<u32>(b) & 0x7fffffffu;
  let ea = i32(ua >> 23u); let eb = i32(ub >> 23u);
  if (ea == 0 || ea == 255 || eb == 0 || eb == 255) { return q0; }
  let ma = (ua & 0x7fffffu) | 0x800000u; let mb = (ub & 0x7fffffu) | 0x800000u;
  var uq = bitcast<u32>(q0) & 0x7fffffffu;
  // rounds: a jump, a binade edge, a jump in the next binade, a last ulp, the power-of-two step down,
  // the check (a lane that is right at once leaves in the first)
  for (var tries = 0; tries < 8; tries = tries + 1) {
    let eq = i32(uq >> 23u);
    if (eq <= 1 || eq >= 254) { return q0; }
    let s = ea - eb - eq + 151;
    if (s < 2 || s > 30) { return q0; }
    let mq = (uq & 0x7fffffu) | 0x800000u;
    let d = dr_sub64(dr_shl64(ma, u32(s)), dr_mul64(2u * mq, mb));
    let up = d.x < 0x80000000u && (d.x != 0u || d.y > mb);
    let below = select(mb, mb >> 1u, mq == 0x800000u);  // D < -below: under the lower midpoint
    let down = d.x >= 0x80000000u && (d.x != 0xffffffffu || d.y < 0u - below);
    if (!up && !down) {
      return bitcast<f32>(uq | ((bitcast<u32>(a) ^ bitcast<u32>(b)) & 0x80000000u));
    }
    let next = i32(mq) + dr_jump(d, mb, up);
    if (next > 0xffffff) {
      uq = (uq | 0x7fffffu) + 1u;             // the binade above starts here
    } else if (next < 0x800000) {
      uq = (uq & 0x7f800000u) - 1u;           // the binade below ends here
    } else {
      uq = (uq & 0x7f800000u) | (u32(next) & 0x7fffffu);
    }
  }
  return q0;  // not reached for a q0 within a binade of a / b
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
fn idiv_floor(a: i32, b: i32) -> i32 {
  let q = a / b; return select(q, q - 1, (a - b * q != 0) && ((a < 0) != (b < 0)));
}
fn imod_floor(a: i32, b: i32) -> i32 { let r = irem(a, b); return select(r, r + b, (r != 0) && ((r < 0) != (b < 0))); }
fn pow_i32(a: i32, b: i32) -> i32 { var r = 1; var base = a; var e = b;
  // a negative power of an integer: 1 for 1, +-1 for -1, else 0 (the CPU's powi)
  if (e < 0) { return select(select(0, 1 - 2 * (e & 1), a == -1), 1, a == 1); }
  loop { if (e == 0) { break; } if ((e & 1) == 1) { r = r * base; } base = base * base; e = e >> 1u; } return r; }
"""

I64 = """
fn irem64(a: i64, b: i64) -> i64 { return a - b * (a / b); }
fn idiv_floor64(a: i64, b: i64) -> i64 {
  let q = a / b; return select(q, q - 1li, (a - b * q != 0li) && ((a < 0li) != (b < 0li)));
}
fn imod_floor64(a: i64, b: i64) -> i64 {
  let r = irem64(a, b); return select(r, r + b, (r != 0li) && ((r < 0li) != (b < 0li)));
}
fn pow_i64(a: i64, b: i64) -> i64 { var r = 1li; var base = a; var e = b;
  if (e < 0li) { return select(select(0li, 1li - 2li * (e & 1li), a == -1li), 1li, a == 1li); }
  loop { if (e == 0li) { break; } if ((e & 1li) == 1li) { r = r * base; } base = base * base; e = e >> 1u; } return r; }
"""


def helpers(has_i64: bool) -> str:
    # wgsl_special: erfinv, lgamma, digamma, nextafter, hypot, fmax/fmin; wgsl_trig: tan, sinpi, cospi, tanpi
    from navitrain.wgpu.kernels import wgsl_special, wgsl_trig

    return F32 + wgsl_special.F32 + wgsl_trig.F32 + (I64 if has_i64 else "")
