"""Ops whose output size depends on the data (nonzero, argwhere, masked_select) and masked_scatter.

A running count of the true mask elements (a scan) gives each selected element its output position.
Data-dependent shapes read one count back to the host: the output size must be known before it can be
allocated. masked_scatter and masked_scatter_backward know their sizes and need no read-back.
"""
from __future__ import annotations

import functools

import torch

from navitrain.wgpu.dims import contiguous
from navitrain.wgpu.dispatch import implements
from navitrain.wgpu.kernels import codegen, pointwise
from navitrain.wgpu.kernels.copy import fill
from navitrain.wgpu.kernels.indexed_copy import walk
from navitrain.wgpu.kernels.scan import scan_into
from navitrain.wgpu.ops.index_args import as_device, strides_over
from navitrain.wgpu.runtime import runtime
from navitrain.wgpu.tensor import WgpuTensor, empty, to_cpu

aten = torch.ops.aten
WG = 256


def _flag_positions(flags_source: WgpuTensor):
    """Inclusive running count (int32, flat) of the true elements of a bool-like tensor, in row-major order."""
    flags = pointwise.run("flag", "select(0, 1, a)", [flags_source], torch.int32, "i32", load_types=["bool"])
    flat = aten.reshape.default(flags, [1, -1])
    return scan_into("sum", flat, empty(flat.shape, torch.int32), 1)


def _count(pos: WgpuTensor) -> int:
    # The one host read-back these ops need: the size of their output depends on the data.
    n = pos.numel()
    return int(to_cpu(aten.reshape.default(pos, [-1])[n - 1:n])[0]) if n else 0


# -- nonzero: each true element writes its coordinates at its running count ------------------------------
@functools.lru_cache(maxsize=None)
def _nonzero_block(nd: int) -> codegen.ParamBlock:
    return codegen.ParamBlock("numel", "x_off", "pos_off", "out_off", f"size[{nd}]", f"stride[{nd}]")


@functools.lru_cache(maxsize=None)
def _nonzero_packer(nd: int):
    # Positional, in _nonzero_block's field order (the keyword pack() costs microseconds per call).
    return _nonzero_block(nd).pack_words


def _nonzero_source(x_st, i64_st, nd):
    lines = [_nonzero_block(nd).wgsl().rstrip("\n"), "  if (gi >= numel) { return; }", "  var rem = gi; var xo = 0u;"]
    for d in reversed(range(nd)):
        lines.append(f"  let c{d} = rem % size_{d}; rem = rem / size_{d};")
        lines.append(f"  xo += c{d} * stride_{d};")
    lines.append(f"  if (!{x_st.load('xs[x_off + xo]', 'bool')}) {{ return; }}")
    lines.append("  let row = u32(pos[pos_off + gi]) - 1u;")
    for d in range(nd):
        lines.append(f"  outs[out_off + row * {nd}u + {d}u] = {i64_st.store(f'c{d}')};")
    return codegen.module([x_st.wgsl, "i32", i64_st.wgsl], "\n".join(lines), WG, names=["xs", "pos", "outs"])


@implements(aten.nonzero.default)
def nonzero(x):
    nd = x.dim()
    n = x.numel()
    if n == 0:
        return empty([0, nd], torch.int64)
    pos = _flag_positions(x)
    count = _count(pos)
    out = empty([count, nd], torch.int64)
    if count == 0 or nd == 0:
        return out
    rt = runtime()
    x_st, i64_st = rt.stypes[x.dtype], rt.stypes[torch.int64]
    params = _nonzero_packer(nd)(n, x.elem_offset, pos.elem_offset, out.elem_offset, *x.shape, *x.stride())
    kernel = rt.kernel(("nonzero", x.dtype, nd), "nonzero", 3, lambda: _nonzero_source(x_st, i64_st, nd))
    rt.dispatch(kernel, (x._ws.heap, pos._ws.heap, out._ws.heap), params, codegen.groups_for(n, WG))
    return out


@implements(aten.argwhere.default)
def argwhere(x):
    return nonzero(x)


# -- compaction (masked_select) and its inverse (masked_scatter) ---------------------------------------------
@functools.lru_cache(maxsize=None)
def _masked_block(mode: str, nd: int) -> codegen.ParamBlock:
    """numel, offsets of x, mask, the running count and out; then "select": how many elements out holds,
    "scatter": the source's offset; then sizes and the strides of x, mask and out."""
    return codegen.ParamBlock("numel", "x_off", "mask_off", "pos_off", "out_off",
                              "limit" if mode == "select" else "src_off",
                              f"size[{nd}]", f"x_stride[{nd}]", f"mask_stride[{nd}]", f"out_stride[{nd}]")


@functools.lru_cache(maxsize=None)
def _masked_packer(mode: str, nd: int):
    # Positional, in _masked_block's field order (the keyword pack() costs microseconds per call).
    return _masked_block(mode, nd).pack_words


def _masked_source(mode, nd, x_st, m_st, o_st, src_st):
    """mode "select": out[pos-1] = x[i] where mask[i]; mode "scatter": out[i] = mask ? src[pos-1] : x[i]."""
    lines = [_masked_block(mode, nd).wgsl().rstrip("\n"), "  if (gi >= numel) { return; }"]
    lines += walk(nd, ["x", "mask", "out"])
    lines.append(f"  let on = {m_st.load('mask[mask_off + o1]', 'bool')};")
    lines.append("  let at = u32(pos[pos_off + gi]) - 1u;")
    if mode == "select":
        lines.append("  if (on && at < limit) { outs[out_off + at] = xs[x_off + o0]; }")
    else:
        lines.append("  if (on) { outs[out_off + o2] = src[src_off + at]; }")
        lines.append("  else { outs[out_off + o2] = xs[x_off + o0]; }")
    names = ["xs", "mask", "pos", "outs"] + (["src"] if mode == "scatter" else [])
    types = [x_st.wgsl, m_st.wgsl, "i32", o_st.wgsl] + ([src_st.wgsl] if mode == "scatter" else [])
    return codegen.module(types, "\n".join(lines), WG, names=names)


def _masked_launch(mode, x, mask, pos, out, shape, last, src=None):
    """Run the select or scatter kernel with x and mask read broadcast over `shape` (out flat for select,
    shaped like `shape` for scatter); `last` is the limit (select) or the source's offset (scatter)."""
    rt = runtime()
    nd = len(shape)
    numel = 1
    for s in shape:
        numel *= s
    if numel == 0:
        return
    x_strides = strides_over(x, shape)
    m_strides = strides_over(mask, shape)
    o_strides = list(out.stride()) if mode == "scatter" else [0] * nd
    sizes, strides = pointwise.collapse(list(shape) or [1], [x_strides or [0], m_strides or [0], o_strides or [0]])
    nd2 = len(sizes)
    x_st, m_st, o_st = rt.stypes[x.dtype], rt.stypes[mask.dtype], rt.stypes[out.dtype]
    params = _masked_packer(mode, nd2)(numel, x.elem_offset, mask.elem_offset, pos.elem_offset, out.elem_offset,
                                       last, *sizes, *strides[0], *strides[1], *strides[2])
    heaps = (x._ws.heap, mask._ws.heap, pos._ws.heap, out._ws.heap)
    if mode == "select":
        key = ("masked_select", x.dtype, mask.dtype, nd2)
        kernel = rt.kernel(key, "masked_select", 4, lambda: _masked_source(mode, nd2, x_st, m_st, o_st, None))
    else:
        src_st = rt.stypes[src.dtype]
        key = ("masked_scatter", x.dtype, mask.dtype, src.dtype, out.dtype, nd2)
        kernel = rt.kernel(key, "masked_scatter", 5, lambda: _masked_source(mode, nd2, x_st, m_st, o_st, src_st))
        heaps += (src._ws.heap,)
    rt.dispatch(kernel, heaps, params, codegen.groups_for(numel, WG))


@implements(aten.masked_select.default)
def masked_select(x, mask):
    mask = as_device(mask)
    shape = list(torch.broadcast_shapes(x.shape, mask.shape))
    mask_b = aten.expand.default(mask, shape)
    pos = _flag_positions(mask_b)
    count = _count(pos)
    out = empty([count], x.dtype)
    if count == 0:
        return out
    _masked_launch("select", x, mask, pos, out, shape, count)
    return out


@implements(aten.masked_scatter_backward.default)
def masked_scatter_backward(grad, mask, sizes):
    # The gradient of source: grad where mask is true, in order, then zeros; sized like source, so no sync.
    mask = as_device(mask)
    shape = list(grad.shape)
    n = 1
    for v in sizes:
        n *= v
    out = fill(empty([n], grad.dtype), 0)
    if n and grad.numel():
        pos = _flag_positions(aten.expand.default(mask, shape))
        _masked_launch("select", grad, mask, pos, out, shape, n)
    return aten.reshape.default(out, list(sizes))


def _masked_scatter_into(out, x, mask, source):
    shape = list(out.shape)
    pos = _flag_positions(aten.expand.default(mask, shape))
    src = contiguous(aten.reshape.default(source, [-1]) if source.dim() != 1 else source)
    _masked_launch("scatter", x, mask, pos, out, shape, src.elem_offset, src)
    return out


@implements(aten.masked_scatter.default)
def masked_scatter(x, mask, source):
    mask = as_device(mask)
    shape = list(torch.broadcast_shapes(x.shape, mask.shape))
    return _masked_scatter_into(empty(shape, x.dtype), x, mask, source)


@implements(aten.masked_scatter_.default)
def masked_scatter_(x, mask, source):
    # Writing x while reading it is safe: each element is read and written by the same thread only.
    return _masked_scatter_into(x, x, as_device(mask), source)
