"""Elementwise launches whose WGSL needs helpers too large to join every generated kernel.

pointwise.run appends wgsl_math.helpers to every elementwise kernel; the Bessel, polynomial and
error-function helpers (wgsl_bessel, wgsl_polynomials, wgsl_error_functions) are hundreds of lines that
only these ops use, so their kernels are built here instead: one thread per element over operands that
the caller has already broadcast to one contiguous shape. Loads convert any storage type to f32 (int64,
int32 and bool inputs promote to a float result, as on the CPU); the result is stored in `out_dtype`.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

from navitrain.wgpu.kernels import codegen, wgsl_math
from navitrain.wgpu.runtime import runtime
from navitrain.wgpu.tensor import WgpuTensor, empty

WG = 256
OPERAND_NAMES = "abc"

_BLOCKS: dict = {}


def _block(n_inputs: int) -> codegen.ParamBlock:
    block = _BLOCKS.get(n_inputs)
    if block is None:
        operand_offsets = (f"off_{OPERAND_NAMES[k]}" for k in range(n_inputs))
        block = _BLOCKS[n_inputs] = codegen.ParamBlock("n", "off_out", *operand_offsets)
    return block


def _source(expr: str, helpers: str, in_dtypes: tuple, out_dtype: torch.dtype) -> str:
    rt = runtime()
    out_st = rt.stypes[out_dtype]
    block = _block(len(in_dtypes))
    lines = [block.wgsl(), "  if (gi >= n) { return; }"]
    for k, dtype in enumerate(in_dtypes):
        name = OPERAND_NAMES[k]
        lines.append(f"  let {name} = {rt.stypes[dtype].load(f'b{k + 1}[off_{name} + gi]', 'f32')};")
    lines.append(f"  b0[off_out + gi] = {out_st.store(expr)};")
    types = [out_st.wgsl] + [rt.stypes[d].wgsl for d in in_dtypes]
    all_helpers = wgsl_math.helpers("shader-int64" in rt.features) + helpers
    return codegen.module(types, "\n".join(lines), WG, helpers=all_helpers)


def run(name: str, expr: str, helpers: Callable[[], str], inputs: Sequence[WgpuTensor],
        out_dtype: torch.dtype) -> WgpuTensor:
    """out[i] = expr(a[i], b[i], ...) for contiguous `inputs` of one shape; `helpers()` gives the WGSL
    functions `expr` calls (called once, when the kernel is first built)."""
    shape = tuple(inputs[0].shape)
    assert all(tuple(t.shape) == shape and t.is_contiguous() for t in inputs), \
        "operands must be broadcast and contiguous"
    out = empty(shape, out_dtype)
    n = out.numel()
    if n == 0:
        return out
    in_dtypes = tuple(t.dtype for t in inputs)
    rt = runtime()
    key = ("special_pw", name, expr, in_dtypes, out_dtype)
    kernel = rt.kernel(key, f"special_{name}", 1 + len(inputs),
                       lambda: _source(expr, helpers(), in_dtypes, out_dtype))
    params = _block(len(inputs)).pack_words(n, out.elem_offset, *(t.elem_offset for t in inputs))
    rt.dispatch(kernel, (out._ws.heap, *(t._ws.heap for t in inputs)), params, codegen.groups_for(n, WG))
    return out
