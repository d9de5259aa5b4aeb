"""The symmetric eigensolver engine: eigenvalues (ascending) and eigenvectors of a batch of real symmetric
float32 matrices by cyclic Jacobi, one workgroup per matrix (issue 17).

Why Jacobi: the matrices this serves are small and many (a batch of covariance matrices, a Hessian per
sample); Jacobi needs nothing but plane rotations, so one workgroup finishes a matrix without another
launch, and it is accurate to the last bits for the small eigenvalues too.

Layout of one sweep: the pairs (p, q) are visited in round-robin order, n/2 disjoint pairs per round
(n rounded up to even; the extra index is a dummy), so a round's rotations commute and run in parallel:
one thread per pair computes its rotation, then the rows p, q of A are rotated (J^T A), then the columns
(J^T A J) and the columns of V (V J), each step spread over the workgroup. The rotated pair's own four
entries are written exactly (a_pq = 0), as the classical method does. A pair whose a_pq is negligible
(below 2^-24 sqrt|a_pp a_qq|, or 1e-12 of the largest |entry|) is skipped; a sweep without a rotation ends
the loop (MAX_SWEEPS bounds it; float32 needs under ten for n <= 64).

A and V live in workgroup memory: the kernel exists for orders whose arrays fit the device's workgroup
memory (`fits` sizes the generated source); larger matrices take the counted CPU fallback in the handler.
Every loop stays far below llvmpipe's silent cap of 65535 iterations per loop and invocation (see
kernels/linalg_svd.py): at n = 64 the busiest runs about 15k times in 30 sweeps. The matrix is
scaled by a power of two (exact) so its largest entry lies in [1, 2): no overflow in the rotation formulas
for entries near float32's range, and the eigenvalues are scaled back. Only one triangle is read (UPLO).

A non-finite entry in the triangle read makes every eigenvalue and eigenvector entry NaN (the CPU either
raises or returns NaN for such inputs; a finite answer would be silently wrong).
"""
from __future__ import annotations

from navitrain.wgpu.kernels import codegen
from navitrain.wgpu.kernels import linalg_jacobi as jacobi
from navitrain.wgpu.runtime import runtime
from navitrain.wgpu.tensor import WgpuTensor

MAX_N = 64          # larger orders: the CPU (one workgroup per matrix stops paying off, and memory runs out)
MAX_SWEEPS = 30


padded = jacobi.padded


def fits(n: int, with_vectors: bool = True) -> bool:
    """Whether the order-n kernel fits this device's workgroup memory (and MAX_N)."""
    if n > MAX_N:
        return False
    nb = padded(n)
    return jacobi.fits_workgroup_memory(_source(nb, jacobi.workgroup(nb), with_vectors))


_EIGH_P = codegen.ParamBlock("batch", "n", "lower", "a_off", "a_bs", "a_rs", "a_cs", "w_off",
                             "v_off", "v_bs", "v_rs", "v_cs", "max_sweeps")

_EIGH_BODY = """
  if (group >= batch) { return; }
  let base = a_off + group * a_bs;
  let m = n + (n & 1u);
  let half = m / 2u;
CLEAR_FLAGS
  // load the triangle named by UPLO, mirrored; V = I
  var local_bad = 0u;
  var local_max = 0u;
  for (var e = lid; e < n * n; e = e + WGu) {
    let i = e / n;
    let j = e % n;
    let lo = min(i, j);
    let hi = max(i, j);
    let x = select(b0[base + lo * a_rs + hi * a_cs], b0[base + hi * a_rs + lo * a_cs], lower != 0u);
    A[i * NBu + j] = x;
    if (WITH_V) { V[i * NBu + j] = select(0.0, 1.0, i == j); }
    let bits = bitcast<u32>(x) & 0x7fffffffu;
    if (bits >= 0x7f800000u) { local_bad = 1u; }
    local_max = max(local_max, bits);
  }
SCALE_EXPONENT
  for (var e = lid; e < n * n; e = e + WGu) {
    let at = (e / n) * NBu + e % n;
    A[at] = ldexp(A[at], -shift);
  }
  workgroupBarrier();
  var sweeps = max_sweeps;
  if (bad) { sweeps = 0u; }
  for (var sweep = 0u; sweep < sweeps; sweep = sweep + 1u) {
    for (var r = 0u; r + 1u < m; r = r + 1u) {
      if (lid < half) {
        let pair = jacobi_pair(r, lid, m);
        let lo = pair.x;
        let hi = pair.y;
        var c = 1.0;
        var s = 0.0;
        var dpp = 0.0;
        var dqq = 0.0;
        if (hi < n) {
          let app = A[lo * NBu + lo];
          let aqq = A[hi * NBu + hi];
          let apq = A[lo * NBu + hi];
          let negligible = max(5.9604645e-8 * sqrt(abs(app)) * sqrt(abs(aqq)), 1e-12);
          if (abs(apq) > negligible) {
            let t = jacobi_tangent((aqq - app) / (2.0 * apq));
            c = inverseSqrt(1.0 + t * t);
            s = t * c;
            dpp = app - t * apq;
            dqq = aqq + t * apq;
            atomicOr(&flag_rot, 1u);
          }
        }
        rot_p[lid] = lo;
        rot_q[lid] = hi;
        rot_c[lid] = c;
        rot_s[lid] = s;
        rot_dpp[lid] = dpp;
        rot_dqq[lid] = dqq;
      }
      workgroupBarrier();
      // rows p and q of A: J^T A
      for (var e = lid; e < half * n; e = e + WGu) {
        let k = e / n;
        let j = e % n;
        let s = rot_s[k];
        if (s != 0.0) {
          let c = rot_c[k];
          let p = rot_p[k];
          let q = rot_q[k];
          let x = A[p * NBu + j];
          let y = A[q * NBu + j];
          A[p * NBu + j] = c * x - s * y;
          A[q * NBu + j] = s * x + c * y;
        }
      }
      workgroupBarrier();
      // columns p and q of A and of V: (J^T A) J, V J; the pair's own entries exactly
      for (var e = lid; e < half * n; e = e + WGu) {
        let k = e / n;
        let i = e % n;
        let s = rot_s[k];
        if (s != 0.0) {
          let c = rot_c[k];
          let p = rot_p[k];
          let q = rot_q[k];
          if (i == p) {
            A[p * NBu + p] = rot_dpp[k];
            A[p * NBu + q] = 0.0;
          } else if (i == q) {
            A[q * NBu + p] = 0.0;
            A[q * NBu + q] = rot_dqq[k];
          } else {
            let x = A[i * NBu + p];
            let y = A[i * NBu + q];
            A[i * NBu + p] = c * x - s * y;
            A[i * NBu + q] = s * x + c * y;
          }
          if (WITH_V) {
            let vx = V[i * NBu + p];
            let vy = V[i * NBu + q];
            V[i * NBu + p] = c * vx - s * vy;
            V[i * NBu + q] = s * vx + c * vy;
          }
        }
      }
      workgroupBarrier();
    }
END_OF_SWEEP
  }
  // ascending order, NaN last, ties by index: each eigenvalue's rank is its output position
  let nan = bitcast<f32>(0x7fc00000u);
  for (var i = lid; i < n; i = i + WGu) {
    let d = select(A[i * NBu + i], nan, bad);
    var rank = 0u;
    for (var j = 0u; j < n; j = j + 1u) {
      let o = select(A[j * NBu + j], nan, bad);
      let before = select(o < d || (o == d && j < i) || (!is_nan(o) && is_nan(d)), is_nan(d) && j < i,
                          is_nan(o));
      if (before) { rank = rank + 1u; }
    }
    b1[w_off + group * n + rank] = ldexp(d, shift);
    perm[rank] = i;
  }
  if (WITH_V) {
    workgroupBarrier();
    for (var e = lid; e < n * n; e = e + WGu) {
      let i = e % n;
      let r = e / n;
      b2[v_off + group * v_bs + i * v_rs + r * v_cs] = select(V[i * NBu + perm[r]], nan, bad);
    }
  }
"""


def _source(nb: int, wg: int, with_v: bool) -> str:
    half = nb // 2
    shared = (f"var<workgroup> A: array<f32, {nb * nb}>;\n"
              # without vectors V is never touched (WITH_V is the literal false); declared so the code compiles
              + f"var<workgroup> V: array<f32, {nb * nb if with_v else 4}>;\n"
              + jacobi.workgroup_vars(half)
              + f"var<workgroup> rot_dpp: array<f32, {half}>;\nvar<workgroup> rot_dqq: array<f32, {half}>;\n"
              f"var<workgroup> perm: array<u32, {nb}>;\n")
    body = (_EIGH_P.wgsl() + _EIGH_BODY.replace("CLEAR_FLAGS\n", jacobi.CLEAR_FLAGS)
            .replace("SCALE_EXPONENT\n", jacobi.SCALE_EXPONENT).replace("END_OF_SWEEP\n", jacobi.END_OF_SWEEP)
            .replace("WGu", f"{wg}u").replace("NBu", f"{nb}u").replace("WITH_V", "true" if with_v else "false"))
    return codegen.module(["f32", "f32", "f32"], body, wg, helpers=jacobi.HELPERS, shared=shared)


def eigh(a: WgpuTensor, batch: int, a_bs: int, lower: bool, w: WgpuTensor, v: WgpuTensor | None = None,
         v_bs: int = 0) -> None:
    """Eigenvalues of the `batch` symmetric matrices of `a` (last two dims, matrix b at batch stride a_bs,
    only the `lower` or upper triangle read) into w (contiguous [batch, n], ascending) and, when v is
    given, the eigenvectors as v's columns (v: [..., n, n], any strides, matrix b at batch stride v_bs).
    The caller checks `fits(n, v is not None)` first."""
    n = a.shape[-1]
    if batch == 0 or n == 0:
        return
    nb = padded(n)
    wg = jacobi.workgroup(nb)
    with_v = v is not None
    rt = runtime()
    kernel = rt.kernel(("linalg_eigh_jacobi", nb, wg, with_v), "linalg_eigh_jacobi", 3,
                       lambda: _source(nb, wg, with_v))
    out_v = v if with_v else w
    params = _EIGH_P.pack(batch=batch, n=n, lower=int(lower), a_off=a.elem_offset, a_bs=a_bs,
                          a_rs=a.stride(-2), a_cs=a.stride(-1), w_off=w.elem_offset,
                          v_off=out_v.elem_offset, v_bs=v_bs,
                          v_rs=out_v.stride(-2) if with_v else 0, v_cs=out_v.stride(-1) if with_v else 0,
                          max_sweeps=MAX_SWEEPS)
    rt.dispatch(kernel, (a._ws.heap, w._ws.heap, out_v._ws.heap), params, codegen.grid(batch))
