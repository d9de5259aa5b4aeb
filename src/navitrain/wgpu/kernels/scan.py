"""The scan engine: inclusive scans (sum, prod, logsumexp) along a dim, and the row geometry that the
sort engine and the handlers above share.

A tensor scanned (or sorted) along `dim` is seen as [outer, D, inner] with one stride each, so any view
whose outer dims and inner dims each collapse needs no copy. Two kernels, both work-efficient:
- contiguous rows (inner == 1, D > 64, unless there are thousands of rows no longer than a block):
  blocks of 1024 elements, one workgroup each (coalesced loads into
  workgroup memory, a short serial scan per thread, a Hillis-Steele scan of the 256 thread totals). A row
  longer than one block is reduce-then-scan: a pass writes each block's total, the totals are scanned
  (recursively, the same way), and a last pass scans every block starting from the total before it. So a
  row of 100k elements is ~100 workgroups, not one thread walking it.
- columns (inner > 1, or short rows): a thread walks its column, neighbouring threads on neighbouring
  addresses. When there are few columns and they are long, each is cut into chunks that separate
  threads walk, with the same totals / scan / rescan passes over chunks.
Floating scans accumulate in f32 (f16/bf16 included), integer scans in 64 bits where the adapter has
shader-int64. The parallel order of additions differs from the CPU's serial one (the CPU accumulates
float32 cumsum in double): results agree to float32 rounding, not bit for bit.
"""
from __future__ import annotations

import torch

from navitrain.wgpu.dims import contiguous
from navitrain.wgpu.kernels import codegen, wgsl_math
from navitrain.wgpu.kernels.pointwise import collapse
from navitrain.wgpu.runtime import runtime
from navitrain.wgpu.tensor import WgpuTensor, empty

WG = 256          # threads of a block-scan workgroup
PER_THREAD = 4    # elements each of them scans serially
BLOCK = WG * PER_THREAD
SHORT_ROW = 64    # rows up to this long are walked by one thread each
COLUMN_THREADS = 8192  # below this many columns, long columns are cut into chunks


# -- geometry shared with sorting and indexing --------------------------------------------------------
def row_geometry(x: WgpuTensor, dim: int):
    """(x, outer, D, inner, outer stride, dim stride, inner stride) for walking `x` along `dim`; `x` comes
    back cloned to contiguous only when its outer or inner dims do not collapse to one stride each."""
    if x.dim() == 0:
        return x, 1, 1, 1, 0, 0, 0
    shape, stride = list(x.shape), list(x.stride())

    def one(sizes, strides):
        n = 1
        for s in sizes:
            n *= s
        if n <= 1:
            return n, 0
        sz, (st,) = collapse(sizes, [strides])
        return (n, st[0]) if len(sz) == 1 else (n, None)

    outer, so = one(shape[:dim], stride[:dim])
    inner, si = one(shape[dim + 1:], stride[dim + 1:])
    if so is None or si is None:
        x = contiguous(x)
        return row_geometry(x, dim)
    return x, outer, shape[dim], inner, so, stride[dim], si


# -- the combine operations ---------------------------------------------------------------------------
LSE = """
fn scan_lse_pair(a: f32, b: f32) -> f32 {
  if (is_nan(a) || is_nan(b)) { return bitcast<f32>(0x7fc00000u); }
  let mn = min(a, b); let mx = max(a, b);
  if (mn != mx || abs(mn) <= 3.4028234663852886e38) { return mx + log1p_f(exp(mn - mx)); }
  return a;
}
"""


def _acc_type(op: str, out_dtype: torch.dtype) -> str:
    if op == "logsumexp" or out_dtype.is_floating_point:
        return "f32"
    return "i64" if "shader-int64" in runtime().features else "i32"


def _acc_dtype(acc: str) -> torch.dtype:
    return {"f32": torch.float32, "i64": torch.int64, "i32": torch.int32}[acc]


def _identity(op: str, acc: str) -> str:
    if op == "logsumexp":
        return "bitcast<f32>(0xff800000u)"
    one = op == "prod"
    return {"f32": "1.0" if one else "0.0", "i32": "1" if one else "0", "i64": "1li" if one else "0li"}[acc]


def _combine(op: str, a: str, b: str) -> str:
    return {"sum": f"({a} + {b})", "prod": f"({a} * {b})", "logsumexp": f"scan_lse_pair({a}, {b})"}[op]


# -- kernels ---------------------------------------------------------------------------------------
# Rows of D elements at x_off + row * so + p * sd, `blocks` blocks per row; the final pass starts each
# block after the first from carry[carry_off + block - 1] when has_carry is set.
_BLOCK_P = codegen.ParamBlock("rows", "D", "x_off", "so", "sd", "out_off", "blocks", "carry_off", "has_carry",
                              defaults={"carry_off": 0, "has_carry": 0})


def _block_source(op, acc, in_st, out_st, mode):
    """mode "totals" writes each block's total to out (acc type); "final" the scanned elements."""
    ident = _identity(op, acc)
    load = in_st.load("b1[x_off + row * so + p * sd]", acc)
    comb = lambda a, b: _combine(op, a, b)  # noqa: E731
    if mode == "totals":
        tail = f"""
  if (lid == {WG - 1}u) {{ b0[out_off + group] = t[{WG - 1}u]; }}"""
    else:
        tail = f"""
  var carry: {acc} = {ident};
  if (has_carry != 0u && blk > 0u) {{ carry = b2[carry_off + group - 1u]; }}
  var prefix = carry;
  if (lid > 0u) {{ prefix = {comb('carry', 't[lid - 1u]')}; }}
  for (var e = 0u; e < {PER_THREAD}u; e = e + 1u) {{
    s[lid * {PER_THREAD}u + e] = {comb('prefix', f's[lid * {PER_THREAD}u + e]')};
  }}
  workgroupBarrier();
  for (var e = 0u; e < {PER_THREAD}u; e = e + 1u) {{
    let p = start + e * {WG}u + lid;
    if (p < D) {{ b0[out_off + row * D + p] = {out_st.store(f's[e * {WG}u + lid]')}; }}
  }}"""
    body = _BLOCK_P.wgsl() + f"""
  if (group >= rows * blocks) {{ return; }}
  let row = group / blocks; let blk = group % blocks;
  let start = blk * {BLOCK}u;
  for (var e = 0u; e < {PER_THREAD}u; e = e + 1u) {{
    let p = start + e * {WG}u + lid;
    var v: {acc} = {ident};
    if (p < D) {{ v = {load}; }}
    s[e * {WG}u + lid] = v;
  }}
  workgroupBarrier();
  var run: {acc} = {ident};
  for (var e = 0u; e < {PER_THREAD}u; e = e + 1u) {{
    run = {comb('run', f's[lid * {PER_THREAD}u + e]')};
    s[lid * {PER_THREAD}u + e] = run;
  }}
  t[lid] = run;
  workgroupBarrier();
  for (var off = 1u; off < {WG}u; off = off << 1u) {{
    var prev: {acc} = {ident};
    if (lid >= off) {{ prev = t[lid - off]; }}
    workgroupBarrier();
    t[lid] = {comb('prev', 't[lid]')};
    workgroupBarrier();
  }}{tail}"""
    shared = f"var<workgroup> s: array<{acc}, {BLOCK}>;\nvar<workgroup> t: array<{acc}, {WG}>;\n"
    types = [acc if mode == "totals" else out_st.wgsl, in_st.wgsl, acc]
    return codegen.module(types, body, WG, shared=shared, helpers=_helpers())


# [outer, D, inner] at x_off with strides (so, sd, si); each column cut into `chunks` of `chunk` elements;
# the final pass starts chunk c > 0 of a column from carry[carry_off + ...] when has_carry is set.
_COLUMN_P = codegen.ParamBlock("outer", "D", "inner", "x_off", "so", "sd", "si", "out_off", "chunk", "chunks",
                               "carry_off", "has_carry", defaults={"carry_off": 0, "has_carry": 0})


def _column_source(op, acc, in_st, out_st, mode):
    ident = _identity(op, acc)
    load = in_st.load("b1[base + p * sd]", acc)
    step = f"acc = {_combine(op, 'acc', load)};"
    if mode == "totals":
        loop = f"""
  for (var p = p0; p < p1; p = p + 1u) {{ {step} }}
  b0[out_off + (o * chunks + c) * inner + i] = acc;"""
    else:
        loop = f"""
  if (has_carry != 0u && c > 0u) {{ acc = b2[carry_off + (o * chunks + c - 1u) * inner + i]; }}
  for (var p = p0; p < p1; p = p + 1u) {{
    {step}
    b0[out_off + (o * D + p) * inner + i] = {out_st.store('acc')};
  }}"""
    body = _COLUMN_P.wgsl() + f"""
  if (gi >= outer * chunks * inner) {{ return; }}
  let i = gi % inner; let r = gi / inner; let c = r % chunks; let o = r / chunks;
  let base = x_off + o * so + i * si;
  let p0 = c * chunk; let p1 = min(D, p0 + chunk);
  var acc: {acc} = {ident};{loop}"""
    types = [acc if mode == "totals" else out_st.wgsl, in_st.wgsl, acc]
    return codegen.module(types, body, 64, helpers=_helpers())


def _helpers() -> str:
    return wgsl_math.helpers("shader-int64" in runtime().features) + LSE


def _launch(kind, op, acc, x, out, carry, mode, params: bytes, groups):
    rt = runtime()
    in_st, out_st = rt.stypes[x.dtype], rt.stypes[out.dtype]
    key = ("scan", kind, op, acc, x.dtype, out.dtype, mode)
    source = _block_source if kind == "block" else _column_source
    kernel = rt.kernel(key, f"scan_{op}_{kind}_{mode}", 3, lambda: source(op, acc, in_st, out_st, mode))
    rt.dispatch(kernel, (out._ws.heap, x._ws.heap, (carry if carry is not None else out)._ws.heap), params, groups)


def _scan_rows(op, acc, x, out, rows, D, so, sd):
    """Contiguous rows: out[rows, D] (contiguous) = inclusive scan of x viewed with strides (so, sd)."""
    nb = -(-D // BLOCK)
    carry = None
    if nb > 1:
        totals = empty([rows, nb], _acc_dtype(acc))
        params = _BLOCK_P.pack(rows=rows, D=D, x_off=x.elem_offset, so=so, sd=sd, out_off=totals.elem_offset,
                               blocks=nb)
        _launch("block", op, acc, x, totals, None, "totals", params, codegen.grid(rows * nb))
        carry = empty([rows, nb], _acc_dtype(acc))
        _scan_rows(op, acc, totals, carry, rows, nb, nb, 1)
    params = _BLOCK_P.pack(rows=rows, D=D, x_off=x.elem_offset, so=so, sd=sd, out_off=out.elem_offset, blocks=nb,
                           carry_off=carry.elem_offset if carry is not None else 0, has_carry=int(carry is not None))
    _launch("block", op, acc, x, out, carry, "final", params, codegen.grid(rows * nb))


def _scan_columns(op, acc, x, out, outer, D, inner, so, sd, si):
    """out[outer, D, inner] (contiguous) = inclusive scan along D of x with strides (so, sd, si)."""
    threads = outer * inner
    nc = 1
    if threads < COLUMN_THREADS and D > SHORT_ROW:
        nc = max(1, min(-(-D // 16), -(-COLUMN_THREADS // threads)))
    chunk = -(-D // nc)
    nc = -(-D // chunk)
    geometry = {"outer": outer, "D": D, "inner": inner, "x_off": x.elem_offset, "so": so, "sd": sd, "si": si,
                "chunk": chunk, "chunks": nc}
    carry = None
    if nc > 1:
        totals = empty([outer, nc, inner], _acc_dtype(acc))
        params = _COLUMN_P.pack(out_off=totals.elem_offset, **geometry)
        _launch("column", op, acc, x, totals, None, "totals", params, codegen.groups_for(threads * nc, 64))
        carry = empty([outer, nc, inner], _acc_dtype(acc))
        scan_into(op, totals, carry, 1)
    params = _COLUMN_P.pack(out_off=out.elem_offset, carry_off=carry.elem_offset if carry is not None else 0,
                            has_carry=int(carry is not None), **geometry)
    _launch("column", op, acc, x, out, carry, "final", params, codegen.groups_for(threads * nc, 64))


def scan_into(op: str, x: WgpuTensor, out: WgpuTensor, dim: int) -> WgpuTensor:
    """out (contiguous, x's shape) = inclusive scan of x along dim (>= 0) with `op` (sum, prod, logsumexp)."""
    if out.numel() == 0:
        return out
    x, outer, D, inner, so, sd, si = row_geometry(x, dim)
    acc = _acc_type(op, out.dtype)
    # Workgroup blocks for long contiguous rows; many rows up to one block long are better walked by a
    # thread each (a block of 1024 slots would sit mostly idle on them).
    if inner == 1 and D > SHORT_ROW and (D > BLOCK or outer < COLUMN_THREADS):
        _scan_rows(op, acc, x, out, outer, D, so, sd)
    else:
        _scan_columns(op, acc, x, out, outer, D, inner, so, sd, si)
    return out
