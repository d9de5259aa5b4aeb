"""The pointwise engine: one generated kernel per (expression, dtypes, layout class), any broadcasting.

An op is a WGSL expression over its inputs `a, b, c, d` (already converted to their compute types)
and scalar parameters `s0..s3`. Layout classes keep kernels few and fast:
- every operand contiguous with the output's element count (or a single element): `x[off + i]`;
- anything else (broadcasting, transposes, slices): dims are first collapsed where every operand is
  contiguous across them, then each thread turns its linear index into per-operand offsets.
Scalars travel in the parameter block, so `x + 1.0` and `x + 2.0` share one compiled kernel.
"""
from __future__ import annotations

import functools
from typing import Sequence

import torch
from torch._prims_common import compute_elementwise_output_strides

from navitrain.wgpu.kernels import codegen, float64_exprs, wgsl_math
from navitrain.wgpu.runtime import runtime
from navitrain.wgpu.tensor import WgpuTensor, empty, empty_fast

NAMES = "abcd"
WG = 256
_GROUPS: dict = {}


def groups_for(numel: int) -> tuple[int, int, int]:
    g = _GROUPS.get(numel)
    if g is None:
        if len(_GROUPS) > 4096:
            _GROUPS.clear()
        g = _GROUPS[numel] = codegen.groups_for(numel, WG)
    return g


# Broadcast results per tuple of operand shapes. torch.broadcast_shapes is Python written for symbolic
# shapes (a guard per dimension pair): tens of microseconds, on every broadcasting op (a bias add).
# Only all-int shapes are kept; errors are raised by torch each time.
_BROADCAST: dict = {}


def broadcast_shape(*shapes) -> tuple[int, ...]:
    try:
        result = _BROADCAST.get(shapes)
    except TypeError:  # a list among the shapes
        return tuple(torch.broadcast_shapes(*shapes))
    if result is None:
        result = tuple(torch.broadcast_shapes(*shapes))
        if all(type(d) is int for s in shapes for d in (s if isinstance(s, tuple) else (s,))):
            if len(_BROADCAST) > 4096:
                _BROADCAST.clear()
            _BROADCAST[shapes] = result
    return result


def _operand_strides(t: torch.Tensor, shape: tuple[int, ...]) -> list[int]:
    """Strides of `t` broadcast to `shape` (0 along broadcast dims)."""
    nd = len(shape)
    tshape, tstride = t.shape, t.stride()
    pad = nd - len(tshape)
    out = [0] * nd
    for d in range(len(tshape)):
        if tshape[d] != 1:
            out[pad + d] = tstride[d]
    return out


def collapse(shape: Sequence[int], strides: list[list[int]]) -> tuple[list[int], list[list[int]]]:
    """Drop size-1 dims and merge neighbours that every operand walks contiguously."""
    dims = [d for d in range(len(shape)) if shape[d] != 1]
    if not dims:
        return [1], [[0] for _ in strides]
    sizes = [shape[dims[0]]]
    st = [[s[dims[0]]] for s in strides]
    for d in dims[1:]:
        size = shape[d]
        if all(s[-1] == sd[d] * size for s, sd in zip(st, strides)):
            sizes[-1] *= size
            for s, sd in zip(st, strides):
                s[-1] = sd[d]
        else:
            sizes.append(size)
            for s, sd in zip(st, strides):
                s.append(sd[d])
    return sizes, st


@functools.lru_cache(maxsize=None)
def _params(n_in: int, ndim: int, scalar_kinds: str, compute: str) -> codegen.ParamBlock:
    """The block of a kernel over n_in inputs: element count, offsets (output first), and for the
    strided class (ndim > 0) the collapsed sizes and each operand's strides; then the scalars."""
    fields = ["n", f"off[{n_in + 1}]"]
    if ndim:
        fields.append(f"size[{ndim}]")
        fields += [f"stride{k}[{ndim}]" for k in range(n_in + 1)]
    return codegen.ParamBlock(*fields, *(_scalar_field(k, kind, compute) for k, kind in enumerate(scalar_kinds)))


def _scalar_field(k: int, kind: str, compute: str) -> str:
    if kind == "f":
        return f"s{k}: f32"
    return f"s{k}_i32: i32" if compute == "i64" else f"s{k}: i32"  # widened to s{k} in the body


@functools.lru_cache(maxsize=None)
def _positional(n_in: int, ndim: int, scalar_kinds: str, compute: str):
    """_params(...) packed in its declaration order (n, offsets, sizes, each operand's strides, scalars):
    the keyword pack() would add microseconds to every broadcasting op."""
    return _params(n_in, ndim, scalar_kinds, compute).pack_words


def _source(expr: str, in_types: tuple, load_types: tuple, out_dtype_key, modes: str, ndim: int,
            scalar_kinds: str, compute: str, prelude: str = "", native_f64: bool = False) -> str:
    rt = runtime()
    out_st = rt.stypes[out_dtype_key]
    n_in = len(in_types)
    block = _params(n_in, ndim if modes == "strided" else 0, scalar_kinds, compute)
    lines = [block.wgsl(), "  if (gi >= n) { return; }"]
    if modes == "strided":
        lines.append("  var rem = gi;")
        for k in range(n_in + 1):
            lines.append(f"  var o{k} = off_{k};")
        for d in reversed(range(ndim)):
            if d > 0:
                lines.append(f"  let i{d} = rem % size_{d}; rem = rem / size_{d};")
            else:
                lines.append(f"  let i{d} = rem;")
            for k in range(n_in + 1):
                lines.append(f"  o{k} += i{d} * stride{k}_{d};")
    else:
        lines.append("  let o0 = off_0 + gi;")
        for k, m in enumerate(modes):
            lines.append(f"  let o{k + 1} = off_{k + 1}" + (" + gi;" if m == "c" else ";"))
    for k, kind in enumerate(scalar_kinds):
        if kind != "f" and compute == "i64":
            lines.append(f"  let s{k} = i64(s{k}_i32);")
    for k in range(n_in):
        st = rt.stypes[in_types[k]]
        lines.append(f"  let {NAMES[k]} = {st.load(f'b{k + 1}[o{k + 1}]', load_types[k], native_f64)};")
    if prelude:
        lines.append(prelude)
    lines.append(f"  b0[o0] = {out_st.store(expr, native_f64)};")
    types = [out_st.wgsl] + [rt.stypes[t].wgsl for t in in_types]
    helpers = wgsl_math.helpers("shader-int64" in rt.features)
    if compute == "f64":
        helpers += float64_exprs.HELPERS
    return codegen.module(types, "\n".join(lines), WG, helpers=helpers)


_FAST: dict = {}


class _FastLaunch:
    """A compiled contiguous-layout kernel and the packer of its parameter block."""

    __slots__ = ("kernel", "pack")

    def __init__(self, kernel, block: codegen.ParamBlock, f32_kinds: str | None = None):
        self.kernel = kernel
        # Positional, in the block's field order: (n, out offset, input offsets..., scalars...). The
        # keyword pack() costs a few microseconds more, on the path every elementwise op takes.
        self.pack = block.pack_words
        if f32_kinds is not None:  # a float64 kernel: float scalars go as their two 32-bit halves
            n_fixed = block.words - len(float64_exprs.scalar_words([0.0] * len(f32_kinds), f32_kinds))
            words = block.pack_words
            self.pack = lambda *v: words(*v[:n_fixed], *float64_exprs.scalar_words(v[n_fixed:], f32_kinds))


_F64 = torch.float64


def _f64_plan(expr: str, in_types: tuple, out_dtype, compute: str, kinds: str, load_types: tuple, prelude: str,
              native_f64: bool):
    """None for kernels that are not float64 in an f32 template; else (expr, kinds, load types, prelude)
    of the f64 kernel, or NoKernelForDtype where the template is not exact in f64."""
    if native_f64 or compute != "f32" or (out_dtype is not _F64 and _F64 not in in_types):
        return None
    # A float64 operand written to a narrower float is a handler's own f32 intermediate (var's squares,
    # built for float16 inputs): in f64 that would drop precision silently, so such an op runs on the CPU.
    if runtime().stypes[_F64].wgsl != "f64" or prelude or (out_dtype is not _F64 and out_dtype.is_floating_point):
        from navitrain.wgpu.dtypes import NoKernelForDtype

        raise NoKernelForDtype("no float64 kernel for this expression on this adapter")
    return float64_exprs.translate(expr, kinds, load_types)


def run(name: str, expr: str, inputs: Sequence[WgpuTensor], out_dtype: torch.dtype, compute: str,
        scalars: Sequence = (), scalar_kinds: str = "", out: WgpuTensor | None = None,
        load_types: Sequence[str] | None = None, shape: tuple | None = None, prelude: str = "",
        native_f64: bool = False) -> WgpuTensor:
    """Compute `expr` elementwise over broadcast `inputs` into `out` (allocated when None). `prelude`:
    WGSL statements placed after the loads that `expr` may use (`let` values of a fused chain).
    `native_f64`: `expr` computes float64 operands exactly (f64 buffers allowed; names stay apart from
    the kernels of callers that do not opt in, which raise NoKernelForDtype before compiling)."""
    # Fast path (the common case in training): inputs contiguous with one shape (or single elements
    # of no more dims), a fresh contiguous output. Everything but the offsets is looked up once.
    if out is None and shape is None and not prelude and inputs and inputs[0].is_contiguous():
        first = inputs[0]
        fshape = first.shape
        modes = ""
        for t in inputs:
            if t.shape == fshape and t.is_contiguous():
                modes += "c"
            elif t.numel() == 1 and t.dim() <= first.dim():
                modes += "s"
            else:
                modes = None
                break
        if modes is not None:
            kinds = scalar_kinds or "f" * len(scalars)
            key = (name, expr, out_dtype, modes, kinds, compute, load_types and tuple(load_types),
                   *(t.dtype for t in inputs))
            fast = _FAST.get(key)
            if fast is None:
                lt = tuple(load_types) if load_types is not None else (compute,) * len(inputs)
                in_types = tuple(t.dtype for t in inputs)
                f64 = _f64_plan(expr, in_types, out_dtype, compute, kinds, lt, "", native_f64)
                if f64 is None:
                    kexpr, kkinds, klt, kprelude, kcompute, f32_kinds = expr, kinds, lt, "", compute, None
                else:
                    (kexpr, kkinds, klt, kprelude), kcompute, f32_kinds = f64, "f64", kinds
                kkey = ("pw", name, kexpr, in_types, klt, out_dtype, modes, 0, kkinds, kcompute)
                kernel = runtime().kernel(
                    kkey + (kprelude,) if kprelude else kkey,
                    f"pointwise_{name}", 1 + len(inputs),
                    lambda: _source(kexpr, in_types, klt, out_dtype, modes, 0, kkinds, kcompute, kprelude,
                                    native_f64 or f64 is not None))
                fast = _FAST[key] = _FastLaunch(kernel, _params(len(inputs), 0, kkinds, kcompute), f32_kinds)
            numel = first.numel()
            out = empty_fast(fshape, first.stride(), out_dtype, numel)
            if numel:
                rt = runtime()
                rt.dispatch(fast.kernel, (out._ws.heap, *(t._ws.heap for t in inputs)),
                            fast.pack(numel, out.elem_offset, *(t.elem_offset for t in inputs), *scalars),
                            groups_for(numel))
            return out
    if shape is None:
        shape = tuple(inputs[0].shape) if len(inputs) == 1 else broadcast_shape(*(t.shape for t in inputs))
    if out is None:
        out = _new_output(inputs, shape, out_dtype)
    elif tuple(out.shape) != tuple(shape):
        raise RuntimeError(f"{name}: output of shape {tuple(out.shape)} cannot hold a result of shape {shape}")
    numel = out.numel()
    if numel == 0:
        return out
    load_types = tuple(load_types) if load_types is not None else (compute,) * len(inputs)
    if not scalar_kinds:
        scalar_kinds = "f" * len(scalars)

    # Layout class: contiguous/scalar operands, or the general strided walk.
    modes = ""
    if out.is_contiguous():
        for t in inputs:
            n = t.numel()
            if n == numel and t.is_contiguous() and tuple(t.shape) == tuple(shape):
                modes += "c"
            elif n == 1:
                modes += "s"
            else:
                modes = "strided"
                break
    else:
        modes = "strided"

    in_types = tuple(t.dtype for t in inputs)
    f64 = _f64_plan(expr, in_types, out.dtype, compute, scalar_kinds, load_types, prelude, native_f64)
    if f64 is not None:
        scalars = float64_exprs.scalar_words(scalars, scalar_kinds)
        (expr, scalar_kinds, load_types, prelude), compute, native_f64 = f64, "f64", True

    ndim, layout = 0, ()
    if modes == "strided":
        ndim, layout = _strided_layout(shape, out, inputs)
    raw = _positional(len(inputs), ndim, scalar_kinds, compute)(
        numel, out.elem_offset, *(t.elem_offset for t in inputs), *layout,
        *(float(v) if kind == "f" else int(v) for v, kind in zip(scalars, scalar_kinds)))

    key = ("pw", name, expr, in_types, load_types, out.dtype, modes, ndim, scalar_kinds, compute)
    if prelude:
        key += (prelude,)  # only then: the fast path's kernels share the key of the same kernel here
    rt = runtime()
    kernel = rt._kernels.get(key)
    if kernel is None:
        kernel = rt.kernel(key, f"pointwise_{name}", 1 + len(inputs),
                           lambda: _source(expr, in_types, load_types, out.dtype, modes, ndim, scalar_kinds, compute,
                                           prelude, native_f64))
    heaps = (out._ws.heap,) + tuple(t._ws.heap for t in inputs)
    rt.dispatch(kernel, heaps, raw, groups_for(numel))
    return out


# The collapsed walk of a strided op per (shape, output strides, each input's shape and strides): the
# same few layouts (a bias broadcast over a batch, a transposed operand) recur every step.
_LAYOUTS: dict = {}


def _strided_layout(shape: tuple, out: WgpuTensor, inputs: Sequence[WgpuTensor]) -> tuple[int, tuple]:
    """(collapsed dims, their sizes then each operand's strides, output first)."""
    key = (tuple(shape), out.stride(), *((t.shape, t.stride()) for t in inputs))
    found = _LAYOUTS.get(key)
    if found is None:
        strides = [list(out.stride())] + [_operand_strides(t, shape) for t in inputs]
        sizes, strides = collapse(shape, strides)
        found = (len(sizes), (*sizes, *(s for operand in strides for s in operand)))
        if len(_LAYOUTS) > 4096:
            _LAYOUTS.clear()
        _LAYOUTS[key] = found
    return found


def _new_output(inputs: Sequence[WgpuTensor], shape: tuple, dtype: torch.dtype) -> WgpuTensor:
    """A new output laid out as PyTorch lays out the result of an elementwise op (`output_layout`):
    contiguous when the inputs of the output's shape are."""
    if all(t.is_contiguous() for t in inputs if tuple(t.shape) == shape):
        return empty(shape, dtype)
    return empty(shape, dtype, output_layout(shape, inputs))


_LAYOUT: dict = {}


def output_layout(shape: tuple, inputs: Sequence[torch.Tensor]) -> tuple:
    """The strides PyTorch gives a new elementwise result of `shape` from `inputs` (TensorIterator's rule,
    as torch._prims_common computes it for meta tensors): the first input whose strides tell two
    dimensions apart decides, so x + y.t() is contiguous like x and channels_last stays channels_last.
    Kept per layout: the rule walks every pair of dimensions."""
    key = (shape, tuple((tuple(t.shape), tuple(t.stride())) for t in inputs))
    found = _LAYOUT.get(key)
    if found is None:
        metas = [torch.empty_strided(s, st, device="meta").expand(shape) for s, st in key[1]]
        found = tuple(compute_elementwise_output_strides(*metas))
        if len(_LAYOUT) > 4096:
            _LAYOUT.clear()
        _LAYOUT[key] = found
    return found


def compute_type(dtype: torch.dtype, native_f64: bool = False) -> str:
    """The WGSL type values of `dtype` are computed in ("bool" for bool: loads become comparisons).
    `native_f64`: the caller computes float64 exactly, so "f64" is an answer where the adapter has it."""
    if dtype == torch.bool:
        return "bool"
    st = runtime().stypes[dtype]
    if st.wgsl == "f64":
        # f32 for handlers: their float templates run in f64 where exact (float64_exprs), else fall back
        return "f64" if native_f64 else "f32"
    if not st.has_kernels:
        from navitrain.wgpu.dtypes import NoKernelForDtype

        raise NoKernelForDtype(f"no wgpu kernels compute in {dtype}")
    return st.compute
