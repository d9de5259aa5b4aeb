"""Data movement: flip, roll, repeat, tril/triu, constant/reflection/replication padding (and their
backwards), narrow_copy.

Most are one strided copy: flip reads with negative strides, repeat copies the input broadcast over a
view of the output split into (repeat, size) pairs, roll is two copies per rolled dim, constant padding
is a fill plus a copy into the interior. tril/triu and the reflection/replication pads have kernels of
their own; the pad backwards are gathers (each input element sums the few output positions that read
it), so they need no atomics.
"""
from __future__ import annotations

import functools

import torch

from navitrain.wgpu.dims import wrap_dim
from navitrain.wgpu.dispatch import implements
from navitrain.wgpu.kernels import codegen, pointwise
from navitrain.wgpu.kernels.copy import copy_into, fill
from navitrain.wgpu.kernels.indexed_copy import indexed_copy
from navitrain.wgpu.kernels.scan import scan_into
from navitrain.wgpu.runtime import runtime
from navitrain.wgpu.tensor import empty, empty_like, to_cpu

aten = torch.ops.aten
WG = 256


# -- flip, roll, repeat, narrow_copy ----------------------------------------------------------------------
@implements(aten.flip.default)
def flip(x, dims):
    dims = {wrap_dim(d, x.dim()) for d in dims} if x.dim() else set()
    out = empty_like(x)
    strides = list(x.stride())
    start = x.elem_offset
    for d in dims:
        if x.shape[d] > 1:
            start += (x.shape[d] - 1) * strides[d]
            strides[d] = -strides[d]
    indexed_copy("gather", list(x.shape), out, list(out.stride()), x, strides, [], src_offset=start)
    return out


def _roll_dim(src, out, d, shift):
    n = src.shape[d]
    shift %= n
    if shift == 0:
        return copy_into(out, src)
    copy_into(aten.slice.Tensor(out, d, shift, n), aten.slice.Tensor(src, d, 0, n - shift))
    return copy_into(aten.slice.Tensor(out, d, 0, shift), aten.slice.Tensor(src, d, n - shift, n))


@implements(aten.roll.default)
def roll(x, shifts, dims=()):
    shifts, dims = list(shifts), list(dims)
    if not dims:
        if len(shifts) != 1:
            raise RuntimeError(f"`shifts` required to be of size 1 when dims is empty, got {len(shifts)}")
        flat = aten.reshape.default(x, [-1])
        return aten.view.default(roll(flat, shifts, [0]), list(x.shape))
    if len(shifts) != len(dims):
        raise RuntimeError(f"shifts and dimensions must align. shifts: {len(shifts)}, dims:{len(dims)}")
    if x.numel() == 0:
        return aten.clone.default(x)
    cur = x
    for s, d in zip(shifts, dims):
        out = empty_like(x)
        _roll_dim(cur, out, wrap_dim(d, x.dim()), s)
        cur = out
    return cur if cur is not x else aten.clone.default(x)


@implements(aten.repeat.default)
def repeat(x, repeats):
    repeats = [int(r) for r in repeats]
    if len(repeats) < x.dim():
        raise RuntimeError("Number of dimensions of repeat dims can not be smaller than number of dimensions of tensor")
    pad = len(repeats) - x.dim()
    in_shape = [1] * pad + list(x.shape)
    in_strides = [0] * pad + list(x.stride())
    out = empty([r * s for r, s in zip(repeats, in_shape)], x.dtype)
    if out.numel() == 0:
        return out
    # out viewed as [r0, s0, r1, s1, ...]; the input read with stride 0 along every r.
    o_size, o_stride, i_stride = [], [], []
    for r, s, st, ost in zip(repeats, in_shape, in_strides, out.stride()):
        o_size += [r, s]
        o_stride += [s * ost, ost]
        i_stride += [0, st if s > 1 else 0]
    dst = aten.as_strided.default(out, o_size, o_stride, 0)
    src = aten.as_strided.default(x, o_size, i_stride, x.storage_offset())
    copy_into(dst, src)
    return out


@implements(aten.narrow_copy.default)
def narrow_copy(x, dim, start, length):
    d = wrap_dim(dim, x.dim())
    start = start + x.shape[d] if start < 0 else start
    return aten.clone.default(aten.slice.Tensor(x, d, start, start + length), memory_format=torch.contiguous_format)


# -- tril / triu ------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _triangle_block(nb: int) -> codegen.ParamBlock:
    """The matrices' rows and columns with their strides in x and out, then the nb batch dims."""
    return codegen.ParamBlock("numel", "out_off", "x_off", "diagonal: i32", "rows", "cols", "x_row_stride",
                              "x_col_stride", "out_row_stride", "out_col_stride", f"batch[{nb}]",
                              f"x_batch_stride[{nb}]", f"out_batch_stride[{nb}]")


@functools.lru_cache(maxsize=None)
def _triangle_packer(nb: int):
    return _triangle_block(nb).pack_words


def _triangle_source(st, lower, nb):
    keep = "j - i <= diagonal" if lower else "j - i >= diagonal"
    lines = [_triangle_block(nb).wgsl().rstrip("\n"), "  if (gi >= numel) { return; }",
             "  let j = i32(gi % cols); let i = i32((gi / cols) % rows); var rem = gi / (rows * cols);",
             "  var xo = x_off + u32(i) * x_row_stride + u32(j) * x_col_stride;",
             "  var oo = out_off + u32(i) * out_row_stride + u32(j) * out_col_stride;"]
    for d in reversed(range(nb)):
        lines.append(f"  {{ let c = rem % batch_{d}; rem = rem / batch_{d};")
        lines.append(f"    xo += c * x_batch_stride_{d}; oo += c * out_batch_stride_{d}; }}")
    zero = st.store("0.0" if st.kind == "float" else "0")
    lines.append(f"  if ({keep}) {{ b0[oo] = b1[xo]; }} else {{ b0[oo] = {zero}; }}")
    return codegen.module([st.wgsl, st.wgsl], "\n".join(lines), WG)


def _triangle(x, diagonal, lower, out):
    if x.dim() < 2:
        raise RuntimeError(f"{'tril' if lower else 'triu'}: input tensor must have at least 2 dimensions")
    numel = x.numel()
    if numel == 0:
        return out
    rt = runtime()
    st = rt.stypes[x.dtype]
    batch = list(x.shape[:-2])
    if batch:
        b_sizes, (bx, bo) = pointwise.collapse(batch, [list(x.stride()[:-2]), list(out.stride()[:-2])])
    else:
        b_sizes, bx, bo = [], [], []
    nb = len(b_sizes)
    params = _triangle_packer(nb)(numel, out.elem_offset, x.elem_offset, diagonal, x.shape[-2], x.shape[-1],
                                  x.stride(-2), x.stride(-1), out.stride(-2), out.stride(-1), *b_sizes, *bx, *bo)
    kernel = rt.kernel(("triangle", x.dtype, lower, nb), "tril" if lower else "triu", 2,
                       lambda: _triangle_source(st, lower, nb))
    rt.dispatch(kernel, (out._ws.heap, x._ws.heap), params, codegen.groups_for(numel, WG))
    return out


@implements(aten.tril.default)
def tril(x, diagonal=0):
    return _triangle(x, diagonal, True, empty_like(x))


@implements(aten.triu.default)
def triu(x, diagonal=0):
    return _triangle(x, diagonal, False, empty_like(x))


@implements(aten.tril_.default)
def tril_(x, diagonal=0):
    return _triangle(x, diagonal, True, x)


@implements(aten.triu_.default)
def triu_(x, diagonal=0):
    return _triangle(x, diagonal, False, x)


# -- constant padding -------------------------------------------------------------------------------------
@implements(aten.constant_pad_nd.default)
def constant_pad_nd(x, pad, value=0):
    pad = [int(p) for p in pad]
    if len(pad) % 2 or len(pad) // 2 > x.dim():
        raise RuntimeError(f"Length of pad must be even but instead it equals {len(pad)}")
    k = len(pad) // 2
    shape = list(x.shape)
    src = x
    dst_slices = []
    for i in range(k):
        d = x.dim() - 1 - i
        lo, hi = pad[2 * i], pad[2 * i + 1]
        n = shape[d] + lo + hi
        if n < 0:
            raise RuntimeError(f"The input size {shape[d]}, plus negative padding {lo} and {hi} resulted in a "
                               f"negative output size, which is invalid. Check dimension {d} of your input.")
        # Negative padding crops the input.
        src = aten.slice.Tensor(src, d, max(-lo, 0), shape[d] - max(-hi, 0))
        dst_slices.append((d, max(lo, 0), max(lo, 0) + src.shape[d]))
        shape[d] = n
    out = empty(shape, x.dtype)
    fill(out, value)
    interior = out
    for d, a, b in dst_slices:
        interior = aten.slice.Tensor(interior, d, a, b)
    if src.numel() and interior.numel():
        copy_into(interior, src)
    return out


# -- reflection / replication padding -------------------------------------------------------------------
_PAD_DIM_FIELDS = ("padded_size", "plain_size", "before", "padded_stride", "plain_stride")


@functools.lru_cache(maxsize=None)
def _pad_block(k: int, nb: int) -> codegen.ParamBlock:
    """Per padded dim (the last k): padded size, plain size, pad before, padded stride, plain stride;
    then the nb batch dims' sizes with their padded and plain strides."""
    return codegen.ParamBlock("numel", "padded_off", "plain_off", *(f"{f}[{k}]" for f in _PAD_DIM_FIELDS),
                              f"batch[{nb}]", f"padded_batch_stride[{nb}]", f"plain_batch_stride[{nb}]")


@functools.lru_cache(maxsize=None)
def _pad_packer(k: int, nb: int):
    return _pad_block(k, nb).pack_words


def _pad_source(st, mode, k, nb, backward):
    """Forward: out element -> the input element it copies. Backward: input element (grad_input) <- sum
    of grad_output over the output positions that copied it."""
    lines = [_pad_block(k, nb).wgsl().rstrip("\n"), "  if (gi >= numel) { return; }", "  var rem = gi;",
             "  var oo = padded_off; var io = plain_off;"]

    def w(d, f):
        return f"{_PAD_DIM_FIELDS[f]}_{d}"

    # Coordinates of the padded dims (innermost last), then the batch.
    space = 1 if backward else 0  # which size walks the thread space: out (fwd) or in (bwd)
    for d in reversed(range(k)):
        lines.append(f"  let c{d} = i32(rem % {w(d, space)}); rem = rem / {w(d, space)};")
    for d in reversed(range(nb)):
        lines.append(f"  {{ let c = rem % batch_{d}; rem = rem / batch_{d};")
        lines.append(f"    oo += c * padded_batch_stride_{d}; io += c * plain_batch_stride_{d}; }}")
    if not backward:
        for d in range(k):
            n, lo = f"i32({w(d, 1)})", f"i32({w(d, 2)})"
            lines.append(f"  var s{d} = c{d} - {lo};")
            if mode == "reflect":
                lines.append(f"  if (s{d} < 0) {{ s{d} = -s{d}; }} if (s{d} >= {n}) {{ s{d} = 2 * ({n} - 1) - s{d}; }}")
            else:
                lines.append(f"  s{d} = clamp(s{d}, 0, {n} - 1);")
            lines.append(f"  oo += u32(c{d}) * {w(d, 3)}; io += u32(s{d}) * {w(d, 4)};")
        lines.append("  b0[oo] = b1[io];")
        return codegen.module([st.wgsl, st.wgsl], "\n".join(lines), WG)
    # Backward: b0 is grad_input (walked), b1 grad_output.
    lines.append("  var acc = 0.0;")
    for d in range(k):
        io_add = f"io += u32(c{d}) * {w(d, 4)};"
        lines.append(f"  {io_add}")
    opens = []
    for d in range(k):
        n, lo, on = f"i32({w(d, 1)})", f"i32({w(d, 2)})", f"i32({w(d, 0)})"
        if mode == "reflect":
            # Up to three output positions read input position c: itself, its left and right mirrors.
            opens.append(f"  for (var t{d} = 0; t{d} < 3; t{d} = t{d} + 1) {{\n"
                         f"    var o{d} = c{d} + {lo};\n"
                         f"    if (t{d} == 1) {{ if (c{d} < 1) {{ continue; }} o{d} = {lo} - c{d}; }}\n"
                         f"    if (t{d} == 2) {{ if (c{d} > {n} - 2) {{ continue; }}\n"
                         f"      o{d} = {lo} + 2 * ({n} - 1) - c{d}; }}\n"
                         f"    if (o{d} < 0 || o{d} >= {on}) {{ continue; }}")
        else:
            # Replication: the edge elements are read by the whole pad beside them.
            opens.append(f"  var lo{d} = c{d} + {lo}; var hi{d} = c{d} + {lo};\n"
                         f"  if (c{d} == 0) {{ lo{d} = 0; }}\n"
                         f"  if (c{d} == {n} - 1) {{ hi{d} = {on} - 1; }}\n"
                         f"  lo{d} = max(lo{d}, 0); hi{d} = min(hi{d}, {on} - 1);\n"
                         f"  for (var o{d} = lo{d}; o{d} <= hi{d}; o{d} = o{d} + 1) {{")
    lines += opens
    at = " + ".join(f"u32(o{d}) * {w(d, 3)}" for d in range(k))
    lines.append(f"    acc += {st.load(f'b1[oo + {at}]', 'f32')};")
    lines += ["  }"] * k
    lines.append(f"  b0[io] = {st.store('acc')};")
    return codegen.module([st.wgsl, st.wgsl], "\n".join(lines), WG)


def _pad_launch(mode, k, padded, plain, pads, backward):
    """pads: [(before, after)] for the last k dims, innermost first (F.pad order). Forward writes
    `padded` from `plain`; backward writes `plain` (grad_input) from `padded` (grad_output)."""
    rt = runtime()
    st = rt.stypes[padded.dtype]
    numel = (plain if backward else padded).numel()
    if numel == 0:
        return
    nd = padded.dim()
    dims = range(nd - k, nd)
    batch = list(range(nd - k))
    if batch:
        b_sizes, (bo, bi) = pointwise.collapse([plain.shape[d] for d in batch],
                                               [[padded.stride(d) for d in batch], [plain.stride(d) for d in batch]])
    else:
        b_sizes, bo, bi = [], [], []
    params = _pad_packer(k, len(b_sizes))(
        numel, padded.elem_offset, plain.elem_offset, *(padded.shape[d] for d in dims),
        *(plain.shape[d] for d in dims), *(pads[nd - 1 - d][0] & 0xFFFFFFFF for d in dims),
        *(padded.stride(d) for d in dims), *(plain.stride(d) for d in dims), *b_sizes, *bo, *bi)
    key = ("pad", mode, k, len(b_sizes), padded.dtype, backward)
    kernel = rt.kernel(key, f"{mode}_pad{k}d{'_backward' if backward else ''}", 2,
                       lambda: _pad_source(st, mode, k, len(b_sizes), backward))
    heaps = (plain._ws.heap, padded._ws.heap) if backward else (padded._ws.heap, plain._ws.heap)
    rt.dispatch(kernel, heaps, params, codegen.groups_for(numel, WG))


def _pad_forward(mode, x, padding):
    k = len(padding) // 2
    if x.dim() < k:
        raise RuntimeError(f"{mode} padding of {k} dims needs an input with at least {k} dims")
    pads = [(padding[2 * i], padding[2 * i + 1]) for i in range(k)]
    shape = list(x.shape)
    for i, (lo, hi) in enumerate(pads):
        d = x.dim() - 1 - i
        if mode == "reflect" and (lo >= shape[d] or hi >= shape[d]):
            raise RuntimeError(f"Argument #4: Padding size should be less than the corresponding input dimension, "
                               f"but got: padding ({lo}, {hi}) at dimension {d} of input {list(x.shape)}")
        shape[d] += lo + hi
        if shape[d] <= 0:
            raise RuntimeError(f"input (size {list(x.shape)}) with padding {list(padding)} gives an empty output")
    out = empty(shape, x.dtype)
    _pad_launch(mode, k, out, x, pads, backward=False)
    return out


def _pad_backward(mode, grad_output, x, padding):
    k = len(padding) // 2
    pads = [(padding[2 * i], padding[2 * i + 1]) for i in range(k)]
    grad_input = empty(x.shape, grad_output.dtype)
    _pad_launch(mode, k, grad_output, grad_input, pads, backward=True)
    return grad_input


def _register_pads():
    for k in (1, 2, 3):
        for mode, name in (("reflect", "reflection"), ("replicate", "replication")):
            fwd = getattr(aten, f"{name}_pad{k}d").default
            bwd = getattr(aten, f"{name}_pad{k}d_backward").default
            implements(fwd)(lambda x, padding, _m=mode: _pad_forward(_m, x, padding))
            implements(bwd)(lambda g, x, padding, _m=mode: _pad_backward(_m, g, x, padding))


_register_pads()


# -- *_scatter: a copy of the input with one view of it overwritten (the backwards of slicing) ------------
@implements(aten.slice_scatter.default)
def slice_scatter(x, src, dim=0, start=None, end=None, step=1):
    out = aten.clone.default(x)
    copy_into(aten.slice.Tensor(out, dim, start, end, step), src)
    return out


@implements(aten.select_scatter.default)
def select_scatter(x, src, dim, index):
    out = aten.clone.default(x)
    copy_into(aten.select.int(out, dim, index), src)
    return out


@implements(aten.diagonal_scatter.default)
def diagonal_scatter(x, src, offset=0, dim1=0, dim2=1):
    out = aten.clone.default(x)
    copy_into(aten.diagonal.default(out, offset, dim1, dim2), src)
    return out


@implements(aten.as_strided_scatter.default)
def as_strided_scatter(x, src, size, stride, storage_offset=None):
    out = aten.clone.default(x)
    copy_into(aten.as_strided.default(out, size, stride, storage_offset or 0), src)
    return out


# -- repeat_interleave: the indices that repeat position i repeats[i] times -------------------------------
# The output size, the number of repeats, the offsets of their inclusive running sums and of the output.
_REPEAT_INDEX = codegen.ParamBlock("total", "n", "ends_off", "out_off")
_REPEAT_INDEX_PACK = _REPEAT_INDEX.pack_words


def _repeat_index_source(r_st, i64_st):
    """Output position j gets the first i whose running sum exceeds j (binary search)."""
    body = f"""
{_REPEAT_INDEX.wgsl()}  if (gi >= total) {{ return; }}
  var lo = 0u; var hi = n;
  while (lo < hi) {{
    let mid = (lo + hi) >> 1u;
    if (u32({r_st.load('ends[ends_off + mid]', 'i32')}) <= gi) {{ lo = mid + 1u; }} else {{ hi = mid; }}
  }}
  outs[out_off + gi] = {i64_st.store('lo')};"""
    return codegen.module([r_st.wgsl, i64_st.wgsl], body, WG, names=["ends", "outs"])


@implements(aten.repeat_interleave.Tensor)
def repeat_interleave(repeats, *, output_size=None):
    if repeats.dim() != 1:
        raise RuntimeError("repeat_interleave only accept 1D vector as repeat")
    n = repeats.numel()
    ends = scan_into("sum", repeats, empty([n], torch.int64), 0) if n else empty([0], torch.int64)
    if output_size is None:
        # The output size depends on the data: the one host read-back of this op.
        output_size = int(to_cpu(aten.slice.Tensor(ends, 0, n - 1, n))[0]) if n else 0
    out = empty([output_size], torch.int64)
    if output_size == 0:
        return out
    rt = runtime()
    r_st, i64_st = rt.stypes[torch.int64], rt.stypes[torch.int64]
    kernel = rt.kernel(("repeat_index",), "repeat_interleave", 2, lambda: _repeat_index_source(r_st, i64_st))
    params = _REPEAT_INDEX_PACK(output_size, n, ends.elem_offset, out.elem_offset)
    rt.dispatch(kernel, (ends._ws.heap, out._ws.heap), params, codegen.groups_for(output_size, WG))
    return out
