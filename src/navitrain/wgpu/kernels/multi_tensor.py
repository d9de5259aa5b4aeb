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
import operator
import warnings
from itertools import repeat
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


# Per-tensor metadata is gathered list by list through C-level getters (map over method descriptors and
# attrgetters) rather than Python loops: an optimizer step passes lists of every parameter to ~8 list
# ops, and a Python frame per tensor per property cost ~10 us per tensor per list op (issue 19).
_numel = torch.Tensor.numel
_storage_offset = torch.Tensor.storage_offset
_is_contiguous = torch.Tensor.is_contiguous
_stride = torch.Tensor.stride
_shape_of = operator.attrgetter("shape")
_dtype_of = operator.attrgetter("dtype")
_storage_of = operator.attrgetter("_ws")
_base_of = operator.attrgetter("base")
_heap_in = operator.attrgetter("heap")


def _same_tensors(a: Sequence, b: Sequence) -> bool:
    """Whether two lists hold the very same tensor objects (compared by identity: == would be elementwise)."""
    return len(a) == len(b) and all(map(operator.is_, a, b))


def supported(lists: Sequence[Sequence]) -> bool:
    """Whether every tensor can take the multi-tensor path (wgpu, contiguous, float, kernels exist)."""
    stypes = runtime().stypes
    checked: list[Sequence] = []
    for lst in lists:
        if any(_same_tensors(earlier, lst) for earlier in checked):
            continue
        if not all(map(isinstance, lst, repeat(WgpuTensor))) or not all(map(_is_contiguous, lst)):
            return False
        for dtype in set(map(_dtype_of, lst)):
            if not dtype.is_floating_point or not stypes[dtype].has_kernels:
                return False
        checked.append(lst)
    return True


def _gather(lists: Sequence[Sequence[WgpuTensor]]) -> tuple[list[np.ndarray], bool]:
    """Each list's element offsets (WgpuTensor.elem_offset), and whether every list keeps its tensors in
    one heap with one dtype (one dispatch binds one heap per list). A list holding the same tensors as an
    earlier one (an in-place op's output and first input) is not gathered again."""
    columns: list[np.ndarray] = []
    uniform = True
    seen: list[tuple[Sequence, np.ndarray]] = []
    for lst in lists:
        for earlier, column in seen:
            if _same_tensors(earlier, lst):
                break
        else:
            storages = list(map(_storage_of, lst))
            column = np.array(list(map(operator.add, map(_base_of, storages), map(_storage_offset, lst))), np.int64)
            if uniform and (len(set(map(_heap_in, storages))) != 1 or len(set(map(_dtype_of, lst))) != 1):
                uniform = False
            seen.append((lst, column))
        columns.append(column)
    return columns, uniform


def _table(offsets: list[np.ndarray], idx: list[int] | None, numel: np.ndarray, extra: int) -> np.ndarray:
    """The table's rows for tensors `idx` (None: all): [first linear index (filled per chunk), numel,
    each list's element offset..., then `extra` columns for the caller (per-tensor scalars)]."""
    table = np.empty((len(numel), 2 + len(offsets) + extra), np.uint32)
    table[:, 1] = numel
    for col, column in enumerate(offsets):
        table[:, 2 + col] = column if idx is None else column[idx]
    return table


def _dispatch_chunks(rt, kernel, heaps, table: np.ndarray, numel: np.ndarray, pack, shared=()) -> None:
    """Dispatch the table in chunks that fit comfortably in the arena (long lists are cut)."""
    chunk = max(1, 16384 // (4 * table.shape[1]))
    for c in range(0, len(table), chunk):
        counts = numel[c:c + chunk]
        part = table[c:c + chunk]
        part[:, 0] = np.cumsum(counts) - counts  # linear index where each tensor starts
        total = int(counts.sum())
        rt.dispatch(kernel, heaps, pack(total, len(part), *shared), pointwise.groups_for(total), table=part.tobytes())


def _nonempty(numel: np.ndarray, idx: list[int]) -> tuple[list[int] | None, np.ndarray]:
    """(`idx` less the empty tensors, or None where that is every tensor; their element counts)."""
    if len(idx) == len(numel) and numel.all():
        return None, numel
    keep = [i for i in idx if numel[i]]
    return keep, numel[keep]


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
        out = list(map(empty_fast, map(_shape_of, first), map(_stride, first), map(_dtype_of, first),
                       map(_numel, first)))
    rt = runtime()
    n_in, n_per = len(inputs), len(per_tensor)
    if n_per and rt.capture is not None:
        _warn_frozen_scalars(name)
    lists = [out] + list(inputs)
    pack = _pack(len(shared))
    all_numel = np.array(list(map(_numel, out)), np.int64)
    offsets, uniform = _gather(lists)
    for group in _groups(lists, n, uniform):
        idx, numel = _nonempty(all_numel, group)
        if not len(numel):
            continue
        i0 = group[0] if idx is None else idx[0]
        out_st = rt.stypes[out[i0].dtype]
        in_st = [rt.stypes[lst[i0].dtype] for lst in inputs]
        kkey = ("multi", name, expr, out_st.dtype, tuple(st.dtype for st in in_st), modes, len(shared), n_per, compute)
        kernel = rt.kernel(kkey, f"multi_{name}", 1 + n_in,
                           lambda: _source(expr, out_st, in_st, modes, len(shared), n_per, compute), table=True)
        # The table, one row per tensor: [first linear index, numel, out offset, input offsets...,
        # per-tensor scalars as f32 bits], built column by column.
        table = _table(offsets, idx, numel, n_per)
        for k, values in enumerate(per_tensor):
            column = np.asarray(values, np.float32)
            table[:, 3 + n_in + k] = (column if idx is None else column[idx]).view(np.uint32)
        heaps = tuple(lst[i0]._ws.heap for lst in lists)
        _dispatch_chunks(rt, kernel, heaps, table, numel, pack, shared)
    return list(out)


def _warn_frozen_scalars(name: str) -> None:
    # Not an error: a constant per-tensor list is legitimate. But the usual source is Adam/AdamW
    # without capturable=True, whose bias corrections change every step and would silently stop.
    warnings.warn(
        f"navitrain wgpu: a list op ({name}) with per-tensor Python numbers was captured in a graph; every "
        "replay reuses these numbers. Adam/AdamW compute their bias corrections this way unless created "
        "with capturable=True: use capturable=True for captured steps.", stacklevel=3)


def _groups(lists, n: int, uniform: bool) -> list[list[int]]:
    """Indices grouped so that within a group every list's tensors share one heap and one dtype.
    Normally (`uniform`, from _gather) that is everything."""
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
    all_numel = np.array(list(map(_numel, lists[size_list])), np.int64)
    offsets, uniform = _gather(lists)
    for group in _groups(lists, n, uniform):
        idx, numel = _nonempty(all_numel, group)
        if not len(numel):
            continue
        i0 = group[0] if idx is None else idx[0]
        sts = [rt.stypes[lst[i0].dtype] for lst in lists]
        key = ("multi_lists", name, prelude, stores, tuple(st.dtype for st in sts), modes, compute)
        kernel = rt.kernel(key, f"multi_{name}", len(lists),
                           lambda: _lists_source(prelude, stores, sts, modes, compute), table=True)
        table = _table(offsets, idx, numel, 0)
        heaps = tuple(lst[i0]._ws.heap for lst in lists)
        _dispatch_chunks(rt, kernel, heaps, table, numel, pack)
