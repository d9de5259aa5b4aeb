"""The LU engine: batched LU factorization with partial pivoting (LAPACK's getrf), and the small kernels
built on its pivots (row interchanges, the determinant and its sign / log).

A batch of m x n float32 matrices is factored in place: element (b, i, j) of `lu` lives at
lu_off + b * lu_bs + i * lu_rs + j * lu_cs, so the handlers choose the layout (PyTorch's column-major
LU included). One workgroup owns one matrix and walks its columns: a pivot search (a tree over the
workgroup), the row interchange, the column scaled by the pivot, and the rank-1 update of the trailing
block, each spread over the workgroup's threads and separated by storage barriers. The matrix stays in
global memory, so there is no size limit; for large n this is one workgroup per matrix (slow but exact),
the batched small matrices of user scripts being the case it is built for. Large matrices are walked
in column ranges, one dispatch each (see `kernels/loop_budget.py`: llvmpipe stops a kernel's loops after
65535 passes in all); info carries the first zero pivot from one range to the next.

Pivots follow LAPACK: the largest |value| of the column, the first row on ties, stored 1-based as int32;
a zero pivot sets info to its 1-based column (the first one only) and the column is left unscaled, as
sgetf2 does. NaN is never skipped: |value| is compared as the bits of abs(x), where NaN's bits exceed
+inf's, so a column holding a NaN pivots on it and the factors become NaN instead of silently finite.
"""
from __future__ import annotations

from navitrain.wgpu.kernels import codegen, loop_budget
from navitrain.wgpu.runtime import runtime
from navitrain.wgpu.tensor import WgpuTensor

WG = 256
SMALL_WG = 32      # matrices up to SMALL_N rows and columns: a wider workgroup would mostly idle
SMALL_N = 16

_FACTOR_P = codegen.ParamBlock("batch", "m", "n", "lu_off", "lu_bs", "lu_rs", "lu_cs",
                               "piv_off", "piv_bs", "info_off", "k_begin", "k_end")

# Keys are abs(x)'s bits: ordered as the floats they are for x >= 0, with NaN above +inf.
_FACTOR_BODY = """
  if (group >= batch) { return; }
  let base = lu_off + group * lu_bs;
  // columns k_begin..k_end-1 (one range per dispatch); a later range resumes info where the last one left it
  if (lid == 0u) { first_zero = select(0u, u32(b2[info_off + group]), k_begin > 0u); }
  for (var k = k_begin; k < k_end; k = k + 1u) {
    // the pivot: largest |A[i, k]| over i >= k, first on ties
    var key = 0u;
    var row = m;
    for (var i = k + lid; i < m; i = i + WGu) {
      let v = bitcast<u32>(b0[base + i * lu_rs + k * lu_cs]) & 0x7fffffffu;
      if (v > key || (v == key && i < row)) { key = v; row = i; }
    }
    red_key[lid] = key;
    red_row[lid] = row;
    workgroupBarrier();
    for (var half = WGu / 2u; half > 0u; half = half >> 1u) {
      if (lid < half) {
        let ok = red_key[lid + half];
        let orow = red_row[lid + half];
        if (ok > red_key[lid] || (ok == red_key[lid] && orow < red_row[lid])) {
          red_key[lid] = ok;
          red_row[lid] = orow;
        }
      }
      workgroupBarrier();
    }
    let p = red_row[0];
    let pivot_is_zero = red_key[0] == 0u;
    if (lid == 0u) {
      b1[piv_off + group * piv_bs + k] = i32(p + 1u);
      if (pivot_is_zero && first_zero == 0u) { first_zero = k + 1u; }
    }
    // interchange rows k and p over all n columns (LAPACK swaps the L part too)
    if (p != k) {
      for (var j = lid; j < n; j = j + WGu) {
        let a = base + k * lu_rs + j * lu_cs;
        let c = base + p * lu_rs + j * lu_cs;
        let t = b0[a];
        b0[a] = b0[c];
        b0[c] = t;
      }
    }
    storageBarrier();
    workgroupBarrier();
    let pv = b0[base + k * lu_rs + k * lu_cs];
    if (!pivot_is_zero) {
      for (var i = k + 1u + lid; i < m; i = i + WGu) {
        let a = base + i * lu_rs + k * lu_cs;
        b0[a] = b0[a] / pv;
      }
    }
    storageBarrier();
    workgroupBarrier();
    // rank-1 update of the trailing block, rows fastest (LU is column-major for the handlers)
    let rows = m - k - 1u;
    let cols = n - k - 1u;
    for (var e = lid; e < rows * cols; e = e + WGu) {
      let i = k + 1u + e % rows;
      let j = k + 1u + e / rows;
      let a = base + i * lu_rs + j * lu_cs;
      b0[a] = b0[a] - b0[base + i * lu_rs + k * lu_cs] * b0[base + k * lu_rs + j * lu_cs];
    }
    storageBarrier();
    workgroupBarrier();
  }
  if (lid == 0u) { b2[info_off + group] = i32(first_zero); }
"""


def _factor_source(wg: int) -> str:
    shared = (f"var<workgroup> red_key: array<u32, {wg}>;\nvar<workgroup> red_row: array<u32, {wg}>;\n"
              "var<workgroup> first_zero: u32;\n")
    body = _FACTOR_P.wgsl() + _FACTOR_BODY.replace("WGu", f"{wg}u")
    return codegen.module(["f32", "i32", "i32"], body, wg, shared=shared)


def factor_in_place(lu: WgpuTensor, batch: int, lu_bs: int, pivots: WgpuTensor, info: WgpuTensor) -> None:
    """Factor the `batch` matrices of `lu` (its last two dims, matrix b at batch stride lu_bs) in place;
    pivots: contiguous [batch, min(m, n)] int32, info: contiguous [batch] int32."""
    m, n = lu.shape[-2], lu.shape[-1]
    rt = runtime()
    wg = SMALL_WG if max(m, n) <= SMALL_N else WG
    kernel = rt.kernel(("linalg_lu_factor", wg), "linalg_lu_factor", 3, lambda: _factor_source(wg))
    for k_begin, k_end in loop_budget.spans(min(m, n), lambda k: _column_passes(m, n, k, wg)):
        params = _FACTOR_P.pack(batch=batch, m=m, n=n, lu_off=lu.elem_offset, lu_bs=lu_bs, lu_rs=lu.stride(-2),
                                lu_cs=lu.stride(-1), piv_off=pivots.elem_offset, piv_bs=min(m, n),
                                info_off=info.elem_offset, k_begin=k_begin, k_end=k_end)
        rt.dispatch(kernel, (lu._ws.heap, pivots._ws.heap, info._ws.heap), params, codegen.grid(batch))


def _column_passes(m: int, n: int, k: int, wg: int) -> int:
    """Loop passes one thread spends on column k (an upper bound): the column loop itself, pivot search,
    reduction tree, interchange, scaling, trailing update."""
    strided = loop_budget.strided
    return (1 + strided(m - k, wg) + wg.bit_length() + strided(n, wg) + strided(m - k - 1, wg)
            + strided((m - k - 1) * (n - k - 1), wg))


# -- row interchanges ----------------------------------------------------------------------------------
# x: [batch, rows, cols] at x_off with strides (x_bs, x_rs, x_cs); one thread per (matrix, column) applies
# the `swaps` interchanges row s <-> pivots[s] - 1 in order s = 0.. (forward: P^T x) or reversed (P x).
_SWAP_P = codegen.ParamBlock("batch", "rows", "cols", "swaps", "reverse", "x_off", "x_bs", "x_rs", "x_cs",
                             "piv_off", "piv_bs")

_SWAP_BODY = """
  if (gi >= batch * cols) { return; }
  let b = gi / cols;
  let c = gi % cols;
  let col = x_off + b * x_bs + c * x_cs;
  for (var t = 0u; t < swaps; t = t + 1u) {
    let s = select(t, swaps - 1u - t, reverse != 0u);
    let p = u32(b1[piv_off + b * piv_bs + s] - 1);
    if (p != s && p < rows) {  // a pivot out of range (a foreign LU) must not write outside the matrix
      let tmp = b0[col + s * x_rs];
      b0[col + s * x_rs] = b0[col + p * x_rs];
      b0[col + p * x_rs] = tmp;
    }
  }
"""


def apply_pivots(x: WgpuTensor, batch: int, x_bs: int, pivots: WgpuTensor, piv_bs: int, reverse: bool) -> None:
    """Interchange the rows of each matrix of `x` (last two dims, in place) as `pivots` (1-based, last dim
    = the number of interchanges, matrix b's at pivots.elem_offset + b * piv_bs) says."""
    rows, cols, swaps = x.shape[-2], x.shape[-1], pivots.shape[-1]
    if batch * cols == 0 or swaps == 0:
        return
    rt = runtime()
    kernel = rt.kernel(("linalg_lu_swap",), "linalg_lu_swap", 2,
                       lambda: codegen.module(["f32", "i32"], _SWAP_P.wgsl() + _SWAP_BODY, 64))
    params = _SWAP_P.pack(batch=batch, rows=rows, cols=cols, swaps=swaps, reverse=int(reverse), x_off=x.elem_offset,
                          x_bs=x_bs, x_rs=x.stride(-2), x_cs=x.stride(-1), piv_off=pivots.elem_offset,
                          piv_bs=piv_bs)
    rt.dispatch(kernel, (x._ws.heap, pivots._ws.heap), params, codegen.groups_for(batch * cols, 64))


# -- determinants ------------------------------------------------------------------------------------------
# One thread per matrix: the diagonal of U (LU at lu_off + b * lu_bs, diagonal step lu_ds) and the parity of
# the pivots. mode "det": out0 = sign(P) * prod(diag), in order, as PyTorch's CPU computes it;
# mode "slogdet": out0 = sign(P) * prod(sgn(diag)), out1 = sum(log|diag|).
_DET_P = codegen.ParamBlock("batch", "n", "lu_off", "lu_bs", "lu_ds", "piv_off", "piv_bs", "out0_off",
                            "out1_off")


def _det_source(mode: str) -> str:
    if mode == "det":
        step = "acc = acc * d;"
        init = "var acc = 1.0;"
        tail = "b2[out0_off + gi] = perm_sign * acc;"
    else:
        # sgn and log written out: WGSL leaves sign(NaN) and log(0) to the driver.
        step = """acc = acc * select(select(select(0.0, -1.0, d < 0.0), 1.0, d > 0.0), d, is_nan(d));
    let ad = abs(d);
    logs = logs + select(select(log(ad), bitcast<f32>(0xff800000u), ad == 0.0), ad, is_nan(d));"""
        init = "var acc = 1.0;\n  var logs = 0.0;"
        tail = "b2[out0_off + gi] = perm_sign * acc;\n  b3[out1_off + gi] = logs;"
    body = _DET_P.wgsl() + f"""
  if (gi >= batch) {{ return; }}
  var perm_sign = 1.0;
  for (var s = 0u; s < n; s = s + 1u) {{
    if (b1[piv_off + gi * piv_bs + s] != i32(s + 1u)) {{ perm_sign = -perm_sign; }}
  }}
  {init}
  for (var s = 0u; s < n; s = s + 1u) {{
    let d = b0[lu_off + gi * lu_bs + s * lu_ds];
    {step}
  }}
  {tail}"""
    types = ["f32", "i32", "f32"] + (["f32"] if mode == "slogdet" else [])
    return codegen.module(types, body, 64)


def determinant(lu: WgpuTensor, batch: int, lu_bs: int, pivots: WgpuTensor, out: WgpuTensor,
                logabs: WgpuTensor | None = None) -> None:
    """From square factors: det into `out`, or (sign into `out`, log|det| into `logabs`); outputs are
    contiguous [batch] float32, pivots contiguous [batch, n]."""
    if batch == 0:
        return
    n = lu.shape[-1]
    mode = "det" if logabs is None else "slogdet"
    rt = runtime()
    kernel = rt.kernel(("linalg_det", mode), f"linalg_{mode}", 3 if logabs is None else 4,
                       lambda: _det_source(mode))
    params = _DET_P.pack(batch=batch, n=n, lu_off=lu.elem_offset, lu_bs=lu_bs,
                         lu_ds=lu.stride(-2) + lu.stride(-1), piv_off=pivots.elem_offset, piv_bs=n,
                         out0_off=out.elem_offset, out1_off=(logabs if logabs is not None else out).elem_offset)
    heaps = (lu._ws.heap, pivots._ws.heap, out._ws.heap) + ((logabs._ws.heap,) if logabs is not None else ())
    rt.dispatch(kernel, heaps, params, codegen.groups_for(batch, 64))

