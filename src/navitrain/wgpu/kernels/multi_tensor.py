"""Multi-tensor kernels: one dispatch applies an elementwise expression to every tensor of a list.

An optimizer step touches every parameter several times (Adam: about ten list ops); one dispatch per
tensor per op is hundreds of dispatches a step, each with its host cost. Here the tensors' offsets
(and any per-tensor scalars, such as Adam's bias corrections) go into a table in the parameter arena,
each thread binary-searches the table for the tensor its linear index falls in, and the whole list is
one dispatch. Tensors must be contiguous and, per list, live in one heap with one dtype; callers group
the rest (or fall back to per-tensor kernels).
"""
from __future__ import annotations

import functools
import warnings
from typing import Sequence

import numpy as np
import torch

from navitrain.wgpu.kernels import codegen, pointwise, wgsl_math
from navitrain.wgpu.runtime import PARAM_WORDS, runtime
from navitrain.wgpu.tensor import WgpuTensor, empty_fast

WG = 256
NAMES = "abcd"


@functools.lru_cache(maxsize=None)
def _params(n_shared: int) -> codegen.ParamBlock:
    """The block: elements over all tensors, tensors in the table, then the shared scalars s0.."""
    return codegen.ParamBlock("total", "count", *(f"s{k}: f32" for k in range(n_shared)))


@functools.lru_cache(maxsize=None)
def _pack(n_shared: int):
    """(total, count, *shared) -> the block's bytes: every optimizer list op launches through this."""
    return _params(n_shared).pack_words


# Where the table starts (a word index into T): the runtime writes it into the block's last word when
# it places the table (runtime._place); the host packs only the fields above.
_TABLE_BASE = codegen.ParamBlock(f"block[{PARAM_WORDS - 1}]", "table_base").ref("table_base")


def _source(expr: str, out_st, in_st: list, modes: str, n_shared: int, n_per: int, compute: str) -> str:
    n_in = len(in_st)
    W = 3 + n_in + n_per
    lines = [
        _params(n_shared).wgsl(),
        "  if (gi >= total) { return; }",
        f"  let tb = {_TABLE_BASE};",
        "  var lo = 0u; var hi = count - 1u;",
        "  loop { if (lo >= hi) { break; } let mid = (lo + hi + 1u) / 2u;",
        f"    if (T[tb + mid * {W}u] <= gi) {{ lo = mid; }} else {{ hi = mid - 1u; }} }}",
        f"  let row = tb + lo * {W}u; let j = gi - T[row];",
    ]
    for k in range(n_per):
        lines.append(f"  let t{k} = bitcast<f32>(T[row + {3 + n_in + k}u]);")
    for k in range(n_in):
        idx = f"T[row + {3 + k}u] + j" if modes[k] == "c" else f"T[row + {3 + k}u]"
        lines.append(f"  let {NAMES[k]} = {in_st[k].load(f'b{k + 1}[{idx}]', compute)};")
    lines.append(f"  b0[T[row + 2u] + j] = {out_st.store(expr)};")
    rt = runtime()
    types = [out_st.wgsl] + [st.wgsl for st in in_st]
    decl = f"@group(0) @binding({len(types) + 1}) var<storage, read> T: array<u32>;\n"
    return codegen.PARAM_DECL + codegen.bindings(types) + decl + wgsl_math.helpers(
        "shader-int64" in rt.features) + codegen.entry(WG, "\n".join(lines))


def supported(lists: Sequence[Sequence]) -> bool:
    """Whether every tensor can take the multi-tensor path (wgpu, contiguous, float, kernels exist)."""
    rt = runtime()
    for lst in lists:
        for t in lst:
            if not isinstance(t, WgpuTensor) or not t.is_contiguous() or not t.dtype.is_floating_point \
                    or not rt.stypes[t.dtype].has_kernels:
                return False
    return True


def apply(name: str, expr: str, inputs: Sequence[Sequence[WgpuTensor]], out: Sequence[WgpuTensor] | None,
          shared: Sequence[float] = (), per_tensor: Sequence[Sequence[float]] = (), modes: str | None = None,
          compute: str = "f32") -> list[WgpuTensor]:
    """out[i] = expr(inputs[0][i], inputs[1][i], ...) for every i, in as few dispatches as possible.

    `inputs` are parallel lists; mode "s" for a list means its tensors are single elements read at
    offset 0 (broadcast). `shared` scalars are s0.., `per_tensor` scalar lists t0.. (one value per i).
    With `out` None, new tensors shaped like inputs[0] are allocated and returned.
    """
    first = inputs[0]
    n = len(first)
    modes = modes or "c" * len(inputs)
    if out is None:
        out = [empty_fast(t.shape, t.stride(), t.dtype, t.numel()) for t in first]
    rt = runtime()
    n_in, n_per = len(inputs), len(per_tensor)
    if n_per and rt.capture is not None:
        _warn_frozen_scalars(name)
    lists = [out] + list(inputs)
    pack = _pack(len(shared))
    for idx in _groups(lists, n):
        idx = [i for i in idx if out[i].numel()]
        if not idx:
            continue
        i0 = idx[0]
        out_st = rt.stypes[out[i0].dtype]
        in_st = [rt.stypes[lst[i0].dtype] for lst in inputs]
        kkey = ("multi", name, expr, out_st.dtype, tuple(st.dtype for st in in_st), modes, len(shared), n_per, compute)
        kernel = rt.kernel(kkey, f"multi_{name}", 1 + n_in,
                           lambda: _source(expr, out_st, in_st, modes, len(shared), n_per, compute), table=True)
        # The table, one row per tensor: [first linear index, numel, out offset, input offsets...,
        # per-tensor scalars as f32 bits], built column by column (a Python loop per row cost ~0.5 ms
        # per list op for a model's ~80 parameters).
        numel = np.fromiter((out[i].numel() for i in idx), np.int64, len(idx))
        table = np.empty((len(idx), 3 + n_in + n_per), np.uint32)
        table[:, 1] = numel
        for col, lst in enumerate(lists):
            table[:, 2 + col] = np.fromiter((lst[i].elem_offset for i in idx), np.int64, len(idx))
        for k, values in enumerate(per_tensor):
            table[:, 3 + n_in + k] = np.asarray([values[i] for i in idx], np.float32).view(np.uint32)
        heaps = tuple(lst[i0]._ws.heap for lst in lists)
        # Long lists are cut so each table fits comfortably in the arena.
        chunk = max(1, 16384 // (4 * table.shape[1]))
        for c in range(0, len(idx), chunk):
            counts = numel[c:c + chunk]
            part = table[c:c + chunk]
            part[:, 0] = np.cumsum(counts) - counts  # linear index where each tensor starts
            total = int(counts.sum())
            rt.dispatch(kernel, heaps, pack(total, len(part), *shared), pointwise.groups_for(total),
                        table=part.tobytes())
    return list(out)


def _warn_frozen_scalars(name: str) -> None:
    # Not an error: a constant per-tensor list is legitimate. But the usual source is Adam/AdamW
    # without capturable=True, whose bias corrections change every step and would silently stop.
    warnings.warn(
        f"navitrain wgpu: a list op ({name}) with per-tensor Python numbers was captured in a graph; every "
        "replay reuses these numbers. Adam/AdamW compute their bias corrections this way unless created "
        "with capturable=True: use capturable=True for captured steps.", stacklevel=3)


def _groups(lists, n: int) -> list[list[int]]:
    """Indices grouped so that within a group every list's tensors share one heap and one dtype (one
    dispatch binds one heap per list). Normally that is everything, checked without building keys."""
    uniform = True
    for lst in lists:
        heap, dtype = lst[0]._ws.heap, lst[0].dtype
        if not all(t._ws.heap is heap and t.dtype is dtype for t in lst):
            uniform = False
            break
    if uniform:
        return [list(range(n))]
    groups: dict[tuple, list[int]] = {}
    for i in range(n):
        key = tuple((id(lst[i]._ws.heap), lst[i].dtype) for lst in lists)
        groups.setdefault(key, []).append(i)
    return list(groups.values())


def scalar_of(v) -> float:
    return float(v.item()) if isinstance(v, torch.Tensor) else float(v)


def _lists_source(prelude: str, stores: tuple, sts: list, modes: str, compute: str) -> str:
    """One thread per element of the tensor its index falls in: list k (binding b{k}) is loaded as x{k}
    ("c": the thread's element, "s": the tensor's only element, "w": not read), `prelude` computes,
    then each (k, expr) of `stores` is written to the thread's element of list k's tensor. Every load
    comes before every store: a list read and written in place is read as it was."""
    width = 2 + len(sts)
    lines = [
        _params(0).wgsl(),
        "  if (gi >= total) { return; }",
        f"  let tb = {_TABLE_BASE};",
        "  var lo = 0u; var hi = count - 1u;",
        "  loop { if (lo >= hi) { break; } let mid = (lo + hi + 1u) / 2u;",
        f"    if (T[tb + mid * {width}u] <= gi) {{ lo = mid; }} else {{ hi = mid - 1u; }} }}",
        f"  let row = tb + lo * {width}u; let j = gi - T[row];",
    ]
    for k, (st, mode) in enumerate(zip(sts, modes)):
        if mode != "w":
            idx = f"T[row + {2 + k}u]" + (" + j" if mode == "c" else "")
            lines.append(f"  let x{k} = {st.load(f'b{k}[{idx}]', compute)};")
    lines.append(prelude)
    for k, expr in stores:
        lines.append(f"  b{k}[T[row + {2 + k}u] + j] = {sts[k].store(expr)};")
    rt = runtime()
    decl = f"@group(0) @binding({len(sts) + 1}) var<storage, read> T: array<u32>;\n"
    return codegen.PARAM_DECL + codegen.bindings([st.wgsl for st in sts]) + decl + wgsl_math.helpers(
        "shader-int64" in rt.features) + codegen.entry(WG, "\n".join(lines))


def apply_lists(name: str, prelude: str, stores: Sequence[tuple[int, str]], lists: Sequence[Sequence[WgpuTensor]],
                modes: str, size_list: int, compute: str = "f32") -> None:
    """For every i at once: load element j of lists[k][i] as x{k} (mode "c"; "s": its element 0; "w": not
    loaded), run `prelude`, store each (k, expr) into lists[k][i] at j, for j < lists[size_list][i].numel().
    Several outputs, each of which may also be an input (in place), in one dispatch per heap/dtype group:
    a fused optimizer update writes parameters and their state where they are."""
    rt = runtime()
    n = len(lists[0])
    stores = tuple(stores)
    pack = _pack(0)
    for idx in _groups(lists, n):
        idx = [i for i in idx if lists[size_list][i].numel()]
        if not idx:
            continue
        i0 = idx[0]
        sts = [rt.stypes[lst[i0].dtype] for lst in lists]
        key = ("multi_lists", name, prelude, stores, tuple(st.dtype for st in sts), modes, compute)
        kernel = rt.kernel(key, f"multi_{name}", len(lists),
                           lambda: _lists_source(prelude, stores, sts, modes, compute), table=True)
        numel = np.fromiter((lists[size_list][i].numel() for i in idx), np.int64, len(idx))
        table = np.empty((len(idx), 2 + len(lists)), np.uint32)
        table[:, 1] = numel
        for col, lst in enumerate(lists):
            table[:, 2 + col] = np.fromiter((lst[i].elem_offset for i in idx), np.int64, len(idx))
        heaps = tuple(lst[i0]._ws.heap for lst in lists)
        chunk = max(1, 16384 // (4 * table.shape[1]))
        for c in range(0, len(idx), chunk):
            counts = numel[c:c + chunk]
            part = table[c:c + chunk]
            part[:, 0] = np.cumsum(counts) - counts
            total = int(counts.sum())
            rt.dispatch(kernel, heaps, pack(total, len(part)), pointwise.groups_for(total), table=part.tobytes())
