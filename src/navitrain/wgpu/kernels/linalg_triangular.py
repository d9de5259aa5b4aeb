"""The triangular-solve engine: A X = B for a batch of n x n triangular A and many right-hand sides,
in place on X (which holds B when the kernel starts).

Operands are strided views, so a transpose costs nothing: element (b, i, j) of A is at
a_off + b * a_bs + i * a_rs + j * a_cs (a_bs = 0 broadcasts one A over the batch), and entry i of
right-hand side c of matrix b is at x_off + b * x_bs + i * x_rs + c * x_cs. A right solve X A = B is the
left solve A^T X^T = B^T, i.e. the same kernel with both operands' strides swapped; the handlers do that.

One thread per (matrix, right-hand side) substitutes forward (lower) or backward (upper): O(n^2) each,
n * nrhs * batch threads in all. Only the triangle named is read, the diagonal too unless unit. Nothing is
checked: a zero on the diagonal gives inf / NaN as LAPACK's trsm does, and NaN propagates by arithmetic.
Large n is substituted in row ranges, one dispatch each (see `kernels/loop_budget.py`: llvmpipe stops a
kernel's loops after 65535 passes in all, and row t alone loops t times).
"""
from __future__ import annotations

from navitrain.wgpu.kernels import codegen, loop_budget
from navitrain.wgpu.runtime import runtime
from navitrain.wgpu.tensor import WgpuTensor

_SOLVE_P = codegen.ParamBlock("batch", "n", "nrhs", "upper", "unit", "a_off", "a_bs", "a_rs", "a_cs",
                              "x_off", "x_bs", "x_rs", "x_cs", "t_begin", "t_end")

_SOLVE_BODY = """
  if (gi >= batch * nrhs) { return; }
  let b = gi / nrhs;
  let a = a_off + b * a_bs;
  let x = x_off + b * x_bs + (gi % nrhs) * x_cs;
  for (var t = t_begin; t < t_end; t = t + 1u) {  // rows t_begin..t_end-1 in substitution order
    let i = select(t, n - 1u - t, upper != 0u);
    var s = b0[x + i * x_rs];
    for (var u = 0u; u < t; u = u + 1u) {
      let j = select(u, n - 1u - u, upper != 0u);
      s = s - b1[a + i * a_rs + j * a_cs] * b0[x + j * x_rs];
    }
    if (unit == 0u) { s = s / b1[a + i * a_rs + i * a_cs]; }
    b0[x + i * x_rs] = s;
  }
"""


def solve_in_place(a: WgpuTensor, a_bs: int, x: WgpuTensor, x_bs: int, batch: int, *, upper: bool,
                   unit: bool) -> None:
    """x[b] = A[b]^-1 x[b] for the `batch` matrices (last two dims of the views `a` and `x`; the batch
    strides are a_bs and x_bs, so the views may hold just the first matrix's geometry)."""
    n, nrhs = x.shape[-2], x.shape[-1]
    if batch * n * nrhs == 0:
        return
    rt = runtime()
    kernel = rt.kernel(("linalg_trsm",), "linalg_trsm", 2,
                       lambda: codegen.module(["f32", "f32"], _SOLVE_P.wgsl() + _SOLVE_BODY, 64))
    # row t: one pass of the row loop and t + 1 of the inner product
    for t_begin, t_end in loop_budget.spans(n, lambda t: t + 2):
        params = _SOLVE_P.pack(batch=batch, n=n, nrhs=nrhs, upper=int(upper), unit=int(unit), a_off=a.elem_offset,
                               a_bs=a_bs, a_rs=a.stride(-2), a_cs=a.stride(-1), x_off=x.elem_offset, x_bs=x_bs,
                               x_rs=x.stride(-2), x_cs=x.stride(-1), t_begin=t_begin, t_end=t_end)
        rt.dispatch(kernel, (x._ws.heap, a._ws.heap), params, codegen.groups_for(batch * nrhs, 64))
