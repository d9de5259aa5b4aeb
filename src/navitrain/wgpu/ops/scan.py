"""Scans along a dim: cumsum, cumprod, logcumsumexp (inclusive), and the row geometry other families use.

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

from navitrain.wgpu.kernels import codegen, wgsl_math
from navitrain.wgpu.dispatch import implements
from navitrain.wgpu.kernels.pointwise import collapse
from navitrain.wgpu.runtime import runtime
from navitrain.wgpu.tensor import WgpuTensor, empty

aten = torch.ops.aten

WG = 256          # threads of a block-scan workgroup
PER_THREAD = 4    # elements each of them scans serially
BLOCK = WG * PER_THREAD
SHORT_ROW = 64    # rows up to this long are walked by one thread each
COLUMN_THREADS = 8192  # below this many columns, long columns are cut into chunks


# -- geometry shared with sorting and indexing --------------------------------------------------------
def wrap_dim(dim: int, ndim: int) -> int:
    n = max(ndim, 1)
    if not -n <= dim < n:
        raise IndexError(f"Dimension out of range (expected to be in range of [{-n}, {n - 1}], but got {dim})")
    return dim % n


def contiguous(t: WgpuTensor) -> WgpuTensor:
    return t if t.is_contiguous() else aten.clone.default(t, memory_format=torch.contiguous_format)


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
def _block_source(op, acc, in_st, out_st, mode):
    """Params: 0 rows, 1 D, 2 x off, 3 outer stride, 4 dim stride, 5 out off, 6 blocks per row,
    7 carry off, 8 has carry. mode "totals" writes each block's total to out (acc type)."""
    ident = _identity(op, acc)
    load = in_st.load("b1[pu(2u) + row * pu(3u) + p * pu(4u)]", acc)
    comb = lambda a, b: _combine(op, a, b)  # noqa: E731
    if mode == "totals":
        tail = f"""
  if (lid == {WG - 1}u) {{ b0[pu(5u) + group] = t[{WG - 1}u]; }}"""
    else:
        tail = f"""
  var carry: {acc} = {ident};
  if (pu(8u) != 0u && blk > 0u) {{ carry = b2[pu(7u) + group - 1u]; }}
  var prefix = carry;
  if (lid > 0u) {{ prefix = {comb('carry', 't[lid - 1u]')}; }}
  for (var e = 0u; e < {PER_THREAD}u; e = e + 1u) {{
    s[lid * {PER_THREAD}u + e] = {comb('prefix', f's[lid * {PER_THREAD}u + e]')};
  }}
  workgroupBarrier();
  for (var e = 0u; e < {PER_THREAD}u; e = e + 1u) {{
    let p = start + e * {WG}u + lid;
    if (p < D) {{ b0[pu(5u) + row * D + p] = {out_st.store(f's[e * {WG}u + lid]')}; }}
  }}"""
    body = f"""
  let D = pu(1u); let nb = pu(6u);
  if (group >= pu(0u) * nb) {{ return; }}
  let row = group / nb; let blk = group % nb;
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


def _column_source(op, acc, in_st, out_st, mode):
    """Params: 0 outer, 1 D, 2 inner, 3 x off, 4 so, 5 sd, 6 si, 7 out off, 8 chunk, 9 chunks,
    10 carry off, 11 has carry."""
    ident = _identity(op, acc)
    load = in_st.load("b1[base + p * pu(5u)]", acc)
    step = f"acc = {_combine(op, 'acc', load)};"
    if mode == "totals":
        loop = f"""
  for (var p = p0; p < p1; p = p + 1u) {{ {step} }}
  b0[pu(7u) + (o * nc + c) * inner + i] = acc;"""
    else:
        loop = f"""
  if (pu(11u) != 0u && c > 0u) {{ acc = b2[pu(10u) + (o * nc + c - 1u) * inner + i]; }}
  for (var p = p0; p < p1; p = p + 1u) {{
    {step}
    b0[pu(7u) + (o * D + p) * inner + i] = {out_st.store('acc')};
  }}"""
    body = f"""
  let D = pu(1u); let inner = pu(2u); let nc = pu(9u);
  if (gi >= pu(0u) * nc * inner) {{ return; }}
  let i = gi % inner; let r = gi / inner; let c = r % nc; let o = r / nc;
  let base = pu(3u) + o * pu(4u) + i * pu(6u);
  let p0 = c * pu(8u); let p1 = min(D, p0 + pu(8u));
  var acc: {acc} = {ident};{loop}"""
    types = [acc if mode == "totals" else out_st.wgsl, in_st.wgsl, acc]
    return codegen.module(types, body, 64, helpers=_helpers())


def _helpers() -> str:
    return wgsl_math.helpers("shader-int64" in runtime().features) + LSE


def _launch(kind, op, acc, x, out, carry, mode, params, groups):
    rt = runtime()
    in_st, out_st = rt.stypes[x.dtype], rt.stypes[out.dtype]
    key = ("scan", kind, op, acc, x.dtype, out.dtype, mode)
    source = _block_source if kind == "block" else _column_source
    kernel = rt.kernel(key, f"scan_{op}_{kind}_{mode}", 3, lambda: source(op, acc, in_st, out_st, mode))
    rt.dispatch(kernel, (out._ws.heap, x._ws.heap, (carry if carry is not None else out)._ws.heap),
                params.pack(), groups)


def _scan_rows(op, acc, x, out, rows, D, so, sd):
    """Contiguous rows: out[rows, D] (contiguous) = inclusive scan of x viewed with strides (so, sd)."""
    nb = -(-D // BLOCK)
    carry = None
    if nb > 1:
        totals = empty([rows, nb], _acc_dtype(acc))
        p = codegen.Params()
        p.u(rows, D, x.elem_offset, so, sd, totals.elem_offset, nb, 0, 0)
        _launch("block", op, acc, x, totals, None, "totals", p, codegen.grid(rows * nb))
        carry = empty([rows, nb], _acc_dtype(acc))
        _scan_rows(op, acc, totals, carry, rows, nb, nb, 1)
    p = codegen.Params()
    p.u(rows, D, x.elem_offset, so, sd, out.elem_offset, nb, carry.elem_offset if carry is not None else 0,
        int(carry is not None))
    _launch("block", op, acc, x, out, carry, "final", p, codegen.grid(rows * nb))


def _scan_columns(op, acc, x, out, outer, D, inner, so, sd, si):
    """out[outer, D, inner] (contiguous) = inclusive scan along D of x with strides (so, sd, si)."""
    threads = outer * inner
    nc = 1
    if threads < COLUMN_THREADS and D > SHORT_ROW:
        nc = max(1, min(-(-D // 16), -(-COLUMN_THREADS // threads)))
    chunk = -(-D // nc)
    nc = -(-D // chunk)
    carry = None
    if nc > 1:
        totals = empty([outer, nc, inner], _acc_dtype(acc))
        p = codegen.Params()
        p.u(outer, D, inner, x.elem_offset, so, sd, si, totals.elem_offset, chunk, nc, 0, 0)
        _launch("column", op, acc, x, totals, None, "totals", p, codegen.groups_for(threads * nc, 64))
        carry = empty([outer, nc, inner], _acc_dtype(acc))
        scan_into(op, totals, carry, 1)
    p = codegen.Params()
    p.u(outer, D, inner, x.elem_offset, so, sd, si, out.elem_offset, chunk, nc,
        carry.elem_offset if carry is not None else 0, int(carry is not None))
    _launch("column", op, acc, x, out, carry, "final", p, codegen.groups_for(threads * nc, 64))


def scan_into(op: str, x: WgpuTensor, out: WgpuTensor, dim: int) -> WgpuTensor:
    """out (contiguous, x's shape) = inclusive scan of x along dim with `op` (sum, prod, logsumexp)."""
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


def scan(op: str, x: WgpuTensor, dim: int, out_dtype: torch.dtype) -> WgpuTensor:
    dim = wrap_dim(dim, x.dim())
    return scan_into(op, x, empty(x.shape, out_dtype), dim)


def _int_promoted(x, dtype):
    if dtype is not None:
        return dtype
    return x.dtype if x.dtype.is_floating_point else torch.int64


@implements(aten.cumsum.default)
def cumsum(x, dim, *, dtype=None):
    return scan("sum", x, dim, _int_promoted(x, dtype))


@implements(aten.cumsum_.default)
def cumsum_(x, dim, *, dtype=None):
    from navitrain.wgpu.kernels.copy import copy_into

    return copy_into(x, cumsum(x, dim, dtype=dtype))


@implements(aten.cumsum.out)
def cumsum_out(x, dim, *, dtype=None, out):
    from navitrain.wgpu.kernels.copy import copy_into

    return copy_into(out, cumsum(x, dim, dtype=dtype))


@implements(aten.cumprod.default)
def cumprod(x, dim, *, dtype=None):
    return scan("prod", x, dim, _int_promoted(x, dtype))


@implements(aten.cumprod_.default)
def cumprod_(x, dim, *, dtype=None):
    from navitrain.wgpu.kernels.copy import copy_into

    return copy_into(x, cumprod(x, dim, dtype=dtype))


@implements(aten.logcumsumexp.default)
def logcumsumexp(x, dim):
    if not x.dtype.is_floating_point:
        raise RuntimeError(f"logcumsumexp(): expected a floating point input, got {x.dtype}")
    if x.dim() == 0 or x.numel() == 0:
        return scan("logsumexp", x, dim, x.dtype)
    # The CPU accumulates in double; an f32 scan rounds every step to the ulp of the running result,
    # which is coarse far from 0 (the gradient scans log|grad| - result, about -1e4 when an input is 1e4).
    # A second scan of x - max(x) along the dim keeps results near the max fine-grained; each element
    # takes whichever scan ran closer to 0.
    wide = x if x.dtype == torch.float32 else aten._to_copy.default(x, dtype=torch.float32)
    top = aten.amax.default(wide, [dim], True)
    shift = aten.where.ScalarOther(aten.isfinite.default(top), top, 0.0)
    plain = scan("logsumexp", wide, dim, torch.float32)
    shifted = aten.add_.Tensor(scan("logsumexp", aten.sub.Tensor(wide, shift), dim, torch.float32), shift)
    nearer = aten.lt.Tensor(aten.abs.default(aten.sub.Tensor(plain, shift)), aten.abs.default(plain))
    out = aten.where.self(nearer, shifted, plain)
    return out if x.dtype == torch.float32 else aten._to_copy.default(out, dtype=x.dtype)
