"""The sort engine: the first k of each row along a dim in sorted order (sort, argsort, topk, kthvalue,
median and unique are built on it), and the key sort that the deterministic scatter-accumulate ops use.

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

from navitrain.wgpu.dims import contiguous
from navitrain.wgpu.kernels import codegen
from navitrain.wgpu.kernels.scan import row_geometry
from navitrain.wgpu.runtime import runtime
from navitrain.wgpu.tensor import WgpuTensor, empty

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
# Rows of length L (x's row `row` at x_off + (row / inner) * so + pos * sd + (row % inner) * si, or pairs
# read from kin/pin), cut into segments of P (a power of two), tpr tiles per row, rpt rows per tile; each
# segment keeps its first `keep`, written as pairs in output rows of `lout` or as values and indices.
_TILE_P = codegen.ParamBlock("rows", "L", "x_off", "so", "sd", "si", "inner", "P", "tpr", "rpt", "keep",
                             "kin_off", "pin_off", "kout_off", "pout_off", "vals_off", "inds_off", "lout",
                             defaults={"kin_off": 0, "pin_off": 0, "kout_off": 0, "pout_off": 0, "vals_off": 0,
                                       "inds_off": 0})


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
    x_at = "xs[x_off + (row / inner) * so + {p} * sd + (row % inner) * si]"
    if pairs_in:
        load = "\n".join(f"      sk[s * {kw}u + {w}u] = kin[kin_off + (row * L + pos) * {kw}u + {w}u];"
                         for w in range(kw))
        load += "\n      sv[s] = pin[pin_off + row * L + pos];"
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
      let o = row / inner; let i = row % inner;
      let rel = (o * keep + r) * inner + i;
      vals[vals_off + rel] = {x_at.format(p="src")};
      inds[inds_off + rel] = {i64_st.store('src')};"""
        kept = "r < keep && r < L"
    else:
        store = "\n".join(f"      kout[kout_off + at * {kw}u + {w}u] = sk[s * {kw}u + {w}u];" for w in range(kw))
        store = f"\n      let at = row * lout + chunk * keep + r;\n{store}\n      pout[pout_off + at] = sv[s];"
        kept = "r < keep && chunk * keep + r < lout"
    body = _TILE_P.wgsl() + f"""
  let chunk = group % tpr;
  let row0 = (group / tpr) * rpt;
  if (row0 >= rows) {{ return; }}
  for (var s = lid; s < {T}u; s = s + {WG}u) {{
    let row = row0 + s / P; let pos = chunk * {T}u + s % P;
    if (row < rows && pos < L && s % P < L) {{
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
    if (row < rows && {kept}) {{{store}
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
    offsets = ({"vals_off": a.elem_offset, "inds_off": b.elem_offset} if final_out is not None
               else {"kout_off": a.elem_offset, "pout_off": b.elem_offset})
    if kin is not None:
        offsets.update(kin_off=kin.elem_offset, pin_off=pin.elem_offset)
    params = _TILE_P.pack(rows=rows, L=L, x_off=x.elem_offset, so=so, sd=sd, si=si, inner=inner, P=P, tpr=tpr,
                          rpt=rpt, keep=kout, lout=Lout, **offsets)
    heaps = (x._ws.heap,) + ((kin._ws.heap, pin._ws.heap) if kin is not None else ()) + (a._ws.heap, b._ws.heap)
    n_tiles = -(-rows // rpt) * tpr
    rt.dispatch(kernel, heaps, params, codegen.grid(n_tiles))


# -- merging sorted runs --------------------------------------------------------------------------------
# Rows of L pairs made of sorted runs of `width`: each element finds its place in its partner run.
_MERGE_P = codegen.ParamBlock("rows", "L", "width", "kin_off", "pin_off", "kout_off", "pout_off")


def _merge_source(kw):
    mine = "\n".join(f"  let m{w} = kin[kin_off + e * {kw}u + {w}u];" for w in range(kw))
    gt = _greater(kw, "m{w}", f"kin[kin_off + (rowbase + mid) * {kw}u + {{w}}u]", "mp", "pin[pin_off + rowbase + mid]")
    copy = "\n".join(f"  kout[kout_off + dst * {kw}u + {w}u] = m{w};" for w in range(kw))
    body = _MERGE_P.wgsl() + f"""
  if (gi >= rows * L) {{ return; }}
  let row = gi / L; let pos = gi % L; let rowbase = row * L; let e = gi;
  let start = (pos / width) * width;
  let pstart = start ^ width;
{mine}
  let mp = pin[pin_off + e];
  var dst = e;
  if (pstart < L) {{
    var lo = pstart; var hi = min(pstart + width, L);
    while (lo < hi) {{
      let mid = (lo + hi) >> 1u;
      if ({gt}) {{ lo = mid + 1u; }} else {{ hi = mid; }}
    }}
    dst = rowbase + min(start, pstart) + (pos - start) + (lo - pstart);
  }}
{copy}
  pout[pout_off + dst] = mp;"""
    return codegen.module(["u32", "u32", "u32", "u32"], body, WG, names=["kin", "pin", "kout", "pout"])


def _merge_all(kw, keys, pos, rows, L):
    """Merge runs of TILE[kw] into whole sorted rows; returns the (keys, positions) holding the result."""
    rt = runtime()
    kernel = rt.kernel(("sort_merge", kw), "sort_merge", 4, lambda: _merge_source(kw))
    w = TILE[kw]
    keys2, pos2 = empty(keys.shape, torch.int32), empty(pos.shape, torch.int32)
    while w < L:
        params = _MERGE_P.pack(rows=rows, L=L, width=w, kin_off=keys.elem_offset, pin_off=pos.elem_offset,
                               kout_off=keys2.elem_offset, pout_off=pos2.elem_offset)
        rt.dispatch(kernel, (keys._ws.heap, pos._ws.heap, keys2._ws.heap, pos2._ws.heap), params,
                    codegen.groups_for(rows * L, WG))
        keys, keys2, pos, pos2 = keys2, keys, pos2, pos
        w *= 2
    return keys, pos


# The first `keep` positions of each sorted row of L (pin) gathered from x into values and indices.
_EMIT_P = codegen.ParamBlock("rows", "L", "keep", "x_off", "so", "sd", "si", "inner", "pin_off", "vals_off",
                             "inds_off")


def _emit_source(x_st, i64_st):
    body = _EMIT_P.wgsl() + f"""
  if (gi >= rows * keep) {{ return; }}
  let row = gi / keep; let r = gi % keep;
  let src = pin[pin_off + row * L + r];
  let o = row / inner; let i = row % inner;
  let at = (o * keep + r) * inner + i;
  vals[vals_off + at] = xs[x_off + o * so + src * sd + i * si];
  inds[inds_off + at] = {i64_st.store('src')};"""
    return codegen.module([x_st.wgsl, "u32", x_st.wgsl, i64_st.wgsl], body, WG, names=["xs", "pin", "vals", "inds"])


def _emit(x, geo, pos, rows, L, kout, vals, inds):
    rt = runtime()
    x_st, i64_st = rt.stypes[x.dtype], rt.stypes[torch.int64]
    _, so, sd, si, inner = geo
    kernel = rt.kernel(("sort_emit", x.dtype), "sort_emit", 4, lambda: _emit_source(x_st, i64_st))
    params = _EMIT_P.pack(rows=rows, L=L, keep=kout, x_off=x.elem_offset, so=so, sd=sd, si=si, inner=inner,
                          pin_off=pos.elem_offset, vals_off=vals.elem_offset, inds_off=inds.elem_offset)
    rt.dispatch(kernel, (x._ws.heap, pos._ws.heap, vals._ws.heap, inds._ws.heap), params,
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
    keys = contiguous(keys)
    rows, L = keys.shape
    return sort_pairs(keys, (None, L, 1, 0, 1), 1, False, rows, L)
