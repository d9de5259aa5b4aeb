"""Keys for accumulating scatters: int32 destination indices that segment_reduce sorts and groups.

- `wrapped_keys`: one index tensor's values, negatives wrapped (scatter_add, index_add, put_, embedding
  backward);
- `offset_keys`: the offset several index tensors add together, one key per element of their broadcast
  shape (index_put_ with accumulate=True, where x[i0, i1] += v needs one key per (i0, i1) pair).
An index out of range becomes INVALID_KEY, which sorts last and is skipped.
"""
from __future__ import annotations

import functools

import torch

from navitrain.wgpu.kernels import codegen, pointwise
from navitrain.wgpu.kernels.indexed_copy import index_checks, index_fields, index_words, walk
from navitrain.wgpu.runtime import runtime
from navitrain.wgpu.tensor import WgpuTensor, empty

WG = 256
INVALID_KEY = 0x7FFFFFFF  # a key that sorts last and marks an index out of range


def wrapped_keys(index: WgpuTensor, n: int) -> WgpuTensor:
    """int32 keys of `index` (same shape, contiguous): negatives wrapped, out-of-range -> INVALID_KEY."""
    ic = pointwise.compute_type(index.dtype)
    conv = "i64" if ic == "i64" else "i32"
    expr = (f"select(select(i32(a), i32(a + {conv}(s0)), a < {conv}(0)), {INVALID_KEY}, "
            f"a < -{conv}(s0) || a >= {conv}(s0))")
    return pointwise.run("index_keys", expr, [index], torch.int32, ic, [n], "i", out=empty(index.shape, torch.int32))


@functools.lru_cache(maxsize=None)
def _offset_block(m: int, nd: int) -> codegen.ParamBlock:
    """numel, keys offset, per index tensor offset/size/stride moved, then sizes and the index strides."""
    return codegen.ParamBlock("numel", "keys_off", *index_fields(m), f"size[{nd}]",
                              *(f"ix{k}_stride[{nd}]" for k in range(m)))


@functools.lru_cache(maxsize=None)
def _offset_packer(m: int, nd: int):
    # Positional, in _offset_block's field order, as the keyword pack() would cost microseconds per call.
    return _offset_block(m, nd).pack_words


def _offset_source(idx_sts, nd):
    m = len(idx_sts)
    lines = [_offset_block(m, nd).wgsl().rstrip("\n"), "  if (gi >= numel) { return; }"]
    lines += walk(nd, [f"ix{k}" for k in range(m)])
    lines.append("  var ok = true; var moved = 0u;")
    lines += index_checks(idx_sts, 0)
    lines.append(f"  keys[keys_off + gi] = select({INVALID_KEY}, i32(moved), ok);")
    return codegen.module(["i32"] + [st.wgsl for st in idx_sts], "\n".join(lines), WG,
                          names=["keys"] + [f"ix{k}" for k in range(m)])


def offset_keys(keys: WgpuTensor, B, idx_ops, at: int, nb: int) -> None:
    """keys[b] = sum over index tensors of wrapped index * stride (INVALID_KEY when any is out of range).
    idx_ops: [(index tensor, strides over the result shape, size of the indexed dim, stride it moves)];
    B (the broadcast index shape) sits at dims at..at+nb of the result shape."""
    rt = runtime()
    numel = keys.numel()
    shifted = [(t, s[at:at + nb] if nb else [], n, moves) for t, s, n, moves in idx_ops]
    sizes, strides = pointwise.collapse(list(B) or [1], [list(s) or [0] for _, s, _, _ in shifted])
    nd = len(sizes)
    idx_sts = [rt.stypes[t.dtype] for t, *_ in shifted]
    m = len(shifted)
    words = [numel, keys.elem_offset, *index_words(shifted), *sizes]
    for s in strides:
        words += s
    params = _offset_packer(m, nd)(*words)
    kernel = rt.kernel(("offset_keys", tuple(t.dtype for t, *_ in shifted), nd), "offset_keys", 1 + m,
                       lambda: _offset_source(idx_sts, nd))
    rt.dispatch(kernel, (keys._ws.heap,) + tuple(t._ws.heap for t, *_ in shifted), params,
                codegen.groups_for(numel, WG))
