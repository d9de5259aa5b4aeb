"""Order statistics and run-based ops along a dim: nanmedian, mode, unique_consecutive, and the data-checking
ops allclose and nonzero_static.

nanmedian and mode sort each row with the sort engine (kernels/sort.py: NaN sorts last, every sort is
stable), then one thread per row reads its sorted row:
- nanmedian: the non-NaN values are the front of the sorted row, so a binary search for the first NaN
  counts them (c); the answer is sorted[(c - 1) / 2] with C's truncation, i.e. sorted[0] (a NaN) when the
  row is all NaN, as on the CPU.
- mode: the CPU sorts the row by value and keeps the first run that is strictly longer than every run
  before it, so the smallest of the most frequent values wins; its index is the last element of that run.
  The CPU's sort is only stable for short rows (insertion sort below 17 elements), where that is the
  largest index holding the value; our stable sort returns that index for every length. The CPU's run
  scan uses `!=`, so every NaN is a run of its own (an all-NaN row answers its first NaN); where NaN sits
  among numbers the CPU's sort order is undefined, here NaNs sort last.
"""
from __future__ import annotations

import torch

from navitrain.wgpu.dims import wrap_dim
from navitrain.wgpu.dispatch import implements
from navitrain.wgpu.kernels import codegen
from navitrain.wgpu.kernels.sort import select_rows
from navitrain.wgpu.runtime import runtime
from navitrain.wgpu.tensor import empty, to_cpu

aten = torch.ops.aten

WG = 64

# Sorted rows [outer, n, inner] (values and int64 positions, contiguous); one thread per (outer, inner) row
# writes one value and one index, contiguous [outer, inner].
_PICK_P = codegen.ParamBlock("rows", "n", "inner", "vals_off", "inds_off", "out_v_off", "out_i_off")


def _same_expr(compute: str) -> str:
    """WGSL for `a` equals `b` as the CPU's run scan sees it: NaN equals nothing, itself included, so each
    NaN is a run of one. lavapipe evaluates `==` as if NaN did not exist, so NaN is tested on the bits."""
    if compute == "f32":
        return "(a == b && !is_nan(a) && !is_nan(b))"
    return "a == b"


def _pick_source(op: str, dtype: torch.dtype) -> str:
    rt = runtime()
    st, ist = rt.stypes[dtype], rt.stypes[torch.int64]
    compute = "f32" if st.kind == "float" else st.compute
    at = "(o * n + {p}) * inner + i"
    load = lambda p: st.load(f"vals[vals_off + {at.format(p=p)}]", compute)
    if op == "nanmedian" and compute != "f32":
        find = """
  let best = (n - 1u) / 2u;   // integers have no NaN: the lower median"""
    elif op == "nanmedian":
        find = f"""
  var lo = 0u; var hi = n;   // first NaN: the sorted row is non-NaN values, then NaNs
  loop {{
    if (lo >= hi) {{ break; }}
    let mid = lo + (hi - lo) / 2u;
    if (is_nan({load('mid')})) {{ hi = mid; }} else {{ lo = mid + 1u; }}
  }}
  let best = select((lo - 1u) / 2u, 0u, lo == 0u);"""
    else:
        find = f"""
  var best = 0u; var best_len = 0u; var run = 0u;
  var b = {load('0u')};
  for (var p = 0u; p < n; p = p + 1u) {{
    let a = {load('p')};
    if (p > 0u && !({_same_expr(compute)})) {{ run = 0u; }}
    run = run + 1u;
    if (run > best_len) {{ best_len = run; best = p; }}
    b = a;
  }}"""
    body = _PICK_P.wgsl() + f"""
  if (gi >= rows) {{ return; }}
  let o = gi / inner; let i = gi % inner;{find}
  out_v[out_v_off + gi] = vals[vals_off + {at.format(p='best')}];
  out_i[out_i_off + gi] = inds[inds_off + {at.format(p='best')}];"""
    return codegen.module([st.wgsl, ist.wgsl, st.wgsl, ist.wgsl], body, WG,
                          names=["vals", "inds", "out_v", "out_i"])


def _pick(op: str, x, dim: int, keepdim: bool):
    """(values, indices) of `op` over `dim` of x (x.dim() >= 1, dim wrapped)."""
    n = x.shape[dim]
    out_shape = list(x.shape)
    out_shape[dim] = 1
    if not keepdim:
        del out_shape[dim]
    values, indices = empty(out_shape, x.dtype), empty(out_shape, torch.int64)
    rows = values.numel()
    if rows == 0:
        return values, indices
    if n == 0:
        name = "mode" if op == "mode" else "median"
        raise IndexError(f"{name}(): Expected reduction dim {dim} to have non-zero size.")
    vals, inds = select_rows(x, dim, n, False)
    inner = 1
    for s in x.shape[dim + 1:]:
        inner *= s
    rt = runtime()
    kernel = rt.kernel(("order_pick", op, x.dtype), f"order_{op}", 4, lambda: _pick_source(op, x.dtype))
    params = _PICK_P.pack(rows=rows, n=n, inner=inner, vals_off=vals.elem_offset, inds_off=inds.elem_offset,
                          out_v_off=values.elem_offset, out_i_off=indices.elem_offset)
    rt.dispatch(kernel, (vals._ws.heap, inds._ws.heap, values._ws.heap, indices._ws.heap), params,
                codegen.groups_for(rows, WG))
    return values, indices


def _as_rows(x):
    """A 0-d tensor as one row of one element (the CPU treats it so), with how to shape results back."""
    return (aten.reshape.default(x, [1]), True) if x.dim() == 0 else (x, False)


def _by_dim(op, x, dim, keepdim):
    wrap_dim(dim, x.dim())
    x1, scalar = _as_rows(x)
    d = 0 if scalar else wrap_dim(dim, x.dim())
    v, i = _pick(op, x1, d, keepdim and not scalar)
    if scalar:
        v, i = aten.reshape.default(v, []), aten.reshape.default(i, [])
    return v, i


@implements(aten.nanmedian.dim)
def nanmedian_dim(x, dim, keepdim=False):
    return _by_dim("nanmedian", x, dim, keepdim)


@implements(aten.nanmedian.default)
def nanmedian(x):
    if x.numel() == 0:  # the CPU's answer for an empty input
        return aten.full.default([], float("nan"), dtype=x.dtype, device=x.device)
    return _pick("nanmedian", aten.reshape.default(x, [-1]), 0, False)[0]


@implements(aten.mode.default)
def mode(x, dim=-1, keepdim=False):
    return _by_dim("mode", x, dim, keepdim)


# -- unique_consecutive: heads of runs, one read-back for the count (the size depends on the data) ----------
@implements(aten.unique_consecutive.default)
def unique_consecutive(x, return_inverse=False, return_counts=False, dim=None):
    """Runs of equal slices along `dim` (elements when dim is None). A slice starts a run where any of its
    elements differs from the previous slice's (NaN differs from everything, as the CPU's `!=`)."""
    if dim is None:
        rows = aten.reshape.default(x, [-1, 1])
        d = None
    else:
        d = wrap_dim(dim, x.dim())
        rows = aten.reshape.default(aten.movedim.int(x, d, 0), [x.shape[d], -1]) if x.dim() else None
    n = rows.shape[0]
    inverse_shape = list(x.shape) if d is None else [x.shape[d]]
    if n == 0:
        uniq = aten.clone.default(x) if d is not None else empty([0], x.dtype)
        return uniq, empty(inverse_shape, torch.int64), empty([0], torch.int64)
    heads = empty([n], torch.bool)
    aten.fill_.Scalar(aten.slice.Tensor(heads, 0, 0, 1), True)
    if n > 1:
        differs = aten.ne.Tensor(aten.slice.Tensor(rows, 0, 1, n), aten.slice.Tensor(rows, 0, 0, n - 1))
        aten.copy_.default(aten.slice.Tensor(heads, 0, 1, n), aten.any.dim(differs, 1))
    starts = aten.reshape.default(aten.nonzero.default(heads), [-1])  # the one read-back
    count = starts.shape[0]
    if d is None:
        uniq = aten.index_select.default(aten.reshape.default(x, [-1]), 0, starts)
    else:
        uniq = aten.index_select.default(x, d, starts)
    inverse = empty([0], torch.int64)
    if return_inverse:
        run_of = aten.sub.Tensor(aten.cumsum.default(heads, 0, dtype=torch.int64), 1)
        inverse = aten.reshape.default(run_of, inverse_shape)
    counts = empty([0], torch.int64)
    if return_counts:
        ends = aten.cat.default([aten.slice.Tensor(starts, 0, 1, count),
                                 aten.full.default([1], n, dtype=torch.int64, device=x.device)])
        counts = aten.sub.Tensor(ends, starts)
    return uniq, inverse, counts


# -- allclose, nonzero_static ------------------------------------------------------------------------------
@implements(aten.allclose.default)
def allclose(a, b, rtol=1e-05, atol=1e-08, equal_nan=False):
    """isclose everywhere: one elementwise pass, one reduction, one read-back."""
    close = aten.isclose.default(a, b, rtol, atol, equal_nan)
    if close.numel() == 0:
        return True
    return bool(to_cpu(aten.all.default(close)).item())


@implements(aten.nonzero_static.default)
def nonzero_static(x, *, size, fill_value=-1):
    """nonzero's rows, cut to `size` or padded with `fill_value` rows."""
    if size < 0:
        raise RuntimeError(f"nonzero_static: 'size' must be an non-negative integer, but got size: {size}")
    found = aten.nonzero.default(x)
    have = found.shape[0]
    if have >= size:
        return aten.clone.default(aten.slice.Tensor(found, 0, 0, size))
    pad = aten.full.default([size - have, x.dim()], fill_value, dtype=torch.int64, device=x.device)
    return aten.cat.default([found, pad])
