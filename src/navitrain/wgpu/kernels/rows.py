"""Row kernels: ops that reduce along one dim and then write along it (softmax, log_softmax, their
backwards, attention's causal softmax; the norms have their own kernels, kernels/row_norm.py and
kernels/batch_norm.py). The tensor is seen as [outer, D, inner] (contiguous); a "row" is one (outer,
inner) pair. When inner == 1 the rows are contiguous and a workgroup takes each row (tree reductions
in workgroup memory); otherwise a thread takes each row and walks it with stride `inner`, which keeps
neighbouring threads on neighbouring addresses.

`row_source` builds such a kernel from a few WGSL snippets:
- `passes`: a list of (accumulator init, per-element update, merge of two accumulators, name) reductions
  run one after another; each later pass can use the results of earlier ones (named r0, r1, ...);
- `write`: a statement run for every element once all passes are done.
Snippets read element j of input k as `X{k}(j)`, write output k as `Y{k}(j, value);` (one per line)
and read extra scalar parameter n (an f32) as `extra_n` (a field of the kernel's ParamBlock).
"""
from __future__ import annotations

import functools
import re

from navitrain.wgpu.kernels import codegen, loop_budget, wgsl_math
from navitrain.wgpu.runtime import runtime


def geometry(shape, dim: int) -> tuple[int, int, int]:
    outer = 1
    for s in shape[:dim]:
        outer *= s
    inner = 1
    for s in shape[dim + 1:]:
        inner *= s
    return outer, shape[dim], inner


@functools.lru_cache(maxsize=None)
def _block(n_in: int, n_out: int, n_extra: int) -> codegen.ParamBlock:
    return codegen.ParamBlock("rows", "D", "inner", f"in_off[{n_in}]", f"out_off[{n_out}]", f"extra[{n_extra}]: f32")


def row_source(in_st: list, out_st: list, passes: list[tuple[str, str, str]], write: str, variant: str,
               wg: int, extra_params: int = 0) -> str:
    n_in, n_out = len(in_st), len(out_st)

    def expand(code: str) -> str:
        for k in range(n_in):
            code = re.sub(rf"X{k}\(([^()]*)\)", lambda m, k=k: in_st[k].load(
                f"b{n_out + k}[ib{k} + ({m.group(1)}) * inner]", "f32"), code)
        for k in range(n_out):
            code = re.sub(rf"Y{k}\(([^,()]*), (.*)\);", lambda m, k=k: f"b{k}[ob{k} + ({m.group(1)}) * inner] = "
                          f"{out_st[k].store(m.group(2))};", code)
        return code

    lines = [_block(n_in, n_out, extra_params).wgsl()]
    w = lines.append
    row = "gi" if variant == "thread" else "group"
    w(f"  let row = {row};")
    w("  if (row >= rows) { return; }")
    w("  let o = row / inner; let i = row % inner;")
    for k in range(n_in):
        w(f"  let ib{k} = in_off_{k} + o * D * inner + i;")
    for k in range(n_out):
        w(f"  let ob{k} = out_off_{k} + o * D * inner + i;")
    shared = ""
    for p, (init, update, merge) in enumerate(passes):
        w(f"  var acc{p}: f32 = {init};")
        if variant == "thread":
            w("  for (var j = 0u; j < D; j = j + 1u) {")
        else:
            w(f"  for (var j = lid; j < D; j = j + {wg}u) {{")
        w("    " + expand(update.replace("acc", f"acc{p}")))
        w("  }")
        if variant == "thread":
            w(f"  let r{p} = acc{p};")
        else:
            w(f"  red[lid] = acc{p};")
            w("  workgroupBarrier();")
            w(f"  for (var s = {wg // 2}u; s > 0u; s = s >> 1u) {{")
            w(f"    if (lid < s) {{ red[lid] = {merge.replace('A', 'red[lid]').replace('B', 'red[lid + s]')}; }}")
            w("    workgroupBarrier();")
            w("  }")
            w(f"  let r{p} = red[0];")
            w("  workgroupBarrier();")
    if variant == "thread":
        w("  for (var j = 0u; j < D; j = j + 1u) {")
    else:
        w(f"  for (var j = lid; j < D; j = j + {wg}u) {{")
    w("    " + expand(write))
    w("  }")
    if variant != "thread":
        shared = f"var<workgroup> red: array<f32, {wg}>;\n"
    types = [st.wgsl for st in out_st] + [st.wgsl for st in in_st]
    return codegen.module(types, "\n".join(lines), wg, shared=shared,
                          helpers=wgsl_math.helpers("shader-int64" in runtime().features))


def launch(name: str, key_extra, inputs: list, outputs: list, passes, write: str, dim: int,
           extras: list[float] = ()) -> None:
    """Run a row kernel over contiguous `inputs`/`outputs` of the same shape along `dim`."""
    rt = runtime()
    shape = list(outputs[0].shape) or [1]
    outer, D, inner = geometry(shape, dim if outputs[0].dim() else 0)
    rows = outer * inner
    if rows == 0 or D == 0:
        return
    variant = "group" if inner == 1 and D > 32 else "thread"
    # A thread walks its row once per pass and once to write; llvmpipe stops a kernel's loops after 65535
    # passes in all (kernels/loop_budget.py), so a long strided row is shared by a workgroup instead.
    if variant == "thread" and (len(passes) + 1) * (D + 1) > loop_budget.PASS_BUDGET:
        variant = "group"
    wg = 256 if variant == "group" and D >= 1024 else 64
    if variant == "group":
        loop_budget.require((len(passes) + 1) * loop_budget.strided(D, wg) + len(passes) * wg.bit_length(),
                            f"a row kernel over {D} elements")
    in_st = [rt.stypes[t.dtype] for t in inputs]
    out_st = [rt.stypes[t.dtype] for t in outputs]
    params = _block(len(inputs), len(outputs), len(extras)).pack(
        rows=rows, D=D, inner=inner, in_off=[t.elem_offset for t in inputs],
        out_off=[t.elem_offset for t in outputs], extra=extras)
    key = ("rows", name, key_extra, tuple(t.dtype for t in inputs), tuple(t.dtype for t in outputs), variant, wg)
    kernel = rt.kernel(key, f"rows_{name}", len(inputs) + len(outputs),
                       lambda: row_source(in_st, out_st, passes, write, variant, wg, len(extras)))
    heaps = tuple(t._ws.heap for t in outputs) + tuple(t._ws.heap for t in inputs)
    groups = codegen.groups_for(rows, wg) if variant == "thread" else codegen.grid(rows)
    rt.dispatch(kernel, heaps, params, groups)
