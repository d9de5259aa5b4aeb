"""The QR engine: Householder QR of a batch of float32 matrices as LAPACK's geqrf stores it, and the
application of its reflectors to other matrices (orgqr / ormqr) (issue 17).

Why LAPACK's exact conventions: a QR is unique only up to the signs of R's diagonal, and PyTorch's CPU
results (and its OpInfo tests) are LAPACK's. Each reflector is slarfg's: for the column's head alpha and
tail x, beta = -sign(alpha) |(alpha, x)|, tau = (beta - alpha) / beta, v = x / (alpha - beta) stored below
the diagonal with v_0 = 1 implicit, R's diagonal entry = beta; a zero tail gives tau = 0 (H = I, alpha
kept), as a last row always does. |(alpha, x)| is summed after scaling by the largest |entry| (no
overflow of the squares); NaN and inf propagate into R as on the CPU.

geqrf: one workgroup per matrix in global memory (element (b, i, j) at a_off + b * a_bs + i * a_rs +
j * a_cs, factored in place), one column a step: the scaled norm (two tree reductions), the reflector,
then every trailing column updated by its own thread (w = v^T a_c, a_c -= tau w v), separated by storage
barriers. Reflector application: one thread per column of the target, all reflectors in order, no
barriers at all.

Sizes: at most MAX_N rows and columns. One thread per column walks m rows for every reflector, and
llvmpipe (lavapipe) silently ends any single loop after 65535 iterations per invocation (all its runs
summed; see kernels/linalg_svd.py): 128 x 128 stays at 16k. Larger matrices take the counted CPU fallback.
"""
from __future__ import annotations

from navitrain.wgpu.kernels import codegen
from navitrain.wgpu.runtime import runtime
from navitrain.wgpu.tensor import WgpuTensor

MAX_N = 128
WG = 128

_GEQRF_P = codegen.ParamBlock("batch", "m", "n", "a_off", "a_bs", "a_rs", "a_cs", "tau_off", "tau_bs")

_GEQRF_BODY = """
  if (group >= batch) { return; }
  let base = a_off + group * a_bs;
  let steps = min(m, n);
  for (var j = 0u; j < steps; j = j + 1u) {
    // the largest |entry| of the tail below the diagonal, as bits (NaN's are above inf's)
    if (lid == 0u) { atomicStore(&tail_max, 0u); }
    workgroupBarrier();
    var local_max = 0u;
    for (var i = j + 1u + lid; i < m; i = i + WGu) {
      local_max = max(local_max, bitcast<u32>(b0[base + i * a_rs + j * a_cs]) & 0x7fffffffu);
    }
    atomicMax(&tail_max, local_max);
    workgroupBarrier();
    if (lid == 0u) { scale_bits = atomicLoad(&tail_max); }
    let scale_u = workgroupUniformLoad(&scale_bits);
    let scale = bitcast<f32>(scale_u);
    var part = 0.0;
    if (scale_u != 0u && scale_u < 0x7f800000u) {
      for (var i = j + 1u + lid; i < m; i = i + WGu) {
        let x = b0[base + i * a_rs + j * a_cs] / scale;
        part = part + x * x;
      }
    }
    red[lid] = part;
    workgroupBarrier();
    for (var h = WGu / 2u; h > 0u; h = h >> 1u) {
      if (lid < h) { red[lid] = red[lid] + red[lid + h]; }
      workgroupBarrier();
    }
    if (lid == 0u) {
      let diag = base + j * a_rs + j * a_cs;
      let alpha = b0[diag];
      // scale_u: 0 = a zero tail; inf or NaN bits = a non-finite tail, whose norm is that value
      var xnorm = scale * sqrt(red[0]);
      if (scale_u >= 0x7f800000u) { xnorm = scale; }
      var t = 0.0;
      var scal = 1.0;
      if (scale_u != 0u) {
        let big = max(abs(alpha), xnorm);
        let small = min(abs(alpha), xnorm);
        var norm = big;
        if (big > 0.0 && !is_inf(big)) { norm = big * sqrt(1.0 + (small / big) * (small / big)); }
        if (is_nan(alpha) || is_nan(xnorm)) { norm = alpha + xnorm; }
        let beta = select(-norm, norm, alpha < 0.0);
        t = (beta - alpha) / beta;
        scal = 1.0 / (alpha - beta);
        b0[diag] = beta;
      }
      b1[tau_off + group * tau_bs + j] = t;
      step_tau = t;
      step_scal = scal;
    }
    let tau = workgroupUniformLoad(&step_tau);
    let scal = step_scal;
    if (tau != 0.0 || is_nan(tau)) {
      for (var i = j + 1u + lid; i < m; i = i + WGu) {
        let at = base + i * a_rs + j * a_cs;
        b0[at] = b0[at] * scal;
      }
    }
    storageBarrier();
    workgroupBarrier();
    // H_j applied to the trailing columns, one thread each
    if (tau != 0.0 || is_nan(tau)) {
      for (var c = j + 1u + lid; c < n; c = c + WGu) {
        var w = b0[base + j * a_rs + c * a_cs];
        for (var i = j + 1u; i < m; i = i + 1u) {
          w = w + b0[base + i * a_rs + j * a_cs] * b0[base + i * a_rs + c * a_cs];
        }
        w = w * tau;
        b0[base + j * a_rs + c * a_cs] = b0[base + j * a_rs + c * a_cs] - w;
        for (var i = j + 1u; i < m; i = i + 1u) {
          let at = base + i * a_rs + c * a_cs;
          b0[at] = b0[at] - w * b0[base + i * a_rs + j * a_cs];
        }
      }
    }
    storageBarrier();
    workgroupBarrier();
  }
"""


def _geqrf_source() -> str:
    shared = (f"var<workgroup> red: array<f32, {WG}>;\nvar<workgroup> tail_max: atomic<u32>;\n"
              "var<workgroup> scale_bits: u32;\nvar<workgroup> step_tau: f32;\nvar<workgroup> step_scal: f32;\n")
    return codegen.module(["f32", "f32"], _GEQRF_P.wgsl() + _GEQRF_BODY.replace("WGu", f"{WG}u"), WG,
                          shared=shared)


def geqrf_in_place(a: WgpuTensor, batch: int, a_bs: int, tau: WgpuTensor) -> None:
    """Factor the `batch` m x n matrices of `a` (last two dims, batch stride a_bs) in place as geqrf
    stores them; tau: contiguous [batch, min(m, n)]."""
    m, n = a.shape[-2], a.shape[-1]
    if batch == 0 or min(m, n) == 0:
        return
    rt = runtime()
    kernel = rt.kernel(("linalg_geqrf", WG), "linalg_geqrf", 2, _geqrf_source)
    params = _GEQRF_P.pack(batch=batch, m=m, n=n, a_off=a.elem_offset, a_bs=a_bs, a_rs=a.stride(-2),
                           a_cs=a.stride(-1), tau_off=tau.elem_offset, tau_bs=min(m, n))
    rt.dispatch(kernel, (a._ws.heap, tau._ws.heap), params, codegen.grid(batch))


# -- reflectors applied from the left: x <- H_0 .. H_{k-1} x (backward) or H_{k-1} .. H_0 x (forward) -----
_APPLY_P = codegen.ParamBlock("batch", "m", "k", "cols", "backward", "v_off", "v_bs", "v_rs", "v_cs",
                              "tau_off", "tau_bs", "x_off", "x_bs", "x_rs", "x_cs")

_APPLY_BODY = """
  if (gi >= batch * cols) { return; }
  let b = gi / cols;
  let c = gi % cols;
  let vb = v_off + b * v_bs;
  let xc = x_off + b * x_bs + c * x_cs;
  for (var s = 0u; s < k; s = s + 1u) {
    let j = select(s, k - 1u - s, backward != 0u);
    let tau = b1[tau_off + b * tau_bs + j];
    var w = b2[xc + j * x_rs];
    for (var i = j + 1u; i < m; i = i + 1u) { w = w + b0[vb + i * v_rs + j * v_cs] * b2[xc + i * x_rs]; }
    w = w * tau;
    b2[xc + j * x_rs] = b2[xc + j * x_rs] - w;
    for (var i = j + 1u; i < m; i = i + 1u) {
      b2[xc + i * x_rs] = b2[xc + i * x_rs] - w * b0[vb + i * v_rs + j * v_cs];
    }
  }
"""


def apply_reflectors(v: WgpuTensor, v_bs: int, tau: WgpuTensor, tau_bs: int, k: int, x: WgpuTensor, x_bs: int,
                     batch: int, backward: bool) -> None:
    """x (last two dims m x cols, batch stride x_bs, in place) <- Q x (backward=True) or Q^T x, where
    Q = H_0 .. H_{k-1} and reflector j is column j of v below its diagonal (v_0 = 1) with tau[j]."""
    m, cols = x.shape[-2], x.shape[-1]
    if batch * cols == 0 or k == 0:
        return
    rt = runtime()
    kernel = rt.kernel(("linalg_apply_reflectors",), "linalg_apply_reflectors", 3,
                       lambda: codegen.module(["f32", "f32", "f32"], _APPLY_P.wgsl() + _APPLY_BODY, 64))
    params = _APPLY_P.pack(batch=batch, m=m, k=k, cols=cols, backward=int(backward), v_off=v.elem_offset,
                           v_bs=v_bs, v_rs=v.stride(-2), v_cs=v.stride(-1), tau_off=tau.elem_offset,
                           tau_bs=tau_bs, x_off=x.elem_offset, x_bs=x_bs, x_rs=x.stride(-2), x_cs=x.stride(-1))
    rt.dispatch(kernel, (v._ws.heap, tau._ws.heap, x._ws.heap), params, codegen.groups_for(batch * cols, 64))
