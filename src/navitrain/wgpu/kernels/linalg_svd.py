"""The SVD engine: singular values (descending) and singular vectors of a batch of float32 matrices by
one-sided (Hestenes) Jacobi, one workgroup per matrix (issue 17).

The work matrix W (r x k, r >= k: A itself, or A^T for a wide A, which the handler passes as strides)
has its columns rotated in pairs until every pair is orthogonal; V accumulates the rotations. Then
sigma_j = |W_j|, the left vectors are W_j / sigma_j and the right ones V's columns. Pairs are visited in
round-robin order as in kernels/linalg_eigh.py (k/2 disjoint pairs per round, one thread each computing
|W_p|^2, |W_q|^2 and W_p . W_q over the rows, then the columns rotated by the whole workgroup). A pair
with |W_p . W_q| <= 2^-24 |W_p| |W_q| is skipped; a sweep without a rotation ends the loop. Since every
pair ends orthogonal to working precision relative to its own norms, the left vectors are orthonormal
for small singular values too. W is scaled by a power of two (largest |entry| in [1, 2)) so the sums of
squares cannot overflow; the singular values are scaled back.

Left vectors that Jacobi does not give -- a column that became exactly zero (rank deficiency), and the
columns k..r-1 of a complete basis (full_matrices with r > k) -- are completed by the workgroup: unit
vectors e_t with the columns already there projected out twice (classical Gram-Schmidt, dot products one
thread per column, the update one thread per row), taking the next e_t whose remaining norm^2 is at least
0.5 / r. The e_t are scanned once, in order: one rejected stays rejected as the span grows, the rejected
ones hold less than r * 0.5 / r of the missing dimensions' total (>= 1), so one of the rest reaches 0.5 / r.
A column that still found no vector (rounding) is NaN, never a silent zero.

llvmpipe (lavapipe) gives all loops of a kernel one budget of 65535 passes per group of 8 threads and
silently cuts them after it (kernels/loop_budget.py): a sweep of a 62 x 62 matrix costs ~2,300 passes, and
rounding noise keeps rotating until MAX_SWEEPS, so on a software adapter the sweeps are capped at what
the budget leaves after the basis completion (`_max_sweeps`; the pair's dot products run four rows a step,
each e_t is tried once), and a matrix that would get fewer than MIN_SWEEPS takes the counted CPU fallback.
Outputs are written through strides, so U / Vh's layouts and the wide case's transposes are the
handler's choice.

W and V live in workgroup memory (`fits`); a non-finite entry makes every output of that matrix NaN.
"""
from __future__ import annotations

from navitrain.wgpu.kernels import codegen, loop_budget
from navitrain.wgpu.kernels import linalg_jacobi as jacobi
from navitrain.wgpu.runtime import runtime
from navitrain.wgpu.tensor import WgpuTensor

MAX_N = 64          # rows and columns (after the wide case's transpose); larger take the CPU
MAX_SWEEPS = 30


# Sweeps to allow at least where llvmpipe's loop budget limits them (fewer: the CPU computes it). Full-rank
# 62 x 62 matrices (condition numbers to 1e12) were exact to 1e-6 after 10, but a rank-20 40 x 40 one
# needed 15 for an orthonormal U (its noise columns converge last).
MIN_SWEEPS = 16


def fits(rows: int, cols: int) -> bool:
    """Whether an r x k work matrix (r = the larger side) fits one workgroup's memory (and MAX_N)."""
    r, k = max(rows, cols), min(rows, cols)
    if r > MAX_N:
        return False
    kb = jacobi.padded(k)
    return jacobi.fits_workgroup_memory(_source(r, kb, _workgroup(r, kb)))


def _workgroup(r: int, kb: int) -> int:
    return jacobi.workgroup(max(r, kb))


_SVD_P = codegen.ParamBlock("batch", "r", "k", "a_off", "a_bs", "w_rs", "w_cs", "s_off",
                            "x_off", "x_bs", "x_rs", "x_cs", "x_cols", "y_off", "y_bs", "y_rs", "y_cs",
                            "with_uv", "max_sweeps")

_SVD_BODY = """
  if (group >= batch) { return; }
  let base = a_off + group * a_bs;
  let m = k + (k & 1u);
  let half = m / 2u;
CLEAR_FLAGS
  var local_bad = 0u;
  var local_max = 0u;
  for (var e = lid; e < r * k; e = e + WGu) {
    let i = e / k;
    let j = e % k;
    let x = b0[base + i * w_rs + j * w_cs];
    W[i * KBu + j] = x;
    let bits = bitcast<u32>(x) & 0x7fffffffu;
    if (bits >= 0x7f800000u) { local_bad = 1u; }
    local_max = max(local_max, bits);
  }
  for (var e = lid; e < k * k; e = e + WGu) {
    V[(e / k) * KBu + e % k] = select(0.0, 1.0, e / k == e % k);
  }
SCALE_EXPONENT
  for (var e = lid; e < r * k; e = e + WGu) {
    let at = (e / k) * KBu + e % k;
    W[at] = ldexp(W[at], -shift);
  }
  workgroupBarrier();
  var sweeps = max_sweeps;
  if (bad) { sweeps = 0u; }
  for (var sweep = 0u; sweep < sweeps; sweep = sweep + 1u) {
    for (var rd = 0u; rd + 1u < m; rd = rd + 1u) {
      if (lid < half) {
        let pair = jacobi_pair(rd, lid, m);
        let lo = pair.x;
        let hi = pair.y;
        var c = 1.0;
        var s = 0.0;
        if (hi < k) {
          var alpha = 0.0;
          var beta = 0.0;
          var gamma = 0.0;
          // four rows a step: llvmpipe ends any one loop after 65535 iterations per invocation in total
          // (all its executions summed), and this one runs once per round of every sweep
          var i = 0u;
          for (; i + 3u < r; i = i + 4u) {
            let x0 = W[i * KBu + lo];
            let y0 = W[i * KBu + hi];
            let x1 = W[(i + 1u) * KBu + lo];
            let y1 = W[(i + 1u) * KBu + hi];
            let x2 = W[(i + 2u) * KBu + lo];
            let y2 = W[(i + 2u) * KBu + hi];
            let x3 = W[(i + 3u) * KBu + lo];
            let y3 = W[(i + 3u) * KBu + hi];
            alpha = alpha + (x0 * x0 + x1 * x1) + (x2 * x2 + x3 * x3);
            beta = beta + (y0 * y0 + y1 * y1) + (y2 * y2 + y3 * y3);
            gamma = gamma + (x0 * y0 + x1 * y1) + (x2 * y2 + x3 * y3);
          }
          for (; i < r; i = i + 1u) {
            let x = W[i * KBu + lo];
            let y = W[i * KBu + hi];
            alpha = alpha + x * x;
            beta = beta + y * y;
            gamma = gamma + x * y;
          }
          if (abs(gamma) > 5.9604645e-8 * sqrt(alpha) * sqrt(beta)) {
            let t = jacobi_tangent((beta - alpha) / (2.0 * gamma));
            c = inverseSqrt(1.0 + t * t);
            s = t * c;
            atomicOr(&flag_rot, 1u);
          }
        }
        rot_p[lid] = lo;
        rot_q[lid] = hi;
        rot_c[lid] = c;
        rot_s[lid] = s;
      }
      workgroupBarrier();
      // columns p and q of W (rows 0..r) and of V (rows 0..k)
      for (var e = lid; e < half * (r + k); e = e + WGu) {
        let pair = e / (r + k);
        let row = e % (r + k);
        let s = rot_s[pair];
        if (s != 0.0) {
          let c = rot_c[pair];
          let p = rot_p[pair];
          let q = rot_q[pair];
          if (row < r) {
            let x = W[row * KBu + p];
            let y = W[row * KBu + q];
            W[row * KBu + p] = c * x - s * y;
            W[row * KBu + q] = s * x + c * y;
          } else {
            let i = row - r;
            let x = V[i * KBu + p];
            let y = V[i * KBu + q];
            V[i * KBu + p] = c * x - s * y;
            V[i * KBu + q] = s * x + c * y;
          }
        }
      }
      workgroupBarrier();
    }
END_OF_SWEEP
  }
  let nan = bitcast<f32>(0x7fc00000u);
  for (var j = lid; j < k; j = j + WGu) {
    var ss = 0.0;
    for (var i = 0u; i < r; i = i + 1u) { ss = ss + W[i * KBu + j] * W[i * KBu + j]; }
    sigma[j] = select(sqrt(ss), nan, bad);
  }
  workgroupBarrier();
  // descending order, ties by index; each value's rank is its output position
  for (var j = lid; j < k; j = j + WGu) {
    let d = sigma[j];
    var rank = 0u;
    for (var o = 0u; o < k; o = o + 1u) {
      let x = sigma[o];
      if (x > d || (x == d && o < j)) { rank = rank + 1u; }
    }
    if (bad) { rank = j; }
    b1[s_off + group * k + rank] = ldexp(d, shift);
    perm[rank] = j;
  }
  if (with_uv == 0u) { return; }
  workgroupBarrier();
  let xb = x_off + group * x_bs;
  let yb = y_off + group * y_bs;
  for (var e = lid; e < r * x_cols; e = e + WGu) {
    let i = e % r;
    let c = e / r;
    var value = 0.0;  // columns without a Jacobi vector are completed below
    if (c < k) {
      let j = perm[c];
      if (sigma[j] > 0.0 || bad) { value = select(W[i * KBu + j] / sigma[j], nan, bad); }
    }
    b2[xb + i * x_rs + c * x_cs] = value;
  }
  for (var e = lid; e < k * k; e = e + WGu) {
    let i = e % k;
    let c = e / k;
    b3[yb + i * y_rs + c * y_cs] = select(V[i * KBu + perm[c]], nan, bad);
  }
  storageBarrier();
  workgroupBarrier();
  if (bad) { return; }
  var t_next = 0u;  // a candidate once rejected stays rejected (the span only grows): scan each e_t once
  for (var c = 0u; c < x_cols; c = c + 1u) {
    if (lid == 0u) { status_rot = select(0u, 1u, c >= k || !(sigma[perm[c]] > 0.0)); }
    if (workgroupUniformLoad(&status_rot) == 0u) { continue; }
    var found = false;
    for (var t = t_next; t < r; t = t + 1u) {
      for (var i = lid; i < r; i = i + WGu) { gs_v[i] = select(0.0, 1.0, i == t); }
      workgroupBarrier();
      for (var sweep_gs = 0u; sweep_gs < 2u; sweep_gs = sweep_gs + 1u) {
        for (var o = lid; o < x_cols; o = o + WGu) {
          var dot = 0.0;
          if (o != c && (o < c || (o < k && sigma[perm[o]] > 0.0))) {
            for (var i = 0u; i < r; i = i + 1u) { dot = dot + gs_v[i] * b2[xb + i * x_rs + o * x_cs]; }
          }
          gs_dot[o] = dot;
        }
        workgroupBarrier();
        for (var i = lid; i < r; i = i + WGu) {
          var acc = gs_v[i];
          for (var o = 0u; o < x_cols; o = o + 1u) { acc = acc - gs_dot[o] * b2[xb + i * x_rs + o * x_cs]; }
          gs_v[i] = acc;
        }
        workgroupBarrier();
      }
      if (lid == 0u) {
        var nn = 0.0;
        for (var i = 0u; i < r; i = i + 1u) { nn = nn + gs_v[i] * gs_v[i]; }
        gs_norm = nn;
      }
      let nn = workgroupUniformLoad(&gs_norm);
      t_next = t + 1u;
      if (nn >= 0.5 / f32(r)) {
        let inv = inverseSqrt(nn);
        for (var i = lid; i < r; i = i + WGu) { b2[xb + i * x_rs + c * x_cs] = gs_v[i] * inv; }
        found = true;
        break;
      }
    }
    if (!found) {  // cannot happen in exact arithmetic (see above); NaN rather than a silently wrong basis
      for (var i = lid; i < r; i = i + WGu) { b2[xb + i * x_rs + c * x_cs] = nan; }
    }
    storageBarrier();
    workgroupBarrier();
  }
"""


def _source(rb: int, kb: int, wg: int) -> str:
    half = kb // 2
    shared = (f"var<workgroup> W: array<f32, {rb * kb}>;\nvar<workgroup> V: array<f32, {kb * kb}>;\n"
              + jacobi.workgroup_vars(half)
              + f"var<workgroup> sigma: array<f32, {kb}>;\nvar<workgroup> perm: array<u32, {kb}>;\n"
              f"var<workgroup> gs_v: array<f32, {rb}>;\nvar<workgroup> gs_dot: array<f32, {rb}>;\n"
              "var<workgroup> gs_norm: f32;\n")
    body = (_SVD_P.wgsl() + _SVD_BODY.replace("CLEAR_FLAGS\n", jacobi.CLEAR_FLAGS)
            .replace("SCALE_EXPONENT\n", jacobi.SCALE_EXPONENT).replace("END_OF_SWEEP\n", jacobi.END_OF_SWEEP)
            .replace("WGu", f"{wg}u").replace("KBu", f"{kb}u"))
    return codegen.module(["f32", "f32", "f32", "f32"], body, wg, helpers=jacobi.HELPERS, shared=shared)


def _passes(r: int, k: int, kb: int, wg: int, x_cols: int) -> tuple[int, int]:
    """Upper bounds of the busiest thread's loop passes: (all but the sweeps, one sweep). llvmpipe stops a
    kernel's loops after 65535 passes in all (kernels/loop_budget.py)."""
    def spread(n: int, inner: int = 0) -> int:  # for (e = lid; e < n; e += wg) { `inner` trips }
        trips = -(-n // wg)
        return trips + 1 + trips * (inner + 1 if inner else 0)

    half = kb // 2
    per_round = (r // 4 + 1) + (r % 4 + 1) + spread(half * (r + k)) + 1
    per_sweep = (kb - 1) * per_round + 2
    setup = 2 * spread(r * k) + spread(k * k)
    finish = spread(k, r) + spread(k, k) + spread(r * x_cols) + spread(k * k)
    # completing the basis: each candidate e_t is tried once, two Gram-Schmidt passes each; per column the
    # candidates' exit test and the NaN column of a failed search
    per_candidate = 1 + spread(r) + 3 + 2 * (spread(x_cols, r) + spread(r, x_cols)) + (r + 1) + spread(r)
    complete = (x_cols + 1 + r * per_candidate + x_cols * (1 + spread(r))) if x_cols else 0
    return setup + finish + complete + 2, per_sweep


def _max_sweeps(r: int, k: int, kb: int, wg: int, x_cols: int) -> int:
    """MAX_SWEEPS, or on a software adapter as many as llvmpipe's loop budget allows (a 62 x 62 matrix
    rotated by rounding noise ran all 30 sweeps, which cut its loops: wrong U, S and V)."""
    if not runtime().info.software:
        return MAX_SWEEPS
    fixed, per_sweep = _passes(r, k, kb, wg, x_cols)
    loop_budget.require(fixed + MIN_SWEEPS * per_sweep, f"an SVD of an {r} x {k} matrix")
    return min(MAX_SWEEPS, (loop_budget.PASS_BUDGET - fixed) // per_sweep)


def svd(a: WgpuTensor, batch: int, a_bs: int, transpose: bool, s: WgpuTensor, x=None, y=None) -> None:
    """Singular values of the `batch` matrices of `a` (last two dims, batch stride a_bs; transposed first
    when `transpose`, so the work matrix is r x k with r >= k) into s (contiguous [batch, k], descending).
    x, y: None (values only) or (tensor, batch stride, row stride, col stride, columns) for the left
    vectors of the work matrix (r rows, `columns` in k..r: more than k are completed to an orthonormal
    set) and (tensor, batch stride, row stride, col stride) for its k x k right vectors."""
    rows, cols = a.shape[-2], a.shape[-1]
    a_rs, a_cs = a.stride(-2), a.stride(-1)
    if transpose:
        rows, cols, a_rs, a_cs = cols, rows, a_cs, a_rs
    r, k = rows, cols
    if batch == 0 or k == 0:
        return
    kb = jacobi.padded(k)
    wg = _workgroup(r, kb)
    rt = runtime()
    kernel = rt.kernel(("linalg_svd_jacobi", r, kb, wg), "linalg_svd_jacobi", 4, lambda: _source(r, kb, wg))
    with_uv = x is not None
    xt, x_bs, x_rs, x_cs, x_cols = x if with_uv else (s, 0, 0, 0, 0)
    yt, y_bs, y_rs, y_cs = y if with_uv else (s, 0, 0, 0)
    params = _SVD_P.pack(batch=batch, r=r, k=k, a_off=a.elem_offset, a_bs=a_bs, w_rs=a_rs, w_cs=a_cs,
                         s_off=s.elem_offset, x_off=xt.elem_offset, x_bs=x_bs, x_rs=x_rs, x_cs=x_cs,
                         x_cols=x_cols, y_off=yt.elem_offset, y_bs=y_bs, y_rs=y_rs, y_cs=y_cs,
                         with_uv=int(with_uv), max_sweeps=_max_sweeps(r, k, kb, wg, x_cols))
    rt.dispatch(kernel, (a._ws.heap, s._ws.heap, xt._ws.heap, yt._ws.heap), params, codegen.grid(batch))
