"""segment_reduce: accumulation by key without atomics (scatter_add/reduce, index_add/reduce, index_put_
and put_ with accumulate=True, embedding backward).

The destination keys are sorted (stable, see sort_int_keys), and the first thread of each run of equal
keys combines the run's sources in their original order and writes the destination once.
Deterministic, and for sums the same order the CPU adds in. A row of more than `RUN_WINDOW` keys is
combined in windows of that many positions, one dispatch each (llvmpipe stops a kernel's loops after 65535
passes in all, see `kernels/loop_budget.py`; one padding token can repeat a million times): a run that
goes on past a window leaves its raw partial in the destination, and the next window's dispatch
continues from it in the same order, so every window count gives the same bits.
"""
from __future__ import annotations

import functools

from navitrain.wgpu.kernels import codegen, loop_budget, pointwise, wgsl_math
from navitrain.wgpu.kernels.index_keys import INVALID_KEY
from navitrain.wgpu.kernels.sort import sort_int_keys
from navitrain.wgpu.runtime import runtime
from navitrain.wgpu.tensor import WgpuTensor

WG = 256
SEGMENT_OPS = ("sum", "prod", "mean", "amax", "amin")
RUN_WINDOW = loop_budget.PASS_BUDGET  # sources of one run combined per dispatch


@functools.lru_cache(maxsize=None)
def _block(m: int, q: int, float_scale: bool) -> codegen.ParamBlock:
    """R rows of K keys each, S slice elements; offsets; the key's stride in out, a source position's
    stride in src; the sum's scale (f32, or i32 for integer outputs) and the skipped key; then the row
    coordinates' sizes [m] with their out and src strides, and the slice's [q] likewise; a dispatch combines
    the sources run_begin..run_end-1 of each run (counted from the run's first)."""
    return codegen.ParamBlock(
        "R", "K", "S", "out_off", "src_off", "keys_off", "perm_off", "key_stride", "pos_stride",
        "scale: f32" if float_scale else "scale: i32", "skip_key: i32", "run_begin", "run_end",
        f"r_size[{m}]", f"r_out[{m}]", f"r_src[{m}]", f"s_size[{q}]", f"s_out[{q}]", f"s_src[{q}]")


@functools.lru_cache(maxsize=None)
def _packer(m: int, q: int, float_scale: bool):
    # Positional, in _block's field order: the keyword pack() would add microseconds to every scatter.
    return _block(m, q, float_scale).pack_words


def _decompose(var: str, n: int, name: str) -> list[str]:
    """WGSL splitting `var` into n coordinates (sizes {name}_size_d), summing their out offset into
    do_{name} and their src offset into so_{name}."""
    lines = [f"  var rem_{name} = {var};", f"  var do_{name} = 0u; var so_{name} = 0u;"]
    for d in reversed(range(n)):
        if d > 0:
            lines.append(f"  let c_{name}{d} = rem_{name} % {name}_size_{d};")
            lines.append(f"  rem_{name} = rem_{name} / {name}_size_{d};")
        else:
            lines.append(f"  let c_{name}0 = rem_{name};")
        lines.append(f"  do_{name} += c_{name}{d} * {name}_out_{d};")
        lines.append(f"  so_{name} += c_{name}{d} * {name}_src_{d};")
    return lines


def _combine(op: str, acc: str) -> tuple[str, str]:
    """(identity, combine expression with {a} and {b}) of op in accumulator type acc; float max/min
    propagate NaN, which WGSL's max/min may drop."""
    lowest = {"f32": "bitcast<f32>(0xff800000u)", "i32": "(-2147483647 - 1)",
              "i64": "(-9223372036854775807li - 1li)"}[acc]
    highest = {"f32": "bitcast<f32>(0x7f800000u)", "i32": "2147483647", "i64": "9223372036854775807li"}[acc]
    zero, one = {"f32": ("0.0", "1.0"), "i32": ("0", "1"), "i64": ("0li", "1li")}[acc]
    ident = {"sum": zero, "mean": zero, "prod": one, "amax": lowest, "amin": highest}[op]
    if acc == "f32":
        nanp = "(is_nan({a}) || is_nan({b}))"
        pick = {"amax": "select({a}, {b}, {b} > {a})", "amin": "select({a}, {b}, {b} < {a})"}
        comb = {
            "sum": "{a} + {b}", "mean": "{a} + {b}", "prod": "{a} * {b}",
            "amax": f"select({pick['amax']}, bitcast<f32>(0x7fc00000u), {nanp})",
            "amin": f"select({pick['amin']}, bitcast<f32>(0x7fc00000u), {nanp})",
        }[op]
    else:
        comb = {"sum": "{a} + {b}", "mean": "{a} + {b}", "prod": "{a} * {b}", "amax": "max({a}, {b})",
                "amin": "min({a}, {b})"}[op]
    return ident, comb


def _source(op, out_st, src_st, m, q, include_self, by_freq, skip_key, float_scale):
    rt = runtime()
    acc = "f32" if out_st.kind == "float" else rt.stypes[out_st.dtype].compute
    if acc == "bool":
        acc = "i32"
    ident, comb = _combine(op, acc)
    load_src = src_st.load("src[src_off + so_r + so_s + k * pos_stride]", acc)
    dst = "out[out_off + do_r + do_s + u32(kv) * key_stride]"
    lines = [
        _block(m, q, float_scale).wgsl().rstrip("\n"),
        "  if (gi >= R * K * S) { return; }",
        "  let s = gi % S; let t = gi / S; let j = t % K; let r = t / K;",
        "  let kb = keys_off + r * K;",
        "  let key = keys[kb + j];",
        "  if (j > 0u && keys[kb + j - 1u] == key) { return; }",
        "  let kv = bitcast<i32>(key ^ 0x80000000u);",
        f"  if (kv == {INVALID_KEY}) {{ return; }}",
    ]
    if skip_key:
        lines.append("  if (kv == skip_key) { return; }")
    lines += _decompose("r", m, "r") + _decompose("s", q, "s")
    # Start from the destination's value and combine in the original order: a sum then adds in
    # exactly the CPU's order (((self + a) + b) + c).
    cur = out_st.load(dst, acc)
    value = load_src
    if op == "sum":
        value = f"{load_src} * scale" if acc == "f32" else f"{load_src} * {acc}(scale)"
    lines += [
        # A later window: only runs reaching into it continue, from the raw partial the last one stored.
        "  let first = j + run_begin;",
        "  if (run_begin > 0u && (first >= K || keys[kb + first] != key)) { return; }",
        f"  var acc: {acc} = {cur if include_self else ident};",
        f"  if (run_begin > 0u) {{ acc = {cur}; }}",
        "  let stop = min(K, j + run_end);",
        "  var jj = first;",
        "  for (; jj < stop; jj = jj + 1u) {",
        "    if (keys[kb + jj] != key) { break; }",
        "    let k = perm[perm_off - keys_off + kb + jj];",
        f"    acc = {comb.format(a='acc', b=value)};",
        "  }",
        "  let cnt = jj - j;",
        "  if (jj == stop && stop < K && keys[kb + stop] == key) {",
        f"    {dst} = {out_st.store('acc')};",
        "    return;",
        "  }",
    ]
    res = "acc"
    if op == "sum" and by_freq:
        res = "acc / f32(cnt)"
    elif op == "mean":
        n = f"{acc}(cnt + {1 if include_self else 0}u)"
        res = f"acc / {n}" if acc == "f32" else f"idiv_floor{'64' if acc == 'i64' else ''}(acc, {n})"
    lines.append(f"  {dst} = {out_st.store(res)};")
    helpers = wgsl_math.helpers("shader-int64" in rt.features)
    return codegen.module([out_st.wgsl, src_st.wgsl, "u32", "u32"], "\n".join(lines), WG, helpers=helpers,
                          names=["out", "src", "keys", "perm"])


def segment_reduce(op: str, out: WgpuTensor, src: WgpuTensor, keys: WgpuTensor, key_stride: int,
                   src_pos_stride: int, r_shape=(), r_out=(), r_src=(), s_shape=(), s_out=(), s_src=(),
                   include_self: bool = True, scale: float = 1.0, by_freq: bool = False, skip_key=None) -> None:
    """Reduce src into out by key. keys: int32 [R, K] (row r holds the keys of its K sources; a key is a
    destination index, INVALID_KEY to skip). Source k of row r, slice element s, is at
    src[r offset + k * src_pos_stride + s offset]; it lands on out[r offset + key * key_stride + s offset].
    r_* and s_* give the shapes and strides (in out and in src) of the row and slice coordinates."""
    if by_freq and include_self:
        raise ValueError("segment_reduce: scale by frequency only applies to a fresh (include_self=False) sum")
    R, K = keys.shape
    S = 1
    for v in s_shape:
        S *= v
    if R * K * S == 0:
        return
    rt = runtime()
    skeys, perm = sort_int_keys(keys)
    r_sizes, (r_o, r_s) = pointwise.collapse(list(r_shape) or [1], [list(r_out) or [0], list(r_src) or [0]])
    s_sizes, (s_o, s_s) = pointwise.collapse(list(s_shape) or [1], [list(s_out) or [0], list(s_src) or [0]])
    m, q = len(r_sizes), len(s_sizes)
    float_scale = out.dtype.is_floating_point
    pack = _packer(m, q, float_scale)
    head = (R, K, S, out.elem_offset, src.elem_offset, skeys.elem_offset, perm.elem_offset, key_stride,
            src_pos_stride, float(scale) if float_scale else int(scale), skip_key if skip_key is not None else 0)
    tail = (*r_sizes, *r_o, *r_s, *s_sizes, *s_o, *s_s)
    out_st, src_st = rt.stypes[out.dtype], rt.stypes[src.dtype]
    key = ("segment", op, out.dtype, src.dtype, m, q, include_self, by_freq, skip_key is not None)
    kernel = rt.kernel(key, f"segment_{op}", 4,
                       lambda: _source(op, out_st, src_st, m, q, include_self, by_freq, skip_key is not None,
                                       float_scale))
    windows = [(0, K)] if K <= RUN_WINDOW else [(b, b + RUN_WINDOW) for b in range(0, K, RUN_WINDOW)]
    for run_begin, run_end in windows:
        rt.dispatch(kernel, (out._ws.heap, src._ws.heap, skeys._ws.heap, perm._ws.heap),
                    pack(*head, run_begin, run_end, *tail), codegen.groups_for(R * K * S, WG))
