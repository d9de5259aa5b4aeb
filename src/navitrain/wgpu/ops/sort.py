"""Sorting and selection handlers along a dim: sort (stable or not, descending), argsort, msort, topk,
kthvalue, median and unique, on the sort engine (navitrain.wgpu.kernels.sort, which says how rows are
sorted and why every sort here is stable)."""
from __future__ import annotations

import torch

from navitrain.wgpu.dims import wrap_dim
from navitrain.wgpu.dispatch import implements
from navitrain.wgpu.kernels import codegen, pointwise
from navitrain.wgpu.kernels.copy import copy_into, fill
from navitrain.wgpu.kernels.reduction import reduce
from navitrain.wgpu.kernels.scan import scan_into
from navitrain.wgpu.kernels.sort import WG, select_rows
from navitrain.wgpu.runtime import runtime
from navitrain.wgpu.tensor import WgpuTensor, empty, to_cpu

aten = torch.ops.aten


# -- sort, argsort, topk, kthvalue, median -------------------------------------------------------------------
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
    return fill(empty([], v.dtype), float("nan"))


@implements(aten.median.dim)
def median_dim(x, dim, keepdim=False):
    return _median(x, wrap_dim(dim, x.dim()), keepdim)


@implements(aten.median.default)
def median(x):
    flat = aten.reshape.default(x, [-1])
    return _median(flat, 0, False)[0]


# -- unique: sort, mark the first of each run, count (one host read-back: the size depends on the data) --
# n sorted values, their inclusive count of runs so far and their positions before sorting (perm): each
# run's head writes the unique value and where the run starts; every element its run into inverse.
_UNIQUE_P = codegen.ParamBlock("n", "sorted_off", "runs_off", "perm_off", "uniq_off", "inverse_off", "starts_off")


def _unique_source(v_st, i64_st, with_inverse):
    inverse = (f"\n  inverse[inverse_off + u32({i64_st.load('perm[perm_off + j]', 'i32')})] = {i64_st.store('u')};"
               if with_inverse else "")
    body = _UNIQUE_P.wgsl() + f"""
  if (gi >= n) {{ return; }}
  let j = gi;
  let u = runs[runs_off + j] - 1;{inverse}
  if (j == 0u || runs[runs_off + j] != runs[runs_off + j - 1u]) {{  // a head (see unique_head)
    uniq[uniq_off + u32(u)] = sorted[sorted_off + j];
    starts[starts_off + u32(u)] = i32(j);
  }}"""
    return codegen.module([v_st.wgsl, "i32", i64_st.wgsl, v_st.wgsl, i64_st.wgsl, "i32"], body, WG,
                          names=["sorted", "runs", "perm", "uniq", "inverse", "starts"])


def unique_sorted(x: WgpuTensor, return_inverse: bool, return_counts: bool):
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
    params = _UNIQUE_P.pack(n=n, sorted_off=vals.elem_offset, runs_off=runs.elem_offset, perm_off=perm.elem_offset,
                            uniq_off=uniq.elem_offset, inverse_off=inverse.elem_offset, starts_off=starts.elem_offset)
    rt.dispatch(kernel, (vals._ws.heap, runs._ws.heap, perm._ws.heap, uniq._ws.heap, inverse._ws.heap, starts._ws.heap),
                params, codegen.groups_for(n, WG))
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
