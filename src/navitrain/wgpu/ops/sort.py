"""Sorting and selection along a dim: sort (stable or not, descending), argsort, topk, kthvalue, median,
and the key sort that the deterministic scatter-accumulate ops are built on.

Every element becomes a (key, position) pair whose key is an unsigned integer that orders like the value
(floats: sign-flipped bits; NaN made the largest, as PyTorch sorts it; -0.0 made equal to +0.0;
descending flips all bits). Pairs compare by key, then by position, so the order is total and every sort
is stable (which is also a valid answer where PyTorch does not ask for stability).
- A tile of 2048 pairs (1024 for 64-bit keys) is sorted by one workgroup with a bitonic network in
  workgroup memory; short rows are packed several to a tile (a bitonic network over aligned blocks of a
  power-of-two size sorts each block on its own).
- Longer rows: tiles are sorted, then merged pairwise in global memory, one thread per element finding
  its place in the partner run by binary search (log2(rows / 2048) passes).
- topk/kthvalue with a small k on long rows never sort everything: each tile keeps only its best k, and
  the survivors are tiled again until one tile is left.
Values are gathered from the input by position, so they come back bit-exact (-0.0 and NaN payloads kept).
"""
from __future__ import annotations

import torch

from navitrain.wgpu.kernels import codegen
from navitrain.wgpu.dispatch import implements
from navitrain.wgpu.ops.scan import row_geometry, wrap_dim
from navitrain.wgpu.runtime import runtime
from navitrain.wgpu.tensor import WgpuTensor, empty

aten = torch.ops.aten

WG = 256
TILE = {1: 2048, 2: 1024}   # pairs per workgroup tile by key words: (4 * words + 4) * tile <= 16 KiB
PAD = "0xffffffffu"


def _key_words(dtype: torch.dtype) -> int:
    return 2 if runtime().stypes[dtype].wgsl == "i64" else 1


def _next_pow2(n: int) -> int:
    p = 1
    while p < n:
        p <<= 1
    return p


KEY_HELPERS = """
fn sort_key_f32(v: f32) -> u32 {
  let u = bitcast<u32>(v);
  if ((u & 0x7fffffffu) > 0x7f800000u) { return 0xffffffffu; }
  if ((u & 0x7fffffffu) == 0u) { return 0x80000000u; }
  return select(u | 0x80000000u, ~u, (u & 0x80000000u) != 0u);
}
"""


def _key_exprs(st, expr: str, kw: int, descending: bool) -> list[str]:
    """WGSL for the key words of the stored element `expr`."""
    if st.kind == "float":
        words = [f"sort_key_f32({st.load(expr, 'f32')})"]
    elif kw == 2:
        words = [f"(u32(({expr}) >> 32u) ^ 0x80000000u)", f"u32(({expr}) & 0xffffffffli)"]
    else:
        words = [f"(bitcast<u32>({st.load(expr, 'i32')}) ^ 0x80000000u)"]
    return [f"(~{w})" for w in words] if descending else words


def _greater(kw: int, ka: str, kb: str, ia: str, ib: str) -> str:
    """WGSL: pair a > pair b, with key word w of a at `ka.format(w)` and its position at `ia`."""
    expr = f"({ia} > {ib})"
    for w in reversed(range(kw)):
        a, b = ka.format(w=w), kb.format(w=w)
        expr = f"({a} > {b} || ({a} == {b} && {expr}))"
    return expr


# -- the tile kernel --------------------------------------------------------------------------------
# Params: 0 rows, 1 L (length of the rows sorted), 2 x off, 3 so, 4 sd, 5 si, 6 inner, 7 P (segment
# size), 8 tiles per row, 9 rows per tile, 10 kout (kept per segment), 11 key in off, 12 pos in off,
# 13 key out off, 14 pos out off, 15 values off, 16 indices off, 17 Lout (length of output rows).
def _tile_source(x_st, i64_st, kw, descending, pairs_in, final_out):
    T = TILE[kw]
    names = ["xs"]
    types = [x_st.wgsl]
    if pairs_in:
        names += ["kin", "pin"]
        types += ["u32", "u32"]
    if final_out:
        names += ["vals", "inds"]
        types += [x_st.wgsl, i64_st.wgsl]
    else:
        names += ["kout", "pout"]
        types += ["u32", "u32"]
    x_at = "xs[pu(2u) + (row / pu(6u)) * pu(3u) + {p} * pu(4u) + (row % pu(6u)) * pu(5u)]"
    if pairs_in:
        load = "\n".join(f"      sk[s * {kw}u + {w}u] = kin[pu(11u) + (row * L + pos) * {kw}u + {w}u];"
                         for w in range(kw))
        load += "\n      sv[s] = pin[pu(12u) + row * L + pos];"
    else:
        keys = _key_exprs(x_st, x_at.format(p="pos"), kw, descending)
        load = "\n".join(f"      sk[s * {kw}u + {w}u] = {k};" for w, k in enumerate(keys))
        load += "\n      sv[s] = pos;"
    pad = "\n".join(f"      sk[s * {kw}u + {w}u] = {PAD};" for w in range(kw)) + f"\n      sv[s] = {PAD};"
    gt = _greater(kw, f"sk[a * {kw}u + {{w}}u]", f"sk[b * {kw}u + {{w}}u]", "sv[a]", "sv[b]")
    swap = "\n".join(f"        let t{w} = sk[a * {kw}u + {w}u]; sk[a * {kw}u + {w}u] = sk[b * {kw}u + {w}u]; "
                     f"sk[b * {kw}u + {w}u] = t{w};" for w in range(kw))
    if final_out:
        store = f"""
      let src = sv[s];
      let o = row / pu(6u); let i = row % pu(6u);
      let rel = (o * pu(10u) + r) * pu(6u) + i;
      vals[pu(15u) + rel] = {x_at.format(p="src")};
      inds[pu(16u) + rel] = {i64_st.store('src')};"""
        keep = "r < pu(10u) && r < L"
    else:
        store = "\n".join(f"      kout[pu(13u) + at * {kw}u + {w}u] = sk[s * {kw}u + {w}u];" for w in range(kw))
        store = f"\n      let at = row * pu(17u) + chunk * pu(10u) + r;\n{store}\n      pout[pu(14u) + at] = sv[s];"
        keep = "r < pu(10u) && chunk * pu(10u) + r < pu(17u)"
    body = f"""
  let L = pu(1u); let P = pu(7u); let tpr = pu(8u); let rpt = pu(9u);
  let chunk = group % tpr;
  let row0 = (group / tpr) * rpt;
  if (row0 >= pu(0u)) {{ return; }}
  for (var s = lid; s < {T}u; s = s + {WG}u) {{
    let row = row0 + s / P; let pos = chunk * {T}u + s % P;
    if (row < pu(0u) && pos < L && s % P < L) {{
{load}
    }} else {{
{pad}
    }}
  }}
  workgroupBarrier();
  for (var k = 2u; k <= P; k = k << 1u) {{
    for (var j = k >> 1u; j > 0u; j = j >> 1u) {{
      for (var q = lid; q < {T // 2}u; q = q + {WG}u) {{
        let a = ((q & ~(j - 1u)) << 1u) | (q & (j - 1u));
        let b = a + j;
        let up = (k == P) || ((a & k) == 0u);
        if ({gt} == up) {{
{swap}
          let tv = sv[a]; sv[a] = sv[b]; sv[b] = tv;
        }}
      }}
      workgroupBarrier();
    }}
  }}
  for (var s = lid; s < {T}u; s = s + {WG}u) {{
    let row = row0 + s / P; let r = s % P;
    if (row < pu(0u) && {keep}) {{{store}
    }}
  }}"""
    shared = f"var<workgroup> sk: array<u32, {T * kw}>;\nvar<workgroup> sv: array<u32, {T}>;\n"
    return codegen.module(types, body, WG, helpers=KEY_HELPERS, shared=shared, names=names)


def _tile(x, geo, kw, descending, rows, L, P, tpr, rpt, kout, Lout, pairs_in=None, final_out=None, temp_out=None):
    rt = runtime()
    x_st, i64_st = rt.stypes[x.dtype], rt.stypes[torch.int64]
    _, so, sd, si, inner = geo
    key = ("sort_tile", x.dtype, kw, descending, pairs_in is not None, final_out is not None)
    kernel = rt.kernel(key, "sort_tile", 5 if pairs_in is not None else 3,
                       lambda: _tile_source(x_st, i64_st, kw, descending, pairs_in is not None, final_out is not None))
    kin, pin = pairs_in if pairs_in is not None else (None, None)
    a, b = final_out if final_out is not None else temp_out
    p = codegen.Params()
    p.u(rows, L, x.elem_offset, so, sd, si, inner, P, tpr, rpt, kout,
        kin.elem_offset if kin is not None else 0, pin.elem_offset if pin is not None else 0,
        0 if final_out else a.elem_offset, 0 if final_out else b.elem_offset,
        a.elem_offset if final_out else 0, b.elem_offset if final_out else 0, Lout)
    heaps = (x._ws.heap,) + ((kin._ws.heap, pin._ws.heap) if kin is not None else ()) + (a._ws.heap, b._ws.heap)
    n_tiles = -(-rows // rpt) * tpr
    rt.dispatch(kernel, heaps, p.pack(), codegen.grid(n_tiles))


# -- merging sorted runs --------------------------------------------------------------------------------
# Params: 0 rows, 1 L, 2 run width, 3 key in off, 4 pos in off, 5 key out off, 6 pos out off.
def _merge_source(kw):
    mine = "\n".join(f"  let m{w} = kin[pu(3u) + e * {kw}u + {w}u];" for w in range(kw))
    gt = _greater(kw, "m{w}", f"kin[pu(3u) + (rowbase + mid) * {kw}u + {{w}}u]", "mp", "pin[pu(4u) + rowbase + mid]")
    copy = "\n".join(f"  kout[pu(5u) + dst * {kw}u + {w}u] = m{w};" for w in range(kw))
    body = f"""
  let L = pu(1u); let w = pu(2u);
  if (gi >= pu(0u) * L) {{ return; }}
  let row = gi / L; let pos = gi % L; let rowbase = row * L; let e = gi;
  let start = (pos / w) * w;
  let pstart = start ^ w;
{mine}
  let mp = pin[pu(4u) + e];
  var dst = e;
  if (pstart < L) {{
    var lo = pstart; var hi = min(pstart + w, L);
    while (lo < hi) {{
      let mid = (lo + hi) >> 1u;
      if ({gt}) {{ lo = mid + 1u; }} else {{ hi = mid; }}
    }}
    dst = rowbase + min(start, pstart) + (pos - start) + (lo - pstart);
  }}
{copy}
  pout[pu(6u) + dst] = mp;"""
    return codegen.module(["u32", "u32", "u32", "u32"], body, WG, names=["kin", "pin", "kout", "pout"])


def _merge_all(kw, keys, pos, rows, L):
    """Merge runs of TILE[kw] into whole sorted rows; returns the (keys, positions) holding the result."""
    rt = runtime()
    kernel = rt.kernel(("sort_merge", kw), "sort_merge", 4, lambda: _merge_source(kw))
    w = TILE[kw]
    keys2, pos2 = empty(keys.shape, torch.int32), empty(pos.shape, torch.int32)
    while w < L:
        p = codegen.Params()
        p.u(rows, L, w, keys.elem_offset, pos.elem_offset, keys2.elem_offset, pos2.elem_offset)
        rt.dispatch(kernel, (keys._ws.heap, pos._ws.heap, keys2._ws.heap, pos2._ws.heap), p.pack(),
                    codegen.groups_for(rows * L, WG))
        keys, keys2, pos, pos2 = keys2, keys, pos2, pos
        w *= 2
    return keys, pos


# Params: 0 rows, 1 L, 2 kout, 3 x off, 4 so, 5 sd, 6 si, 7 inner, 8 pos off, 9 values off, 10 indices off.
def _emit_source(x_st, i64_st):
    body = f"""
  let kout = pu(2u); let inner = pu(7u);
  if (gi >= pu(0u) * kout) {{ return; }}
  let row = gi / kout; let r = gi % kout;
  let src = pin[pu(8u) + row * pu(1u) + r];
  let o = row / inner; let i = row % inner;
  let at = (o * kout + r) * inner + i;
  vals[pu(9u) + at] = xs[pu(3u) + o * pu(4u) + src * pu(5u) + i * pu(6u)];
  inds[pu(10u) + at] = {i64_st.store('src')};"""
    return codegen.module([x_st.wgsl, "u32", x_st.wgsl, i64_st.wgsl], body, WG, names=["xs", "pin", "vals", "inds"])


def _emit(x, geo, pos, rows, L, kout, vals, inds):
    rt = runtime()
    x_st, i64_st = rt.stypes[x.dtype], rt.stypes[torch.int64]
    _, so, sd, si, inner = geo
    kernel = rt.kernel(("sort_emit", x.dtype), "sort_emit", 4, lambda: _emit_source(x_st, i64_st))
    p = codegen.Params()
    p.u(rows, L, kout, x.elem_offset, so, sd, si, inner, pos.elem_offset, vals.elem_offset, inds.elem_offset)
    rt.dispatch(kernel, (x._ws.heap, pos._ws.heap, vals._ws.heap, inds._ws.heap), p.pack(),
                codegen.groups_for(rows * kout, WG))


# -- drivers ------------------------------------------------------------------------------------------
def _packing(L: int, T: int) -> tuple[int, int, int]:
    """(segment size P, tiles per row, rows per tile) for rows of length L."""
    if L <= T:
        P = _next_pow2(max(L, 1))
        return P, 1, T // P
    return T, -(-L // T), 1


def select_rows(x: WgpuTensor, dim: int, k: int, descending: bool):
    """The first k of each row of `x` along `dim` in sorted order (stable): (values, int64 indices), both
    shaped like x with `dim` of size k, contiguous."""
    x, outer, L, inner, so, sd, si = row_geometry(x, dim)
    shape = list(x.shape)
    if shape:
        shape[dim] = k
    vals, inds = empty(shape, x.dtype), empty(shape, torch.int64)
    rows = outer * inner
    if rows == 0 or k == 0:
        return vals, inds
    kw = _key_words(x.dtype)
    T = TILE[kw]
    geo = (None, so, sd, si, inner)
    if L <= T:
        P, tpr, rpt = _packing(L, T)
        _tile(x, geo, kw, descending, rows, L, P, tpr, rpt, k, k, final_out=(vals, inds))
        return vals, inds
    if k <= T // 4:
        # Keep each tile's best k, then tile the survivors again, until they fit one tile.
        pairs, cur = None, L
        while cur > T:
            nseg = -(-cur // T)
            lout = nseg * k
            keys_o, pos_o = empty([rows * lout * kw], torch.int32), empty([rows * lout], torch.int32)
            _tile(x, geo, kw, descending, rows, cur, T, nseg, 1, k, lout, pairs_in=pairs, temp_out=(keys_o, pos_o))
            pairs, cur = (keys_o, pos_o), lout
        P, tpr, rpt = _packing(cur, T)
        _tile(x, geo, kw, descending, rows, cur, P, tpr, rpt, k, k, pairs_in=pairs, final_out=(vals, inds))
        return vals, inds
    _, pos = sort_pairs(x, geo, kw, descending, rows, L)
    _emit(x, geo, pos, rows, L, k, vals, inds)
    return vals, inds


def sort_pairs(x, geo, kw, descending, rows, L):
    """Whole rows sorted into (keys, positions) buffers of rows * L pairs (int32 tensors read as u32)."""
    T = TILE[kw]
    keys, pos = empty([rows * L * kw], torch.int32), empty([rows * L], torch.int32)
    P, tpr, rpt = _packing(L, T)
    _tile(x, geo, kw, descending, rows, L, P, tpr, rpt, T if tpr > 1 else P, L, temp_out=(keys, pos))
    if L > T:
        keys, pos = _merge_all(kw, keys, pos, rows, L)
    return keys, pos


def sort_int_keys(keys: WgpuTensor):
    """Stable ascending sort of each row of a contiguous 2-D int32 tensor: (sorted keys stored as
    key ^ 0x80000000 in an int32 tensor, original positions as int32), both rows * L elements."""
    from navitrain.wgpu.ops.scan import contiguous

    keys = contiguous(keys)
    rows, L = keys.shape
    return sort_pairs(keys, (None, L, 1, 0, 1), 1, False, rows, L)


# -- aten ops -------------------------------------------------------------------------------------------
def _sort(x, dim, descending):
    d = wrap_dim(dim, x.dim())
    n = x.shape[d] if x.dim() else 1
    return select_rows(x, d, n, descending)


@implements(aten.sort.default)
def sort(x, dim=-1, descending=False):
    return _sort(x, dim, descending)


@implements(aten.sort.stable)
def sort_stable(x, *, stable=None, dim=-1, descending=False):
    return _sort(x, dim, descending)


@implements(aten.sort.values_stable)
def sort_values_stable(x, *, stable=None, dim=-1, descending=False, values, indices):
    from navitrain.wgpu.kernels.copy import copy_into

    v, i = _sort(x, dim, descending)
    _resize_like(values, v), _resize_like(indices, i)
    return copy_into(values, v), copy_into(indices, i)


def _resize_like(out, t):
    if tuple(out.shape) != tuple(t.shape):
        aten.resize_.default(out, list(t.shape))


@implements(aten.argsort.default)
def argsort(x, dim=-1, descending=False):
    return _sort(x, dim, descending)[1]


@implements(aten.argsort.stable)
def argsort_stable(x, *, stable, dim=-1, descending=False):
    return _sort(x, dim, descending)[1]


@implements(aten.msort.default)
def msort(x):
    return _sort(x, 0, False)[0]


@implements(aten.topk.default)
def topk(x, k, dim=-1, largest=True, sorted=True):
    d = wrap_dim(dim, x.dim())
    n = x.shape[d] if x.dim() else 1
    if not 0 <= k <= n:
        raise RuntimeError(f"selected index k out of range (k = {k}, size along dim = {n})")
    return select_rows(x, d, k, largest)


def _kth(x, k, d, keepdim):
    vals, inds = select_rows(x, d, k, False)
    if not x.dim():
        return vals, inds
    v, i = aten.select.int(vals, d, k - 1), aten.select.int(inds, d, k - 1)
    if keepdim and x.dim():
        v, i = aten.unsqueeze.default(v, d), aten.unsqueeze.default(i, d)
    return aten.clone.default(v), aten.clone.default(i)


@implements(aten.kthvalue.default)
def kthvalue(x, k, dim=-1, keepdim=False):
    d = wrap_dim(dim, x.dim())
    n = x.shape[d] if x.dim() else 1
    if not 1 <= k <= n:
        raise RuntimeError(f"kthvalue(): selected number k out of range for dimension {d}")
    return _kth(x, k, d, keepdim)


def _median(x, d, keepdim):
    """PyTorch's median: the lower median, or the first NaN of a row that has one."""
    from navitrain.wgpu.kernels import pointwise
    from navitrain.wgpu.kernels.reduction import reduce

    n = x.shape[d] if x.dim() else 1
    if n == 0:
        raise IndexError("median(): Expected reduction dim to have non-zero size.")
    v, i = _kth(x, (n - 1) // 2 + 1, d, keepdim)
    if not x.dtype.is_floating_point:
        return v, i
    nan = pointwise.run("isnan_bits", "select(0.0, 1.0, is_nan(a))", [x], torch.float32, "f32")
    has, first = reduce(nan, [d] if x.dim() else None, keepdim, "argmax", torch.float32)
    v = pointwise.run("median_nan", "select(a, b, c != 0.0)", [v, _nan_like(v), has], x.dtype, "f32",
                      shape=tuple(v.shape))
    ic = runtime().stypes[torch.int64].compute
    i = pointwise.run("median_nan_i", "select(a, b, c != 0.0)", [i, first, has], torch.int64, ic,
                      load_types=[ic, ic, "f32"], shape=tuple(i.shape))
    return v, i


def _nan_like(v):
    from navitrain.wgpu.kernels.copy import fill

    return fill(empty([], v.dtype), float("nan"))


@implements(aten.median.dim)
def median_dim(x, dim, keepdim=False):
    return _median(x, wrap_dim(dim, x.dim()), keepdim)


@implements(aten.median.default)
def median(x):
    flat = aten.reshape.default(x, [-1])
    return _median(flat, 0, False)[0]


# -- unique: sort, mark the first of each run, count (one host read-back: the size depends on the data) --
# Params: 0 N, 1 sorted values off, 2 run counts off, 3 positions off, 4 values out off, 5 inverse off,
# 6 run starts off.
def _unique_source(v_st, i64_st, with_inverse):
    inverse = (f"\n  inverse[pu(5u) + u32({i64_st.load('perm[pu(3u) + j]', 'i32')})] = {i64_st.store('u')};"
               if with_inverse else "")
    body = f"""
  if (gi >= pu(0u)) {{ return; }}
  let j = gi;
  let u = runs[pu(2u) + j] - 1;{inverse}
  if (j == 0u || runs[pu(2u) + j] != runs[pu(2u) + j - 1u]) {{  // a head (see unique_head)
    uniq[pu(4u) + u32(u)] = sorted[pu(1u) + j];
    starts[pu(6u) + u32(u)] = i32(j);
  }}"""
    return codegen.module([v_st.wgsl, "i32", i64_st.wgsl, v_st.wgsl, i64_st.wgsl, "i32"], body, WG,
                          names=["sorted", "runs", "perm", "uniq", "inverse", "starts"])


def unique_sorted(x: WgpuTensor, return_inverse: bool, return_counts: bool):
    from navitrain.wgpu.kernels import pointwise
    from navitrain.wgpu.ops.scan import scan_into
    from navitrain.wgpu.tensor import to_cpu

    rt = runtime()
    n = x.numel()
    flat = aten.reshape.default(x, [n])
    inverse = empty(x.shape, torch.int64)
    if n == 0:
        return empty([0], x.dtype), inverse, empty([0], torch.int64)
    vals, perm = select_rows(flat, 0, n, False)
    prev = aten.slice.Tensor(vals, 0, 0, n - 1)
    heads = empty([n], torch.int32)
    aten.fill_.Scalar(aten.slice.Tensor(heads, 0, 0, 1), 1)
    # Every NaN is its own value (NaN != NaN, as on the CPU); lavapipe evaluates != as ordered, false for NaN.
    compute = pointwise.compute_type(x.dtype)
    differs = "a != b || is_nan(a) || is_nan(b)" if compute == "f32" else "a != b"
    pointwise.run("unique_head", f"select(0, 1, {differs})", [aten.slice.Tensor(vals, 0, 1, n), prev], torch.int32,
                  compute, out=aten.slice.Tensor(heads, 0, 1, n))
    runs = scan_into("sum", aten.reshape.default(heads, [1, n]), empty([1, n], torch.int32), 1)
    count = int(to_cpu(aten.slice.Tensor(aten.reshape.default(runs, [n]), 0, n - 1, n))[0])
    uniq, starts = empty([count], x.dtype), empty([count + 1], torch.int32)
    v_st, i64_st = rt.stypes[x.dtype], rt.stypes[torch.int64]
    kernel = rt.kernel(("unique", x.dtype), "unique", 6, lambda: _unique_source(v_st, i64_st, True))
    p = codegen.Params()
    p.u(n, vals.elem_offset, runs.elem_offset, perm.elem_offset, uniq.elem_offset, inverse.elem_offset,
        starts.elem_offset)
    rt.dispatch(kernel, (vals._ws.heap, runs._ws.heap, perm._ws.heap, uniq._ws.heap, inverse._ws.heap, starts._ws.heap),
                p.pack(), codegen.groups_for(n, WG))
    counts = empty([0], torch.int64)
    if return_counts:
        aten.fill_.Scalar(aten.slice.Tensor(starts, 0, count, count + 1), n)
        counts = pointwise.run("unique_counts", "i64(a) - i64(b)" if i64_st.wgsl == "i64" else "a - b",
                               [aten.slice.Tensor(starts, 0, 1, count + 1), aten.slice.Tensor(starts, 0, 0, count)],
                               torch.int64, i64_st.compute)
    return uniq, inverse if return_inverse else empty([0], torch.int64), counts


@implements(aten._unique.default)
def _unique(x, sorted=True, return_inverse=False):
    uniq, inverse, _ = unique_sorted(x, return_inverse, False)
    return uniq, inverse


@implements(aten._unique2.default)
def _unique2(x, sorted=True, return_inverse=False, return_counts=False):
    return unique_sorted(x, return_inverse, return_counts)
