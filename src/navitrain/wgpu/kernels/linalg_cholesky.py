"""The Cholesky engine: A = L L^T for a batch of symmetric positive-definite float32 matrices, in place
(LAPACK's potrf with uplo = 'L': only the lower triangle is read; the strict upper triangle is zeroed at the
end, as PyTorch's tril_ does after potrf).

One workgroup owns one matrix (element (b, i, j) at l_off + b * l_bs + i * l_rs + j * l_cs) and walks its
columns right-looking: the diagonal's square root, the column below divided by it, the trailing lower
triangle updated, each step spread over the workgroup and separated by storage barriers. The matrix
stays in global memory, so any n works. Large matrices are walked in column ranges, one dispatch each
(see `kernels/loop_budget.py`: llvmpipe stops a kernel's loops after 65535 passes in all); info carries a
failure from one range to the next, and the last range zeroes the upper triangle.

A diagonal that is not > 0 when its turn comes -- NaN included, tested on the bits since drivers may
fold comparisons with NaN -- stops the factorization with info = its 1-based index, as potrf reports a
leading minor that is not positive-definite; the columns after it are left as they were.
"""
from __future__ import annotations

from navitrain.wgpu.kernels import codegen, loop_budget
from navitrain.wgpu.runtime import runtime
from navitrain.wgpu.tensor import WgpuTensor

WG = 256
SMALL_WG = 32      # matrices up to SMALL_N: a wider workgroup would mostly idle
SMALL_N = 16

_CHOL_P = codegen.ParamBlock("batch", "n", "l_off", "l_bs", "l_rs", "l_cs", "info_off", "k_begin", "k_end",
                             "last_range")

_CHOL_BODY = """
  if (group >= batch) { return; }
  let base = l_off + group * l_bs;
  // columns k_begin..k_end-1 (one range per dispatch); a later range resumes from the failure info holds
  if (lid == 0u) { failed_at = select(0u, u32(b1[info_off + group]), k_begin > 0u); }
  for (var k = k_begin; k < k_end; k = k + 1u) {
    if (lid == 0u && failed_at == 0u) {
      let d = b0[base + k * l_rs + k * l_cs];
      if (is_nan(d) || !(d > 0.0)) { failed_at = k + 1u; } else { b0[base + k * l_rs + k * l_cs] = sqrt(d); }
    }
    storageBarrier();
    if (workgroupUniformLoad(&failed_at) != 0u) { break; }
    let dk = b0[base + k * l_rs + k * l_cs];
    for (var i = k + 1u + lid; i < n; i = i + WGu) {
      let a = base + i * l_rs + k * l_cs;
      b0[a] = b0[a] / dk;
    }
    storageBarrier();
    workgroupBarrier();
    // trailing lower triangle: A[i, j] -= L[i, k] * L[j, k] for k < j <= i
    let r = n - k - 1u;
    for (var e = lid; e < r * r; e = e + WGu) {
      let i = k + 1u + e % r;
      let j = k + 1u + e / r;
      if (j <= i) {
        let a = base + i * l_rs + j * l_cs;
        b0[a] = b0[a] - b0[base + i * l_rs + k * l_cs] * b0[base + j * l_rs + k * l_cs];
      }
    }
    storageBarrier();
    workgroupBarrier();
  }
  for (var e = lid; e < select(0u, n * n, last_range != 0u); e = e + WGu) {
    let i = e % n;
    let j = e / n;
    if (j > i) { b0[base + i * l_rs + j * l_cs] = 0.0; }
  }
  if (lid == 0u) { b1[info_off + group] = i32(failed_at); }
"""


def factor_in_place(lower: WgpuTensor, batch: int, l_bs: int, info: WgpuTensor) -> None:
    """Replace the `batch` matrices of `lower` (last two dims, batch stride l_bs) by their Cholesky factor
    L; info: contiguous [batch] int32, 0 or the order of the first leading minor that is not PD."""
    n = lower.shape[-1]
    if batch == 0:
        return
    rt = runtime()
    wg = SMALL_WG if n <= SMALL_N else WG
    kernel = rt.kernel(("linalg_cholesky", wg), "linalg_cholesky", 2,
                       lambda: codegen.module(["f32", "i32"], _CHOL_P.wgsl() + _CHOL_BODY.replace("WGu", f"{wg}u"),
                                              wg, shared="var<workgroup> failed_at: u32;\n"))
    strided = loop_budget.strided
    # per column: the column loop, the division below the diagonal, the trailing update; the zeroing loop
    # of the last range is the `fixed` part every range is planned with
    ranges = loop_budget.spans(n, lambda k: 1 + strided(n - k - 1, wg) + strided((n - k - 1) ** 2, wg),
                               fixed=2 + strided(n * n, wg))
    for k_begin, k_end in ranges:
        params = _CHOL_P.pack(batch=batch, n=n, l_off=lower.elem_offset, l_bs=l_bs, l_rs=lower.stride(-2),
                              l_cs=lower.stride(-1), info_off=info.elem_offset, k_begin=k_begin, k_end=k_end,
                              last_range=int(k_end == n))
        rt.dispatch(kernel, (lower._ws.heap, info._ws.heap), params, codegen.grid(batch))
