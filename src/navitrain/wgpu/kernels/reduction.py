"""The reduction engine: sum/prod/max/min/any/all/argmax/argmin over any dims of any strided tensor.

The kept dims and the reduced dims are each collapsed (neighbours walked contiguously merge), then one
of two kernels runs:
- one thread per output, looping over the reduced elements: right when the reduction is short or runs
  across memory (summing the rows of a [N, C] gradient: neighbouring threads read neighbouring columns);
- one workgroup per output (or per chunk of it), a strided loop then a tree in workgroup memory: right
  when the reduced elements are contiguous rows. A long reduction into few outputs is split into chunks
  whose partial results a second pass combines, so one workgroup never walks millions of elements.
Accumulation is f32 for floating inputs (f16/bf16 included) and 64-bit for integers where the adapter
has shader-int64, as PyTorch accumulates.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from navitrain.wgpu.dtypes import NoKernelForDtype
from navitrain.wgpu.kernels import codegen, float64_exprs, wgsl_math
from navitrain.wgpu.kernels.pointwise import collapse
from navitrain.wgpu.runtime import runtime
from navitrain.wgpu.tensor import WgpuTensor, empty

ARG_OPS = ("argmax", "argmin")
_ACC_DTYPES = {"f32": torch.float32, "f64": torch.float64, "i32": torch.int32, "i64": torch.int64}  # partials


def _acc_type(op: str, in_dtype: torch.dtype, out_dtype: torch.dtype | None = None) -> str:
    rt = runtime()
    if op in ("any", "all"):
        return "i32"
    # float64 in or out (sum(x, dtype=torch.float64) adds in double on the CPU) accumulates in f64
    if rt.stypes[torch.float64].wgsl == "f64" and torch.float64 in (in_dtype, out_dtype) and op not in ARG_OPS:
        return "f64"
    if in_dtype == torch.float64 and rt.stypes[in_dtype].wgsl == "f64":  # argmax/argmin of doubles
        return "f64"
    if in_dtype.is_floating_point:
        return "f32"
    if op in ("sum", "prod", "mean"):
        return "i64" if "shader-int64" in rt.features else "i32"
    return rt.stypes[in_dtype].compute


def _identity(op: str, acc: str) -> str:
    if op in ("sum", "mean", "any"):
        return {"f32": "0.0", "f64": "0.0lf", "i32": "0", "i64": "0li"}[acc]
    if op in ("prod", "all"):
        return {"f32": "1.0", "f64": "1.0lf", "i32": "1", "i64": "1li"}[acc]
    lowest = {"f32": "bitcast<f32>(0xff800000u)", "f64": "f64(bitcast<f32>(0xff800000u))", "i32": "(-2147483647 - 1)",
              "i64": "(-9223372036854775807li - 1li)"}
    highest = {"f32": "bitcast<f32>(0x7f800000u)", "f64": "f64(bitcast<f32>(0x7f800000u))", "i32": "2147483647",
               "i64": "9223372036854775807li"}
    return lowest[acc] if op in ("max", "argmax") else highest[acc]


def _merge(op: str, acc: str, a: str, b: str) -> str:
    """WGSL expression combining two accumulators of a value op."""
    f = {"f32": "", "f64": "64"}.get(acc)
    return {
        "sum": f"{a} + {b}", "mean": f"{a} + {b}", "prod": f"{a} * {b}",
        "max": f"fmax_nan{f}({a}, {b})" if f is not None else f"max({a}, {b})",
        "min": f"fmin_nan{f}({a}, {b})" if f is not None else f"min({a}, {b})",
        "any": f"({a} | {b})", "all": f"({a} & {b})",
    }[op]


def _load(op: str, st, expr: str, acc: str) -> str:
    if op in ("any", "all"):
        return f"select(0, 1, {st.load(expr, 'bool', native_f64=True)})"
    return st.load(expr, acc, native_f64=True)  # f64 loads only into the f64 accumulator (_acc_type)


@functools.lru_cache(maxsize=None)
def _params(nk: int, nr: int) -> codegen.ParamBlock:
    """The block of a reduction over nk kept and nr reduced (collapsed) dims. M outputs, each of L
    reduced elements, in G chunks of `chunk`; `divisor` is the mean's count."""
    return codegen.ParamBlock("M", "L", "x_off", "out_off", "idx_off", "G", "chunk", "divisor: f32",
                              f"ksize[{nk}]", f"kstride[{nk}]", f"rsize[{nr}]", f"rstride[{nr}]")


@functools.lru_cache(maxsize=None)
def _pack(nk: int, nr: int):
    """_params(nk, nr) packed positionally, in its declaration order: the keyword pack() would add
    microseconds to every reduction's host time."""
    return _params(nk, nr).pack_words


def _offset_code(var: str, index: str, ndim: int, sizes: str, strides: str) -> list[str]:
    """WGSL adding to `var` the offset of linear `index` over ndim dims, whose sizes and strides are
    the parameters sizes_0.. and strides_0.."""
    lines = [f"  var r_{var} = {index};"]
    for d in reversed(range(ndim)):
        if d > 0:
            lines.append(f"  {var} += (r_{var} % {sizes}_{d}) * {strides}_{d}; r_{var} = r_{var} / {sizes}_{d};")
        else:
            lines.append(f"  {var} += r_{var} * {strides}_{d};")
    return lines


@dataclass(frozen=True)
class _KernelSpec:
    """What the WGSL of one reduction kernel depends on."""
    op: str
    st_in: object
    st_out: object
    acc: str
    variant: str   # "thread", "thread_split" or "group"
    nk: int
    nr: int
    wg: int
    finalize: bool     # write the finished result (else raw accumulators for a second pass)
    partial_in: bool   # the input is a first pass's partials, [M, G] contiguous

    @property
    def is_arg(self) -> bool:
        return self.op in ARG_OPS

    @property
    def better(self) -> str:
        return ">" if self.op == "argmax" else "<"

    def step(self, acc_v: str, idx_v: str, v: str, l: str) -> str:
        """WGSL folding value `v` (at reduced index `l`) into the accumulator."""
        if self.is_arg:
            nan = f" || ({self.is_nan}({v}) && !{self.is_nan}({acc_v}))" if self.acc in ("f32", "f64") else ""
            return f"if (({v} {self.better} {acc_v}){nan}) {{ {acc_v} = {v}; {idx_v} = {l}; }}"
        return f"{acc_v} = {_merge(self.op, self.acc, acc_v, v)};"

    @property
    def is_nan(self) -> str:
        return "is_nan64" if self.acc == "f64" else "is_nan"

    def result(self, a: str) -> str:
        if self.op == "mean" and self.finalize:
            # f64: the count is exact as the f32 divisor up to 2^24 (reduce() sends longer means to the CPU)
            return f"{a} / f64(divisor)" if self.acc == "f64" else f"f32({a}) / divisor"
        return a

    def load(self, expr: str) -> str:
        return _load(self.op, self.st_in, expr, self.acc)

    def reduced_offset(self, var: str, index: str) -> list[str]:
        return _offset_code(var, index, self.nr, "rsize", "rstride")

    def kept_offset(self, var: str, index: str) -> list[str]:
        return _offset_code(var, index, self.nk, "ksize", "kstride")


def _thread_body(k: _KernelSpec) -> list[str]:
    """One thread per output (or, split, per chunk of one), looping over its reduced elements."""
    body = []
    if k.variant == "thread_split":
        # Thread (m, g) reduces rows [g*chunk, (g+1)*chunk) of output m into partial[g][m]:
        # a long reduction into few outputs still fills the GPU.
        body.append("  if (gi >= M * G) { return; }")
        body.append("  let m = gi % M; let g = gi / M;")
        body.append("  let l0 = g * chunk; let l1 = min(L, l0 + chunk);")
    else:
        body.append("  if (gi >= M) { return; }")
        body.append("  let m = gi; let l0 = 0u; let l1 = L;")
    body.append("  var base = x_off;")
    body += k.kept_offset("base", "m")
    body.append(f"  var acc: {k.acc} = {_identity(k.op, k.acc)};")
    if k.is_arg:
        body.append("  var idx = 0u;")
    body.append("  var l = l0;")
    if not k.is_arg:
        body += _unrolled_by_four(k)
    body.append("  for (; l < l1; l = l + 1u) {")
    body.append("    var off = base;")
    body += ["  " + s for s in k.reduced_offset("off", "l")]
    body.append(f"    let v = {k.load('b1[off]')};")
    body.append("    " + k.step("acc", "idx", "v", "l"))
    body.append("  }")
    if k.variant == "thread_split":
        body.append("  b0[out_off + gi] = acc;")   # raw accumulator, combined by a second pass
    else:
        body.append(f"  b0[out_off + gi] = {k.st_out.store(k.result('acc'), native_f64=True)};")
    if k.is_arg:
        body.append(f"  b2[idx_off + gi] = {runtime().stypes[torch.int64].store('idx')};")
    return body


def _unrolled_by_four(k: _KernelSpec) -> list[str]:
    # Four loads issued before the four adds: in a one-at-a-time loop each thread waits out a
    # full memory latency per element (summing 32 split-K slices took 12 us on an H200). The
    # adds stay in element order, so the result is bit-identical to the plain loop.
    body = ["  for (; l + 4u <= l1; l = l + 4u) {"]
    for u in range(4):
        body.append(f"    var off{u} = base;")
        body += ["  " + s for s in k.reduced_offset(f"off{u}", f"(l + {u}u)")]
    for u in range(4):
        body.append(f"    let v{u} = {k.load(f'b1[off{u}]')};")
    for u in range(4):
        body.append("    " + k.step("acc", "idx", f"v{u}", f"(l + {u}u)"))
    body.append("  }")
    return body


def _group_body(k: _KernelSpec) -> list[str]:
    """One workgroup per output (or per chunk of it): a strided loop, then a tree in workgroup memory."""
    body = ["  let w = group;",
            "  if (w >= M * G) { return; }",
            "  let m = w / G; let g = w % G;",
            "  var base = x_off;"]
    if k.partial_in:
        body.append("  base += m * L;")
    else:
        body += k.kept_offset("base", "m")
    body.append("  let l0 = g * chunk; let l1 = min(L, l0 + chunk);")
    body.append(f"  var acc: {k.acc} = {_identity(k.op, k.acc)};")
    if k.is_arg:
        body.append("  var idx = 0u;")
    body.append(f"  for (var l = l0 + lid; l < l1; l = l + {k.wg}u) {{")
    body.append("    var off = base;")
    if k.partial_in:
        body.append("    off += l;")
    else:
        body += ["  " + s for s in k.reduced_offset("off", "l")]
    body.append(f"    let v = {k.load('b1[off]')};")
    body.append("    " + k.step("acc", "idx", "v", "l"))
    body.append("  }")
    return body + _tree(k)


def _tree(k: _KernelSpec) -> list[str]:
    """The workgroup's partial results combined in halving steps; thread 0 writes the result."""
    body = ["  sacc[lid] = acc;"]
    if k.is_arg:
        body.append("  sidx[lid] = idx;")
    body.append("  workgroupBarrier();")
    body.append(f"  for (var s = {k.wg // 2}u; s > 0u; s = s >> 1u) {{")
    body.append("    if (lid < s) {")
    if k.is_arg:
        o_nan = f" || ({k.is_nan}(o) && !{k.is_nan}(a))" if k.acc in ("f32", "f64") else ""
        body.append("      let a = sacc[lid]; let o = sacc[lid + s]; let ai = sidx[lid]; let oi = sidx[lid + s];")
        both_nan = f"({k.is_nan}(o) && {k.is_nan}(a) && oi < ai)"
        body.append(f"      if ((o {k.better} a){o_nan} || (o == a && oi < ai) || {both_nan})"
                    " { sacc[lid] = o; sidx[lid] = oi; }")
    else:
        body.append(f"      sacc[lid] = {_merge(k.op, k.acc, 'sacc[lid]', 'sacc[lid + s]')};")
    body.append("    }")
    body.append("    workgroupBarrier();")
    body.append("  }")
    body.append("  if (lid == 0u) {")
    if k.finalize:
        body.append(f"    b0[out_off + w] = {k.st_out.store(k.result('sacc[0]'), native_f64=True)};")
    else:
        body.append("    b0[out_off + w] = sacc[0];")
    if k.is_arg:
        body.append(f"    b2[idx_off + w] = {runtime().stypes[torch.int64].store('sidx[0]')};")
    body.append("  }")
    return body


def _source(op: str, in_dtype, out_dtype, acc: str, variant: str, nk: int, nr: int, wg: int,
            finalize: bool, partial_in: bool) -> str:
    rt = runtime()
    k = _KernelSpec(op, rt.stypes[in_dtype], rt.stypes[out_dtype], acc, variant, nk, nr, wg, finalize, partial_in)
    if variant in ("thread", "thread_split"):
        body, shared = _thread_body(k), ""
    else:
        body = _group_body(k)
        shared = (f"var<workgroup> sacc: array<{acc}, {wg}>;\n"
                  + (f"var<workgroup> sidx: array<u32, {wg}>;\n" if k.is_arg else ""))
    types = [acc if ((variant == "group" and not finalize) or variant == "thread_split") else k.st_out.wgsl,
             k.st_in.wgsl]
    if k.is_arg:
        types.append(rt.stypes[torch.int64].wgsl)
    helpers = wgsl_math.helpers("shader-int64" in rt.features) + (float64_exprs.HELPERS if acc == "f64" else "")
    return codegen.module(types, _params(nk, nr).wgsl() + "\n".join(body), wg, helpers=helpers, shared=shared)


def normalize_dims(x: torch.Tensor, dims) -> list[int]:
    nd = x.dim()
    if dims is None:
        return list(range(nd))
    if isinstance(dims, int):
        dims = [dims]
    dims = list(dims)
    if not dims:
        return list(range(nd))
    n = max(nd, 1)
    out = []
    for d in dims:
        if not -n <= d < n:
            raise IndexError(f"Dimension out of range (expected to be in range of [{-n}, {n - 1}], but got {d})")
        d %= n
        if d in out:
            raise RuntimeError(f"dim {d} appears multiple times in the list of dims")
        if nd:
            out.append(d)
    return out


def reduce(x: WgpuTensor, dims, keepdim: bool, op: str, out_dtype: torch.dtype, out: WgpuTensor | None = None):
    """Reduce `x` over `dims`; returns the result, or (values, indices) for argmax/argmin. `out`, for
    callers that want the result in place (a weight gradient): contiguous, of out_dtype and the
    result's number of elements, whatever its shape."""
    rdims = normalize_dims(x, dims)
    nd = x.dim()
    kdims = [d for d in range(nd) if d not in rdims]
    out_shape = [1 if d in rdims else x.shape[d] for d in range(nd)] if keepdim else [x.shape[d] for d in kdims]
    M = 1
    for d in kdims:
        M *= x.shape[d]
    L = 1
    for d in rdims:
        L *= x.shape[d]
    is_arg = op in ARG_OPS
    if out is None:
        out = empty(out_shape, out_dtype)
    elif is_arg or out.dtype != out_dtype or not out.is_contiguous() or out.numel() != M:
        raise ValueError(f"reduce: out must be a contiguous {out_dtype} tensor of {M} elements")
    idx = empty(out_shape, torch.int64) if is_arg else None
    if M == 0:
        return (out, idx) if is_arg else out
    if L == 0:
        if op in ("max", "min", "argmax", "argmin"):
            raise IndexError(f"{op}(): Expected reduction dim to have non-zero size")
        from navitrain.wgpu.kernels.copy import fill

        fill(out, {"sum": 0, "mean": float("nan"), "prod": 1, "any": False, "all": True}[op])
        return out

    acc = _acc_type(op, x.dtype, out_dtype)
    if acc == "f64" and out_dtype != torch.float64 and out_dtype.is_floating_point:
        # a handler's f32 intermediate (built for float16 inputs) would drop a double's precision silently
        raise NoKernelForDtype("a float64 reduction into a narrower float")
    if acc == "f64" and op == "mean" and L > 1 << 24:
        raise NoKernelForDtype("a float64 mean over more than 2^24 elements (its count is passed as f32)")
    ksizes, (kstrides,) = collapse([x.shape[d] for d in kdims] or [1], [[x.stride(d) for d in kdims] or [0]])
    rsizes, (rstrides,) = collapse([x.shape[d] for d in rdims], [[x.stride(d) for d in rdims]])
    nk, nr = len(ksizes), len(rsizes)

    inner_reduced = rstrides[-1] == 1
    if L <= 64 or (not inner_reduced and M >= 128):
        variant, wg, G, chunk = "thread", 64, 1, L
        # Few outputs, long reductions (a Linear bias gradient: 1536 sums over 4096 rows; the 128 split-K
        # slices of a 1x1 convolution's 8192-element weight gradient) would run a few dozen workgroups:
        # split the rows so there are ~64k threads, each still adding >= 16 values, then add the slices.
        if not is_arg and L >= 128 and M < 32768:
            G = max(1, min(L // 16, -(-65536 // M)))
            if G > 1:
                chunk = -(-L // G)
                G = -(-L // chunk)
                partial = empty([G * M], _ACC_DTYPES[acc])
                _launch(op, x, partial, None, acc, "thread_split", nk, nr, 64, False, False, M, L, G, chunk, L,
                        ksizes, kstrides, rsizes, rstrides)
                _launch(op, partial, out, None, acc, "thread", 1, 1, 64, True, False, M, G, 1, G, L,
                        [M], [1], [G], [M])
                return out
    else:
        variant, wg = "group", (256 if L >= 1024 else 64)
        G, chunk = 1, L
        if not is_arg and M < 256 and L > 16384:
            G = min(1024, -(-L // (wg * 16)), max(1, 4096 // M))
            chunk = -(-L // G)
            G = -(-L // chunk)

    if variant == "group" and G > 1:
        partial = empty([M * G], _ACC_DTYPES[acc])
        _launch(op, x, partial, None, acc, "group", nk, nr, wg, False, False, M, L, G, chunk, L,
                ksizes, kstrides, rsizes, rstrides)
        _launch(op, partial, out, None, acc, "group", 1, 1, 256 if G >= 1024 else 64, True, True, M, G, 1, G, L,
                [1], [0], [1], [1])
        return out
    _launch(op, x, out, idx, acc, variant, nk, nr, wg, True, False, M, L, G, chunk, L,
            ksizes, kstrides, rsizes, rstrides)
    return (out, idx) if is_arg else out


def _launch(op, x, out, idx, acc, variant, nk, nr, wg, finalize, partial_in, M, L, G, chunk, divisor,
            ksizes, kstrides, rsizes, rstrides):
    rt = runtime()
    params = _pack(nk, nr)(M, L, x.elem_offset, out.elem_offset, idx.elem_offset if idx is not None else 0, G, chunk,
                           float(divisor), *ksizes, *kstrides, *rsizes, *rstrides)
    # Partial sums are read back as their own accumulator type.
    in_dtype = x.dtype
    key = ("reduce", op, in_dtype, out.dtype, acc, variant, nk, nr, wg, finalize, partial_in)
    kernel = rt.kernel(key, f"reduce_{op}_{variant}", 3 if idx is not None else 2,
                       lambda: _source(op, in_dtype, out.dtype, acc, variant, nk, nr, wg, finalize, partial_in))
    heaps = (out._ws.heap, x._ws.heap) + ((idx._ws.heap,) if idx is not None else ())
    groups = codegen.groups_for(M, wg) if variant == "thread" else (
        codegen.groups_for(M * G, wg) if variant == "thread_split" else codegen.grid(M * G))
    rt.dispatch(kernel, heaps, params, groups)
