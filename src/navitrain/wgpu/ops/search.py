"""Running extremes, sorted search and counting: cummax/cummin, searchsorted, histc, bincount.

- cummax/cummin: one thread walks each row along `dim` (rows are independent; the walk is the CPU's own
  loop, so NaN and ties follow it: a NaN wins and stays, a tie takes the later index).
- searchsorted: one thread per value, a binary search of its row of boundaries with the CPU's
  comparisons (`!(mid >= v)` for left, `!(mid > v)` for right), so NaN values land past the end.
- histc/bincount: one thread per element adding into a bin with an atomic add (integer counts; float
  weights through a compare-exchange loop, so weighted sums are in another order than the CPU's).
  Integer histc, which the CPU refuses, follows CUDA (transformers' MoE routing calls it off the CPU).
"""
from __future__ import annotations

import torch

from navitrain.wgpu.dims import contiguous, wrap_dim
from navitrain.wgpu.dispatch import implements
from navitrain.wgpu.dtypes import NoKernelForDtype
from navitrain.wgpu.kernels import codegen, wgsl_math
from navitrain.wgpu.kernels.scan import row_geometry
from navitrain.wgpu.runtime import runtime
from navitrain.wgpu.tensor import empty, to_cpu

aten = torch.ops.aten


def _helpers() -> str:
    return wgsl_math.helpers("shader-int64" in runtime().features)


def _compute(dtype: torch.dtype) -> str:
    st = runtime().stypes[dtype]
    if not st.has_kernels:
        raise NoKernelForDtype(f"no wgpu kernels compute in {dtype}")
    return "f32" if dtype.is_floating_point else st.compute


# -- cummax / cummin ----------------------------------------------------------------------------------
# [outer, D, inner] at x_off with strides (so, sd, si); values and indices written contiguous.
_CUM_P = codegen.ParamBlock("outer", "D", "inner", "x_off", "so", "sd", "si", "values_off", "indices_off")


def _cum_source(op, dtype):
    rt = runtime()
    st, ist = rt.stypes[dtype], rt.stypes[torch.int64]
    ct = _compute(dtype)
    better = f"v {'>=' if op == 'max' else '<='} best"
    if ct == "f32":
        better = f"is_nan(v) || (!is_nan(best) && {better})"
    body = _CUM_P.wgsl() + f"""
  if (gi >= outer * inner) {{ return; }}
  let i = gi % inner; let o = gi / inner;
  let src = x_off + o * so + i * si;
  let dst = o * D * inner + i;
  var best: {ct}; var at = 0u;
  for (var p = 0u; p < D; p = p + 1u) {{
    let v = {st.load('b2[src + p * sd]', ct)};
    if (p == 0u || {better}) {{ best = v; at = p; }}
    b0[values_off + dst + p * inner] = {st.store('best')};
    b1[indices_off + dst + p * inner] = {ist.store('at')};
  }}"""
    return codegen.module([st.wgsl, ist.wgsl, st.wgsl], body, 64, helpers=_helpers())


def _cum_extreme(op, x, dim):
    dim = wrap_dim(dim, x.dim())
    values, indices = empty(x.shape, x.dtype), empty(x.shape, torch.int64)
    if x.numel() == 0:
        return values, indices
    src, outer, D, inner, so, sd, si = row_geometry(x, dim)
    rt = runtime()
    kernel = rt.kernel(("cum_extreme", op, x.dtype), f"cum{op}", 3, lambda: _cum_source(op, x.dtype))
    params = _CUM_P.pack(outer=outer, D=D, inner=inner, x_off=src.elem_offset, so=so, sd=sd, si=si,
                         values_off=values.elem_offset, indices_off=indices.elem_offset)
    rt.dispatch(kernel, (values._ws.heap, indices._ws.heap, src._ws.heap), params,
                codegen.groups_for(outer * inner, 64))
    return values, indices


@implements(aten.cummax.default)
def cummax(x, dim):
    return _cum_extreme("max", x, dim)


@implements(aten.cummin.default)
def cummin(x, dim):
    return _cum_extreme("min", x, dim)


# -- searchsorted ---------------------------------------------------------------------------------------
# n values (per_row to a row), each searched in its row of `len` boundaries (the one row unless batched).
_SEARCH_P = codegen.ParamBlock("n", "per_row", "len", "bnd_off", "batched", "values_off", "out_off")


def _search_source(bdtype, vdtype, out_dtype, right):
    rt = runtime()
    bst, vst, ost = rt.stypes[bdtype], rt.stypes[vdtype], rt.stypes[out_dtype]
    ct = "f32" if bdtype.is_floating_point or vdtype.is_floating_point else "i64" if "i64" in (
        bst.compute, vst.compute) else "i32"
    goes_right = "!(m > v)" if right else "!(m >= v)"
    body = _SEARCH_P.wgsl() + f"""
  if (gi >= n) {{ return; }}
  let row_start = bnd_off + select(0u, (gi / per_row) * len, batched != 0u);
  let v = {vst.load('b2[values_off + gi]', ct)};
  var lo = 0u; var hi = len;
  loop {{
    if (lo >= hi) {{ break; }}
    let mid = lo + (hi - lo) / 2u;
    let m = {bst.load('b1[row_start + mid]', ct)};
    if ({goes_right}) {{ lo = mid + 1u; }} else {{ hi = mid; }}
  }}
  b0[out_off + gi] = {ost.store('lo')};"""
    return codegen.module([ost.wgsl, bst.wgsl, vst.wgsl], body, 64, helpers=_helpers())


@implements(aten.searchsorted.Tensor)
def searchsorted(sorted_sequence, values, *, out_int32=False, right=False, side=None, sorter=None):
    if side is not None:
        if side not in ("left", "right"):
            raise RuntimeError(f"torch.searchsorted(): side can only be 'left' or 'right' but got {side}")
        if right and side == "left":
            raise RuntimeError("torch.searchsorted(): side and right can't be set to opposites, got side of "
                               "left while right was True")
        right = side == "right"
    if sorter is not None:
        sorted_sequence = aten.gather.default(sorted_sequence, -1, sorter)
    boundaries, values = contiguous(sorted_sequence), contiguous(values)
    batched = boundaries.dim() > 1
    if batched and tuple(boundaries.shape[:-1]) != tuple(values.shape[:-1]):
        raise RuntimeError("torch.searchsorted(): boundaries tensor should be 1 dimension or the first N-1 "
                           "dimensions of boundaries tensor and input value tensor must match")
    out_dtype = torch.int32 if out_int32 else torch.int64
    out = empty(values.shape, out_dtype)
    n = values.numel()
    if n == 0:
        return out
    length = boundaries.shape[-1] if boundaries.dim() else 1
    per_row = values.shape[-1] if values.dim() else 1
    rt = runtime()
    key = ("searchsorted", boundaries.dtype, values.dtype, out_dtype, bool(right))
    kernel = rt.kernel(key, "searchsorted", 3,
                       lambda: _search_source(boundaries.dtype, values.dtype, out_dtype, bool(right)))
    params = _SEARCH_P.pack(n=n, per_row=max(per_row, 1), len=length, bnd_off=boundaries.elem_offset,
                            batched=int(batched), values_off=values.elem_offset, out_off=out.elem_offset)
    rt.dispatch(kernel, (out._ws.heap, boundaries._ws.heap, values._ws.heap), params, codegen.groups_for(n, 64))
    return out


@implements(aten.searchsorted.Scalar)
def searchsorted_scalar(sorted_sequence, value, *, out_int32=False, right=False, side=None, sorter=None):
    values = aten.full.default([], value, dtype=sorted_sequence.dtype, device=sorted_sequence.device)
    return searchsorted(sorted_sequence, values, out_int32=out_int32, right=right, side=side, sorter=sorter)


# -- histc / bincount -------------------------------------------------------------------------------------
# n elements of x; histc's range [lo, hi] cut into `bins`; float weights at w_off; the bins at acc_off.
_COUNT_P = codegen.ParamBlock("n", "x_off", "bins", "lo: f32", "hi: f32", "w_off", "acc_off")


def _count_source(xdtype, weighted, mode):
    """mode "histc": bin of x in [lo, hi] with `bins` bins (elements outside or NaN are skipped);
    mode "bincount": bin = x. Counts into atomic<i32> b0, or float weights into atomic<u32> b0 (bits)."""
    rt = runtime()
    xst = rt.stypes[xdtype]
    if mode == "histc":
        find = f"""
  let x = {xst.load('b1[x_off + gi]', 'f32')};
  if (!(x >= lo && x <= hi)) {{ return; }}
  let k = min(u32((x - lo) / (hi - lo) * f32(bins)), bins - 1u);"""
    else:
        find = f"""
  let k = u32({xst.load('b1[x_off + gi]', 'i32')});"""
    if weighted:
        add = f"""
  let w = {rt.stypes[torch.float32].load('b2[w_off + gi]', 'f32')};
  loop {{
    let old = atomicLoad(&b0[acc_off + k]);
    if (atomicCompareExchangeWeak(&b0[acc_off + k], old, bitcast<u32>(bitcast<f32>(old) + w)).exchanged) {{ break; }}
  }}"""
        types = ["atomic<u32>", xst.wgsl, "f32"]
    else:
        add = "\n  atomicAdd(&b0[acc_off + k], 1);"
        types = ["atomic<i32>", xst.wgsl, "f32"]
    body = _COUNT_P.wgsl() + f"""
  if (gi >= n) {{ return; }}{find}{add}"""
    return codegen.module(types, body, 64, helpers=_helpers())


def _count(mode, x, bins, lo=0.0, hi=0.0, weights=None):
    """Counts (int32) or float32 weight sums in `bins` bins."""
    x = contiguous(x)
    n = x.numel()
    weighted = weights is not None
    acc = aten.zeros.default([bins], dtype=torch.float32 if weighted else torch.int32, device=x.device)
    if n == 0 or bins == 0:
        return acc
    w = contiguous(weights) if weighted else x
    rt = runtime()
    kernel = rt.kernel(("count", mode, x.dtype, weighted), f"count_{mode}", 3,
                       lambda: _count_source(x.dtype, weighted, mode))
    params = _COUNT_P.pack(n=n, x_off=x.elem_offset, bins=bins, lo=lo, hi=hi,
                           w_off=w.elem_offset if weighted else 0, acc_off=acc.elem_offset)
    rt.dispatch(kernel, (acc._ws.heap, x._ws.heap, w._ws.heap), params, codegen.groups_for(n, 64))
    return acc


def _histc_integer(x, bins, lo, hi):
    """histc of an integer tensor as CUDA computes it (the CPU has no integer kernel; transformers' MoE
    layers count tokens per expert with it on every device but the CPU and MPS): integer bounds, the bin
    (x - lo) * bins // (hi - lo) in int64 arithmetic, x == hi in the last bin, counts in x's dtype.
    Elements outside [lo, hi] are sent to an extra bin that is dropped."""
    wide = aten._to_copy.default(x, dtype=torch.int64)
    offset = aten.sub.Tensor(wide, lo)
    k = aten.div.Tensor_mode(aten.mul.Tensor(offset, bins), hi - lo, rounding_mode="floor")
    k = aten.clamp_max.default(k, bins - 1)
    inside = aten.logical_and.default(aten.ge.Scalar(wide, lo), aten.le.Scalar(wide, hi))
    k = aten.where.ScalarOther(inside, k, bins)
    counts = _count("bincount", aten._to_copy.default(k, dtype=torch.int32), bins + 1)
    return aten._to_copy.default(aten.slice.Tensor(counts, 0, 0, bins), dtype=x.dtype)


@implements(aten.histc.default)
def histc(x, bins=100, min=0, max=0):
    if x.dtype == torch.bool or x.dtype.is_complex:
        raise NotImplementedError(f"\"histogram_cpu\" not implemented for '{str(x.dtype).replace('torch.', '')}'")
    if bins <= 0:
        raise RuntimeError("torch.histc: bins must be > 0, but got %d for dimension 0" % bins)
    if not x.dtype.is_floating_point:
        lo, hi = int(min), int(max)
        if lo == hi and x.numel() > 0:
            lo, hi = (to_cpu(v).item() for v in aten.aminmax.default(x))
        if lo == hi:
            lo, hi = lo - 1, hi + 1
        if lo >= hi:
            raise RuntimeError("torch.histc: max must be larger than min")
        return _histc_integer(x, bins, lo, hi)
    lo, hi = float(min), float(max)
    if lo == hi and x.numel() > 0:
        lo, hi = (to_cpu(v).item() for v in aten.aminmax.default(x))  # one sync, as the CPU reads its data
    if lo == hi:
        lo, hi = lo - 1, hi + 1
    if not (abs(lo) < float("inf") and abs(hi) < float("inf")):
        raise RuntimeError(f"torch.histc: range of [{lo}, {hi}] is not finite")
    if lo > hi:
        raise RuntimeError("torch.histc: max must be larger than min")
    return aten._to_copy.default(_count("histc", x, bins, lo, hi), dtype=x.dtype)


@implements(aten.bincount.default)
def bincount(x, weights=None, minlength=0):
    if x.dim() != 1 or x.dtype.is_floating_point or x.dtype == torch.bool:
        raise RuntimeError("bincount only supports 1-d non-negative integral inputs.")
    if weights is not None and (weights.dtype != torch.float32 or weights.shape != x.shape):
        raise NoKernelForDtype("bincount: float32 weights of the input's shape only")  # counted fallback
    if x.numel() and to_cpu(aten.min.default(x)).item() < 0:
        raise RuntimeError("bincount only supports 1-d non-negative integral inputs.")
    bins = max(to_cpu(aten.max.default(x)).item() + 1 if x.numel() else 0, minlength)
    counts = _count("bincount", x, bins, weights=weights)
    return counts if weights is not None else aten._to_copy.default(counts, dtype=torch.int64)
