"""Bucketing: histogram, histogramdd (and the _histogramdd_* pieces PyTorch builds them from), bucketize.

- Edges: with a bin count, the range is the given one or each coordinate's (min, max) (one read-back, as the
  CPU reads them with .item()), widened by 0.5 when empty; the edges are then torch.linspace on the host
  from those two scalars, because the CPU's float32 linspace rounds differently from ours and an element
  on an edge must land in the same bin. They are uploaded (a few words), never computed from data there.
- Counting: one thread per point finds its bin in every coordinate by binary search of that coordinate's
  edges (the CPU's upper_bound; its interpolated first guess only shortens the same search), the last
  edge inclusive; a point with a coordinate outside the edges, or NaN, is skipped. Counts are integer
  atomics (exact); weights are added with a compare-exchange loop, so a weighted bin sums in another order
  than the CPU's (float32 rounding may differ in the last bits).
- density divides by the total and by each bin's widths along every coordinate, as the CPU.
"""
from __future__ import annotations

import functools

import torch

from navitrain.wgpu.dims import contiguous
from navitrain.wgpu.dispatch import implements
from navitrain.wgpu.dtypes import NoKernelForDtype
from navitrain.wgpu.kernels import codegen
from navitrain.wgpu.ops.search import searchsorted
from navitrain.wgpu.runtime import runtime
from navitrain.wgpu.tensor import from_cpu, to_cpu

aten = torch.ops.aten

WG = 64
MAX_DIMS = 16   # coordinates per point: 3 parameter words each must fit the 64-word block


@functools.cache
def _count_block(dims: int) -> codegen.ParamBlock:
    # n points of `dims` coordinates (contiguous rows at x_off); coordinate d's edges are edge_len_d words
    # of the edges tensor from edge_off_d; its bin moves the flat histogram index by hist_stride_d.
    return codegen.ParamBlock("n", "x_off", "w_off", "edges_off", "acc_off", f"edge_start[{dims}]",
                              f"edge_len[{dims}]", f"hist_stride[{dims}]")


def _count_source(dims: int, weighted: bool) -> str:
    block = _count_block(dims)
    find = []
    for d in range(dims):
        find.append(f"""
  {{
    let v = b1[x_off + gi * {dims}u + {d}u];
    let first = edges_off + edge_start_{d};
    let last = edge_len_{d} - 1u;
    // NaN first: lavapipe evaluates comparisons as if NaN did not exist.
    if (is_nan(v) || !(v >= b3[first] && v <= b3[first + last])) {{ return; }}
    var lo = 0u; var hi = edge_len_{d};
    loop {{   // upper_bound: the first edge greater than v
      if (lo >= hi) {{ break; }}
      let mid = lo + (hi - lo) / 2u;
      if (!(b3[first + mid] > v)) {{ lo = mid + 1u; }} else {{ hi = mid; }}
    }}
    bin = bin + min(lo - 1u, last - 1u) * hist_stride_{d};   // v on the last edge: the last bin
  }}""")
    if weighted:
        add = """
  let w = b2[w_off + gi];
  loop {
    let old = atomicLoad(&b0[acc_off + bin]);
    if (atomicCompareExchangeWeak(&b0[acc_off + bin], old, bitcast<u32>(bitcast<f32>(old) + w)).exchanged) { break; }
  }"""
        acc = "atomic<u32>"
    else:
        add = "\n  atomicAdd(&b0[acc_off + bin], 1);"
        acc = "atomic<i32>"
    body = block.wgsl() + f"""
  if (gi >= n) {{ return; }}
  var bin = 0u;{''.join(find)}{add}"""
    return codegen.module([acc, "f32", "f32", "f32"], body, WG)


def _check_input(x, weight):
    if x.dtype == torch.float64:
        raise NoKernelForDtype("histogram: float64 has no wgpu kernels")  # the counted CPU fallback
    if x.dtype != torch.float32:
        name = {torch.float16: "Half", torch.bfloat16: "BFloat16"}.get(x.dtype, str(x.dtype).replace("torch.", ""))
        raise NotImplementedError(f"\"histogramdd\" not implemented for '{name}'")
    if weight is not None and weight.dtype != x.dtype:
        raise RuntimeError("torch.histogramdd: if weight tensor is provided, input tensor and weight tensor should "
                           f"have the same dtype, but got input({_cname(x.dtype)}), and weight({_cname(weight.dtype)})")


def _cname(dtype):
    return {torch.float32: "float", torch.float64: "double", torch.float16: "c10::Half"}.get(dtype, str(dtype))


def _points(x):
    """x as contiguous [N, D] rows (histogramdd's last dim is the coordinate)."""
    if x.dim() < 2:
        raise RuntimeError("torch.histogramdd: input tensor should have at least 2 dimensions")
    return contiguous(aten.reshape.default(x, [-1, x.shape[-1]]))


def _bin_edges(points, bins, range_):
    """Edges of each coordinate for bin counts: float32 wgpu tensors."""
    dims = points.shape[1]
    if len(bins) != dims:
        raise RuntimeError("histogramdd: The size of bins must be equal to the innermost dimension of the input.")
    for d, b in enumerate(bins):
        if b <= 0:
            raise RuntimeError(f"torch.histogramdd(): bins must be > 0, but got {b} for dimension {d}")
    if range_ is not None:
        if len(range_) != 2 * dims:
            raise RuntimeError(f"torch.histogramdd: for a {dims}-dimensional histogram range should have {2 * dims} "
                               f"elements, but got {len(range_)}")
        lows, highs = [float(v) for v in range_[0::2]], [float(v) for v in range_[1::2]]
    elif points.shape[0] > 0:
        lo, hi = aten.aminmax.default(points, dim=0)
        lows, highs = to_cpu(lo).double().tolist(), to_cpu(hi).double().tolist()  # the one read-back
    else:
        lows, highs = [0.0] * dims, [1.0] * dims
    edges = []
    for d, (lo, hi) in enumerate(zip(lows, highs)):
        if not (abs(lo) < float("inf") and abs(hi) < float("inf")):
            raise RuntimeError(f"torch.histogramdd: dimension {d}'s range [{_num(lo)}, {_num(hi)}] is not finite")
        if lo > hi:
            raise RuntimeError(f"torch.histogramdd: min should not exceed max, but got min {_num(lo)} max {_num(hi)} "
                               f"for dimension {d}")
        if lo == hi:
            lo, hi = lo - 0.5, hi + 0.5
        edges.append(from_cpu(torch.linspace(lo, hi, bins[d] + 1, dtype=points.dtype)))
    return edges


def _num(v):
    return f"{v:g}"


def _count(points, edges, weight, density):
    """The histogram of `points` [N, D] over `edges` (one 1-D tensor per coordinate)."""
    n, dims = points.shape
    if dims > MAX_DIMS:
        raise NoKernelForDtype(f"histogramdd: more than {MAX_DIMS} coordinates")  # the counted CPU fallback
    if len(edges) != dims:
        raise RuntimeError(f"torch.histogramdd: expected {dims} sequences of bin edges for a {dims}-dimensional "
                           f"histogram but got {len(edges)}")
    for d, e in enumerate(edges):
        if e.dim() != 1 or e.numel() == 0:
            raise RuntimeError(f"torch.histogramdd: bins tensor should have one dimension and at least 1 element, "
                               f"but got {e.numel()} elements for dimension {d}")
        if e.dtype != points.dtype:
            raise RuntimeError(f"torch.histogramdd: input tensor and bins tensors should have the same dtype, but got "
                               f"input with dtype {points.dtype} and bins for dimension {d} with dtype {e.dtype}")
    shape = [e.numel() - 1 for e in edges]
    weighted = weight is not None
    if weighted and weight.numel() != n:
        raise RuntimeError("torch.histogramdd: if weight tensor is provided it should have the same shape as the "
                           "input tensor excluding its innermost dimension")
    acc = aten.zeros.default(shape, dtype=torch.float32 if weighted else torch.int32, device=points.device)
    total_bins = acc.numel()
    if n and total_bins:
        all_edges = contiguous(aten.cat.default(list(edges)))
        starts, at = [], 0
        for e in edges:
            starts.append(at)
            at += e.numel()
        strides, s = [], 1
        for b in reversed(shape):
            strides.insert(0, s)
            s *= b
        w = contiguous(aten.reshape.default(weight, [-1])) if weighted else points
        rt = runtime()
        kernel = rt.kernel(("histogramdd", dims, weighted), "histogramdd", 4, lambda: _count_source(dims, weighted))
        params = _count_block(dims).pack(n=n, x_off=points.elem_offset, w_off=w.elem_offset if weighted else 0,
                                         edges_off=all_edges.elem_offset, acc_off=acc.elem_offset,
                                         edge_start=starts, edge_len=[e.numel() for e in edges], hist_stride=strides)
        rt.dispatch(kernel, (acc._ws.heap, points._ws.heap, w._ws.heap, all_edges._ws.heap), params,
                    codegen.groups_for(n, WG))
    hist = acc if weighted else aten._to_copy.default(acc, dtype=points.dtype)
    if density:
        hist = aten.div.Tensor(hist, aten.sum.default(hist))
        for d, e in enumerate(edges):
            widths = aten.sub.Tensor(aten.slice.Tensor(e, 0, 1, e.numel()), aten.slice.Tensor(e, 0, 0, e.numel() - 1))
            view = [1] * dims
            view[d] = -1
            hist = aten.div.Tensor(hist, aten.reshape.default(widths, view))
    return hist


@implements(aten._histogramdd_bin_edges.default)
def histogramdd_bin_edges(x, bins, *, range=None, weight=None, density=False):
    _check_input(x, weight)
    return _bin_edges(_points(x), list(bins), range)


@implements(aten._histogramdd_from_bin_cts.default)
def histogramdd_from_bin_cts(x, bins, *, range=None, weight=None, density=False):
    _check_input(x, weight)
    points = _points(x)
    return _count(points, _bin_edges(points, list(bins), range), weight, density)


@implements(aten._histogramdd_from_bin_tensors.default)
def histogramdd_from_bin_tensors(x, bins, *, weight=None, density=False):
    _check_input(x, weight)
    return _count(_points(x), [contiguous(b) for b in bins], weight, density)


@implements(aten.histogram.bin_ct)
def histogram_bin_ct(x, bins=100, *, range=None, weight=None, density=False):
    _check_input(x, weight)
    if bins <= 0:
        raise RuntimeError(f"torch.histogram(): bins must be > 0, but got {bins} for dimension 0")
    points = aten.reshape.default(x, [-1, 1])
    edges = _bin_edges(contiguous(points), [bins], range)
    return _count(contiguous(points), edges, weight, density), edges[0]


@implements(aten.histogram.bins_tensor)
def histogram_bins_tensor(x, bins, *, weight=None, density=False):
    _check_input(x, weight)
    if bins.dim() != 1:
        raise RuntimeError(f"torch.histogram(): bins tensor should have one dimension, but got {bins.dim()} dimensions")
    edges = contiguous(bins)
    points = contiguous(aten.reshape.default(x, [-1, 1]))
    return _count(points, [edges], weight, density), aten.clone.default(edges)


# -- bucketize: searchsorted with the roles swapped ----------------------------------------------------------
@implements(aten.bucketize.Tensor)
def bucketize(x, boundaries, *, out_int32=False, right=False):
    if boundaries.dim() != 1:
        raise RuntimeError(f"boundaries tensor must be 1 dimension, but got dim({boundaries.dim()})")
    return searchsorted(boundaries, x, out_int32=out_int32, right=right)


@implements(aten.bucketize.Scalar)
def bucketize_scalar(x, boundaries, *, out_int32=False, right=False):
    if boundaries.dim() != 1:
        raise RuntimeError(f"boundaries tensor must be 1 dimension, but got dim({boundaries.dim()})")
    # A float scalar against integer boundaries is compared as a float (the CPU promotes), never truncated.
    as_float = isinstance(x, float) and not boundaries.dtype.is_floating_point
    value = aten.full.default([], x, dtype=torch.float32 if as_float else boundaries.dtype, device=boundaries.device)
    return searchsorted(boundaries, value, out_int32=out_int32, right=right)
