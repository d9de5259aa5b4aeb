"""The indexed copy: the one kernel behind every gather and plain scatter (index_select, gather, take,
x[idx], embedding, scatter, index_copy/fill, index_put_, put_, flip).

One thread per element of an iteration shape; the destination, the source and up to six index tensors
are each walked with their own strides (so broadcast and non-contiguous operands need no copies), and
each index adds `index * stride` to the source (gather) or destination (scatter) offset. Duplicate
destinations in a plain scatter are written in an unspecified order, as PyTorch documents.
Negative indices count from the end. An index out of range cannot raise on the GPU without a sync per
op: a gather gives NaN (0 for integer tensors) there, and a scatter skips it.
"""
from __future__ import annotations

import functools

import torch

from navitrain.wgpu.kernels import codegen, pointwise
from navitrain.wgpu.runtime import runtime
from navitrain.wgpu.tensor import WgpuTensor

WG = 256
MAX_INDICES = 6  # bindings left for index tensors (8 in all, minus destination and source)


def walk(nd: int, operands: list[str]) -> list[str]:
    """WGSL giving o0..o{k-1}, the offsets of linear index `gi` over nd dims: sizes are the block's
    `size_d`, operand k's strides its `{operands[k]}_stride_d`."""
    lines = ["  var rem = gi;"] + [f"  var o{k} = 0u;" for k in range(len(operands))]
    for d in reversed(range(nd)):
        if d > 0:
            lines.append(f"  let i{d} = rem % size_{d}; rem = rem / size_{d};")
        else:
            lines.append("  let i0 = rem;")
        for k, name in enumerate(operands):
            lines.append(f"  o{k} += i{d} * {name}_stride_{d};")
    return lines


def index_fields(m: int) -> list[str]:
    """Per index tensor k: its element offset, the size of the dim it indexes, the stride it moves by."""
    return [f for k in range(m) for f in (f"ix{k}_off", f"ix{k}_n", f"ix{k}_moves")]


def index_words(indices) -> list[int]:
    """The words of `index_fields`, in order, from [(index tensor, strides, size of the indexed dim, stride
    it moves)]."""
    words = []
    for t, _, n, moves in indices:
        words += (t.elem_offset, n, moves)
    return words


def index_checks(idx_sts, first_operand: int) -> list[str]:
    """WGSL adding each wrapped index times its stride to `moved`; `ok` turns false when one is out of
    range. Index k is read at operand offset o{first_operand + k}."""
    lines = []
    for k, st in enumerate(idx_sts):
        lines.append(f"  {{ var v = {st.load(f'ix{k}[ix{k}_off + o{first_operand + k}]', 'i32')};")
        lines.append(f"    let n = i32(ix{k}_n); if (v < 0) {{ v = v + n; }}")
        lines.append(f"    if (v < 0 || v >= n) {{ ok = false; }} else {{ moved += u32(v) * ix{k}_moves; }} }}")
    return lines


@functools.lru_cache(maxsize=None)
def _block(m: int, nd: int, scalar_kind: str | None) -> codegen.ParamBlock:
    """numel; destination and source offsets; the fill value (f32/i32; unused with a source tensor);
    per index tensor offset, size, stride moved; then the sizes and every operand's strides."""
    scalar = {"f": "scalar: f32", "i": "scalar: i32", None: "scalar"}[scalar_kind]
    strides = [f"{name}_stride[{nd}]" for name in ["dst", "src"] + [f"ix{k}" for k in range(m)]]
    return codegen.ParamBlock("numel", "dst_off", "src_off", scalar, *index_fields(m), f"size[{nd}]", *strides)


@functools.lru_cache(maxsize=None)
def _packer(m: int, nd: int, scalar_kind: str | None):
    # Positional, in _block's field order: the keyword pack() would add microseconds to every gather.
    return _block(m, nd, scalar_kind).pack_words


def _invalid_value(st) -> str:
    return st.store("bitcast<f32>(0x7fc00000u)") if st.kind == "float" else st.store("0")


def _source(mode, dst_st, src_st, idx_sts, nd, scalar_kind):
    m = len(idx_sts)
    has_src = scalar_kind is None
    operands = ["dst", "src"] + [f"ix{k}" for k in range(m)]
    lines = [_block(m, nd, scalar_kind).wgsl().rstrip("\n"), "  if (gi >= numel) { return; }"]
    lines += walk(nd, operands)
    lines.append("  var ok = true; var moved = 0u;")
    lines += index_checks(idx_sts, 2)
    dst = "dst[dst_off + o0" + (" + moved]" if mode == "scatter" else "]")
    if has_src:
        src_expr = "src[src_off + o1" + (" + moved]" if mode == "gather" else "]")
        if src_st.dtype == dst_st.dtype:
            value = src_expr
        else:
            value = dst_st.store(src_st.load(src_expr, pointwise.compute_type(dst_st.dtype)))
    else:
        value = dst_st.store("scalar" if scalar_kind == "f" else ("scalar != 0" if dst_st.kind == "bool" else "scalar"))
    if mode == "gather":
        lines.append(f"  if (ok) {{ {dst} = {value}; }} else {{ {dst} = {_invalid_value(dst_st)}; }}")
    else:
        lines.append(f"  if (ok) {{ {dst} = {value}; }}")
    names = ["dst"] + (["src"] if has_src else []) + [f"ix{k}" for k in range(m)]
    types = [dst_st.wgsl] + ([src_st.wgsl] if has_src else []) + [st.wgsl for st in idx_sts]
    return codegen.module(types, "\n".join(lines), WG, names=names)


def indexed_copy(mode: str, shape, dst: WgpuTensor, dst_strides, src, src_strides, indices,
                 src_offset: int | None = None) -> None:
    """For every element of `shape`: dst[...] = src[...] (src a tensor, or a Python scalar), with
    `indices` = [(index tensor, its strides over shape, size of the indexed dim, stride it moves)]
    adding to the source offset (mode "gather") or the destination offset (mode "scatter").
    Strides may be negative (offsets wrap in u32); `src_offset` then gives the element src starts at."""
    numel = 1
    for s in shape:
        numel *= s
    if numel == 0:
        return
    if len(indices) > MAX_INDICES:
        raise NotImplementedError(f"indexing with more than {MAX_INDICES} index tensors on the wgpu device")
    rt = runtime()
    scalar = not isinstance(src, torch.Tensor)
    stride_sets = [list(dst_strides), list(src_strides) if not scalar else [0] * len(shape)]
    stride_sets += [list(s) for _, s, _, _ in indices]
    sizes, strides = pointwise.collapse(list(shape) or [1], [s or [0] for s in stride_sets]) if shape else \
        ([1], [[0] for _ in stride_sets])
    nd = len(sizes)
    dst_st = rt.stypes[dst.dtype]
    src_st = None if scalar else rt.stypes[src.dtype]
    idx_sts = [rt.stypes[t.dtype] for t, _, _, _ in indices]
    scalar_kind = None
    words = [numel, dst.elem_offset, 0 if scalar else (src.elem_offset if src_offset is None else src_offset)]
    if scalar:
        scalar_kind = "f" if dst.dtype.is_floating_point else "i"
        words.append(float(src) if scalar_kind == "f" else int(src))
    else:
        words.append(0)
    words += index_words(indices)
    words += sizes
    for s in strides:
        words += [v & 0xFFFFFFFF for v in s]  # negative strides (flip) wrap as u32
    params = _packer(len(indices), nd, scalar_kind)(*words)
    key = ("indexed_copy", mode, dst.dtype, None if scalar else src.dtype, tuple(t.dtype for t, *_ in indices),
           nd, scalar_kind)
    kernel = rt.kernel(key, f"indexed_{mode}", 1 + (0 if scalar else 1) + len(indices),
                       lambda: _source(mode, dst_st, src_st, idx_sts, nd, scalar_kind))
    heaps = (dst._ws.heap,) + (() if scalar else (src._ws.heap,)) + tuple(t._ws.heap for t, *_ in indices)
    rt.dispatch(kernel, heaps, params, codegen.groups_for(numel, WG))
