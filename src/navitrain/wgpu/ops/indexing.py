"""Indexing: gathers (index_select, gather, take, x[idx]), scatters (scatter, index_copy, index_fill,
index_put_, put_), accumulating scatters (scatter_add, scatter_reduce, index_add, index_reduce,
index_put_/put_ with accumulate=True), masked_select, masked_scatter and nonzero.

Two kernels do all the work:
- `indexed_copy`: one thread per element of an iteration shape; the destination, the source and up to
  six index tensors are each walked with their own strides (so broadcast and non-contiguous operands
  need no copies), and each index adds `index * stride` to the source (gather) or destination
  (scatter) offset. Duplicate destinations in a plain scatter are written in an unspecified order, as
  PyTorch documents.
- `segment_reduce`: accumulation without atomics. The destination keys are sorted (stable, see sort.py),
  and the first thread of each run of equal keys combines the run's sources in their original order and
  writes the destination once. Deterministic, and for sums the same order the CPU adds in.
Negative indices count from the end. An index out of range cannot raise on the GPU without a sync per
op: a gather gives NaN (0 for integer tensors) there, and a scatter skips it.
Data-dependent shapes (nonzero, masked_select, x[mask]) read one count back to the host: the output
size must be known before it can be allocated.
"""
from __future__ import annotations

import torch

from navitrain.wgpu.kernels import codegen, pointwise
from navitrain.wgpu.dispatch import implements
from navitrain.wgpu.kernels.copy import copy_into
from navitrain.wgpu.dims import contiguous, wrap_dim
from navitrain.wgpu.kernels.scan import scan_into
from navitrain.wgpu.kernels.sort import sort_int_keys
from navitrain.wgpu.runtime import runtime
from navitrain.wgpu.tensor import WgpuTensor, empty, from_cpu, to_cpu

aten = torch.ops.aten
WG = 256
MAX_INDICES = 6          # bindings left for index tensors (8 in all, minus destination and source)
INVALID_KEY = 0x7FFFFFFF  # a key that sorts last and marks an index out of range


def _as_device(t):
    return t if isinstance(t, WgpuTensor) else from_cpu(t)


def _strides_over(t: torch.Tensor, shape, dims=None) -> list[int]:
    """Strides of `t` read over an iteration `shape`: t's dim i maps to iteration dim dims[i] (default:
    right-aligned broadcasting); size-1 and unmapped dims get stride 0."""
    nd = len(shape)
    if dims is None:
        dims = list(range(nd - t.dim(), nd))
    out = [0] * nd
    for i, d in enumerate(dims):
        if t.shape[i] != 1:
            out[d] = t.stride(i)
    return out


def _invalid_value(st) -> str:
    return st.store("bitcast<f32>(0x7fc00000u)") if st.kind == "float" else st.store("0")


# -- the indexed copy kernel ---------------------------------------------------------------------------
def _walk(nd: int, n_ops: int, size_w: int, stride_w: int) -> list[str]:
    """WGSL giving o0..o{n_ops-1}, the offsets of linear index `gi` over nd dims (sizes at size_w,
    operand k's strides at stride_w + k * nd)."""
    lines = ["  var rem = gi;"] + [f"  var o{k} = 0u;" for k in range(n_ops)]
    for d in reversed(range(nd)):
        if d > 0:
            lines.append(f"  let i{d} = rem % pu({size_w + d}u); rem = rem / pu({size_w + d}u);")
        else:
            lines.append("  let i0 = rem;")
        for k in range(n_ops):
            lines.append(f"  o{k} += i{d} * pu({stride_w + k * nd + d}u);")
    return lines


def _indexed_copy_source(mode, dst_st, src_st, idx_sts, nd, scalar_kind):
    """Params: 0 numel, 1 dst off, 2 src off, 3 scalar, then per index: off, size, target stride;
    then sizes, then strides of dst, src, index 0, index 1, ..."""
    m = len(idx_sts)
    size_w = 4 + 3 * m
    stride_w = size_w + nd
    has_src = scalar_kind is None
    n_ops = 2 + m
    lines = ["  if (gi >= pu(0u)) { return; }"] + _walk(nd, n_ops, size_w, stride_w)
    lines.append("  var ok = true; var moved = 0u;")
    for k, st in enumerate(idx_sts):
        at = 4 + 3 * k
        lines.append(f"  {{ var v = {st.load(f'ix{k}[pu({at}u) + o{2 + k}]', 'i32')};")
        lines.append(f"    let n = i32(pu({at + 1}u)); if (v < 0) {{ v = v + n; }}")
        lines.append(f"    if (v < 0 || v >= n) {{ ok = false; }} else {{ moved += u32(v) * pu({at + 2}u); }} }}")
    dst = "dst[pu(1u) + o0" + (" + moved]" if mode == "scatter" else "]")
    if has_src:
        src_expr = "src[pu(2u) + o1" + (" + moved]" if mode == "gather" else "]")
        if src_st.dtype == dst_st.dtype:
            value = src_expr
        else:
            value = dst_st.store(src_st.load(src_expr, pointwise.compute_type(dst_st.dtype)))
    else:
        value = dst_st.store("pf(3u)" if scalar_kind == "f" else ("pi(3u) != 0" if dst_st.kind == "bool" else "pi(3u)"))
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
    p = codegen.Params()
    p.u(numel, dst.elem_offset, 0 if scalar else (src.elem_offset if src_offset is None else src_offset))
    if scalar:
        if dst.dtype.is_floating_point:
            scalar_kind = "f"
            p.f(float(src))
        else:
            scalar_kind = "i"
            p.i(int(src))
    else:
        p.u(0)
    for t, _, n, moves in indices:
        p.u(t.elem_offset, n, moves)
    p.u(*sizes)
    for s in strides:
        p.u(*s)
    key = ("indexed_copy", mode, dst.dtype, None if scalar else src.dtype, tuple(t.dtype for t, *_ in indices),
           nd, scalar_kind)
    kernel = rt.kernel(key, f"indexed_{mode}", 1 + (0 if scalar else 1) + len(indices),
                       lambda: _indexed_copy_source(mode, dst_st, src_st, idx_sts, nd, scalar_kind))
    heaps = (dst._ws.heap,) + (() if scalar else (src._ws.heap,)) + tuple(t._ws.heap for t, *_ in indices)
    rt.dispatch(kernel, heaps, p.pack(), codegen.groups_for(numel, WG))


def _without(strides, d):
    s = list(strides)
    s[d] = 0
    return s


def _index_along(index, shape, d):
    """A 1-D (or 0-d) index read along dim d of an iteration shape: strides 0 except at d."""
    s = [0] * len(shape)
    if index.dim():
        s[d] = index.stride(0)
    return s


def _check_index(index, name):
    if index.numel() and index.dtype not in (torch.int64, torch.int32):
        raise RuntimeError(f"{name}(): Expected dtype int32/int64 for index")


# -- gathers ------------------------------------------------------------------------------------------
@implements(aten.index_select.default)
def index_select(x, dim, index):
    _check_index(index, "index_select")
    index = _as_device(index)
    if x.dim() == 0:
        out = empty([], x.dtype)
        indexed_copy("gather", [], out, [], x, [], [(index, [], 1, 0)])
        return out
    d = wrap_dim(dim, x.dim())
    shape = list(x.shape)
    shape[d] = index.numel()
    out = empty(shape, x.dtype)
    indexed_copy("gather", shape, out, list(out.stride()), x, _without(x.stride(), d),
                 [(index, _index_along(index, shape, d), x.shape[d], x.stride(d))])
    return out


@implements(aten.gather.default)
def gather(x, dim, index, *, sparse_grad=False):
    _check_index(index, "gather")
    index = _as_device(index)
    out = empty(index.shape, x.dtype)
    xv, iv, ov = _at_least_1d(x, index, out)
    d = wrap_dim(dim, xv.dim())
    indexed_copy("gather", list(iv.shape), ov, list(ov.stride()), xv, _without(xv.stride(), d),
                 [(iv, list(iv.stride()), xv.shape[d], xv.stride(d))])
    return out


def _at_least_1d(*ts):
    """0-d tensors viewed as 1-d, so dim-wise code needs no special case (the views share storage)."""
    return tuple(aten.reshape.default(t, [1]) if isinstance(t, torch.Tensor) and t.dim() == 0 else t for t in ts)


@implements(aten.take.default)
def take(x, index):
    x = contiguous(x)
    out = empty(index.shape, x.dtype)
    indexed_copy("gather", list(index.shape), out, list(out.stride()), x, [0] * index.dim(),
                 [(_as_device(index), list(index.stride()), x.numel(), 1)])
    return out


# -- plain scatters --------------------------------------------------------------------------------------
def _scatter_into(out, d, index, src):
    index = _as_device(index)
    out_v, index, src = _at_least_1d(out, index, src)
    src_strides = list(src.stride()) if isinstance(src, torch.Tensor) else None
    indexed_copy("scatter", list(index.shape), out_v, _without(out_v.stride(), d), src, src_strides,
                 [(index, list(index.stride()), out_v.shape[d], out_v.stride(d))])
    return out


def _scalar(v):
    """A fill value: device tensors stay tensors (read broadcast by the kernel, no host sync)."""
    if isinstance(v, WgpuTensor):
        return v
    return v.item() if isinstance(v, torch.Tensor) else v


@implements(aten.scatter.src, aten.scatter.value)
def scatter(x, dim, index, src):
    _check_index(index, "scatter")
    out = aten.clone.default(x)
    d = wrap_dim(dim, x.dim())
    return _scatter_into(out, d, index, src if isinstance(src, WgpuTensor) else _scalar(src))


@implements(aten.scatter_.src, aten.scatter_.value)
def scatter_(x, dim, index, src):
    _check_index(index, "scatter_")
    return _scatter_into(x, wrap_dim(dim, x.dim()), index, src if isinstance(src, WgpuTensor) else _scalar(src))


_REDUCE_NAMES = {"add": "sum", "multiply": "prod"}


@implements(aten.scatter.reduce, aten.scatter.value_reduce)
def scatter_reduce_legacy(x, dim, index, src, *, reduce):
    out = aten.clone.default(x)
    return scatter_reduce_(out, dim, index, src, _REDUCE_NAMES[reduce], include_self=True)


@implements(aten.scatter_.reduce, aten.scatter_.value_reduce)
def scatter_reduce_legacy_(x, dim, index, src, *, reduce):
    return scatter_reduce_(x, dim, index, src, _REDUCE_NAMES[reduce], include_self=True)


def _index_into(out, d, index, src):
    """out[..., index[k], ...] = src[..., k, ...] along dim d (src a tensor or a scalar)."""
    index = _as_device(index)
    if out.dim() == 0:
        shape = []
        indexed_copy("scatter", shape, out, [], src, [] if isinstance(src, torch.Tensor) else None, [(index, [], 1, 0)])
        return out
    shape = list(out.shape)
    shape[d] = index.numel()
    src_strides = None
    if isinstance(src, torch.Tensor):
        src_strides = _strides_over(src, shape) if src.dim() == len(shape) else [0] * len(shape)
    indexed_copy("scatter", shape, out, _without(out.stride(), d), src, src_strides,
                 [(index, _index_along(index, shape, d), out.shape[d], out.stride(d))])
    return out


@implements(aten.index_copy.default)
def index_copy(x, dim, index, source):
    return _index_into(aten.clone.default(x), wrap_dim(dim, x.dim()), index, source)


@implements(aten.index_copy_.default)
def index_copy_(x, dim, index, source):
    return _index_into(x, wrap_dim(dim, x.dim()), index, source)


@implements(aten.index_fill.int_Scalar, aten.index_fill.int_Tensor)
def index_fill(x, dim, index, value):
    return _index_into(aten.clone.default(x), wrap_dim(dim, x.dim()), index, _scalar(value))


@implements(aten.index_fill_.int_Scalar, aten.index_fill_.int_Tensor)
def index_fill_(x, dim, index, value):
    return _index_into(x, wrap_dim(dim, x.dim()), index, _scalar(value))


# -- accumulating scatters: sort the keys, reduce each run of equal keys --------------------------------
SEGMENT_OPS = ("sum", "prod", "mean", "amax", "amin")


def _segment_source(op, out_st, src_st, m, q, include_self, by_freq, skip_key):
    """Params: 0 R, 1 K, 2 S (slice elements), 3 out off, 4 src off, 5 keys off, 6 perm off, 7 key
    stride in out, 8 position stride in src, 9 scale (f32), 10 skipped key (i32), then r sizes [m],
    r out strides, r src strides, s sizes [q], s out strides, s src strides."""
    rt = runtime()
    acc = "f32" if out_st.kind == "float" else rt.stypes[out_st.dtype].compute
    if acc == "bool":
        acc = "i32"
    r0 = 11
    s0 = r0 + 3 * m

    def decompose(var, n, size_w, name):
        lines = [f"  var rem_{name} = {var};", f"  var do_{name} = 0u; var so_{name} = 0u;"]
        for d in reversed(range(n)):
            if d > 0:
                lines.append(f"  let c_{name}{d} = rem_{name} % pu({size_w + d}u);")
                lines.append(f"  rem_{name} = rem_{name} / pu({size_w + d}u);")
            else:
                lines.append(f"  let c_{name}0 = rem_{name};")
            lines.append(f"  do_{name} += c_{name}{d} * pu({size_w + n + d}u);")
            lines.append(f"  so_{name} += c_{name}{d} * pu({size_w + 2 * n + d}u);")
        return lines

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
    load_src = src_st.load("src[pu(4u) + so_r + so_s + k * pu(8u)]", acc)
    dst = "out[pu(3u) + do_r + do_s + u32(kv) * pu(7u)]"
    lines = [
        "  let K = pu(1u); let S = pu(2u);",
        "  if (gi >= pu(0u) * K * S) { return; }",
        "  let s = gi % S; let t = gi / S; let j = t % K; let r = t / K;",
        "  let kb = pu(5u) + r * K;",
        "  let key = keys[kb + j];",
        "  if (j > 0u && keys[kb + j - 1u] == key) { return; }",
        "  let kv = bitcast<i32>(key ^ 0x80000000u);",
        f"  if (kv == {INVALID_KEY}) {{ return; }}",
    ]
    if skip_key:
        lines.append("  if (kv == pi(10u)) { return; }")
    lines += decompose("r", m, r0, "r") + decompose("s", q, s0, "s")
    # Start from the destination's value and combine in the original order: a sum then adds in
    # exactly the CPU's order (((self + a) + b) + c).
    cur = out_st.load(dst, acc)
    value = load_src
    if op == "sum":
        value = f"{load_src} * pf(9u)" if acc == "f32" else f"{load_src} * {acc}(pi(9u))"
    lines += [
        f"  var acc: {acc} = {cur if include_self else ident}; var cnt = 0u;",
        "  for (var jj = j; jj < K; jj = jj + 1u) {",
        "    if (keys[kb + jj] != key) { break; }",
        "    let k = perm[pu(6u) - pu(5u) + kb + jj];",
        f"    acc = {comb.format(a='acc', b=value)};",
        "    cnt = cnt + 1u;",
        "  }",
    ]
    res = "acc"
    if op == "sum" and by_freq:
        res = "acc / f32(cnt)"
    elif op == "mean":
        n = f"{acc}(cnt + {1 if include_self else 0}u)"
        res = f"acc / {n}" if acc == "f32" else f"idiv_floor{'64' if acc == 'i64' else ''}(acc, {n})"
    lines.append(f"  {dst} = {out_st.store(res)};")
    from navitrain.wgpu.kernels import wgsl_math

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
    p = codegen.Params()
    p.u(R, K, S, out.elem_offset, src.elem_offset, skeys.elem_offset, perm.elem_offset, key_stride, src_pos_stride)
    if out.dtype.is_floating_point:
        p.f(scale)
    else:
        p.i(int(scale))
    p.i(skip_key if skip_key is not None else 0)
    p.u(*r_sizes, *r_o, *r_s, *s_sizes, *s_o, *s_s)
    out_st, src_st = rt.stypes[out.dtype], rt.stypes[src.dtype]
    key = ("segment", op, out.dtype, src.dtype, m, q, include_self, by_freq, skip_key is not None)
    kernel = rt.kernel(key, f"segment_{op}", 4,
                       lambda: _segment_source(op, out_st, src_st, m, q, include_self, by_freq, skip_key is not None))
    rt.dispatch(kernel, (out._ws.heap, src._ws.heap, skeys._ws.heap, perm._ws.heap), p.pack(),
                codegen.groups_for(R * K * S, WG))


def wrapped_keys(index: WgpuTensor, n: int) -> WgpuTensor:
    """int32 keys of `index` (same shape, contiguous): negatives wrapped, out-of-range -> INVALID_KEY."""
    ic = pointwise.compute_type(index.dtype)
    conv = "i64" if ic == "i64" else "i32"
    expr = (f"select(select(i32(a), i32(a + {conv}(s0)), a < {conv}(0)), {INVALID_KEY}, "
            f"a < -{conv}(s0) || a >= {conv}(s0))")
    return pointwise.run("index_keys", expr, [index], torch.int32, ic, [n], "i", out=empty(index.shape, torch.int32))


def _scatter_segments(op, out, d, index, src, include_self, scale=1.0):
    """out[..., index[c], ...] op= src[c] over the elements c of `index` along dim d."""
    index = _as_device(index)
    if index.numel() == 0:
        return out
    out_v, index, src = _at_least_1d(out, index, src)
    nd = index.dim()
    others = [i for i in range(nd) if i != d]
    keys = wrapped_keys(aten.permute.default(index, others + [d]), out_v.shape[d])
    keys = aten.reshape.default(keys, [-1, index.shape[d]])
    segment_reduce(op, out_v, src, keys, out_v.stride(d), src.stride(d), [index.shape[i] for i in others],
                   [out_v.stride(i) for i in others], [src.stride(i) for i in others],
                   include_self=include_self, scale=scale)
    return out


@implements(aten.scatter_add.default)
def scatter_add(x, dim, index, src):
    return _scatter_segments("sum", aten.clone.default(x), wrap_dim(dim, x.dim()), index, src, True)


@implements(aten.scatter_add_.default)
def scatter_add_(x, dim, index, src):
    return _scatter_segments("sum", x, wrap_dim(dim, x.dim()), index, src, True)


def _reduce_name(reduce):
    if reduce not in SEGMENT_OPS:
        raise RuntimeError(f"reduce argument must be either sum, prod, mean, amax or amin, got {reduce}")
    return reduce


@implements(aten.scatter_reduce.two)
def scatter_reduce(x, dim, index, src, reduce, *, include_self=True):
    return scatter_reduce_(aten.clone.default(x), dim, index, src, reduce, include_self=include_self)


@implements(aten.scatter_reduce_.two)
def scatter_reduce_(x, dim, index, src, reduce, *, include_self=True):
    return _scatter_segments(_reduce_name(reduce), x, wrap_dim(dim, x.dim()), index, src, include_self)


def _index_segments(op, out, d, index, source, include_self, scale=1.0):
    """out[..., index[k], ...] op= source[..., k, ...] along dim d."""
    index = _as_device(index)
    if index.numel() == 0:
        return out
    out, source = _at_least_1d(out, source)
    src = source if source.dim() == out.dim() else aten.reshape.default(source, [1] * out.dim())
    keys = aten.reshape.default(wrapped_keys(aten.reshape.default(index, [-1]), out.shape[d]), [1, -1])
    others = [i for i in range(out.dim()) if i != d]
    segment_reduce(op, out, src, keys, out.stride(d), src.stride(d),
                   s_shape=[src.shape[i] for i in others], s_out=[out.stride(i) for i in others],
                   s_src=[src.stride(i) for i in others], include_self=include_self, scale=scale)
    return out


@implements(aten.index_add.default)
def index_add(x, dim, index, source, *, alpha=1):
    out = aten.clone.default(x)
    _index_segments("sum", out, wrap_dim(dim, x.dim()), index, source, True, alpha)
    return out


@implements(aten.index_add_.default)
def index_add_(x, dim, index, source, *, alpha=1):
    _index_segments("sum", x, wrap_dim(dim, x.dim()), index, source, True, alpha)
    return x


@implements(aten.index_reduce.default)
def index_reduce(x, dim, index, source, reduce, *, include_self=True):
    out = aten.clone.default(x)
    _index_segments(_reduce_name(reduce), out, wrap_dim(dim, x.dim()), index, source, include_self)
    return out


@implements(aten.index_reduce_.default)
def index_reduce_(x, dim, index, source, reduce, *, include_self=True):
    _index_segments(_reduce_name(reduce), x, wrap_dim(dim, x.dim()), index, source, include_self)
    return x


# -- put / take ---------------------------------------------------------------------------------------
def _put_into(out, index, source, accumulate):
    index, source = _as_device(index), _as_device(source)
    flat_src = aten.reshape.default(source, [-1])
    flat_idx = aten.reshape.default(index, [-1])
    if accumulate:
        keys = aten.reshape.default(wrapped_keys(flat_idx, out.numel()), [1, -1])
        segment_reduce("sum", out, flat_src, keys, 1, flat_src.stride(0) if flat_src.dim() else 1)
    else:
        n = flat_idx.numel()
        indexed_copy("scatter", [n], out, [0], flat_src, [flat_src.stride(0)],
                     [(flat_idx, [flat_idx.stride(0)], out.numel(), 1)])
    return out


@implements(aten.put_.default)
def put_(x, index, source, accumulate=False):
    if x.is_contiguous():
        return _put_into(x, index, source, accumulate)
    tmp = aten.clone.default(x, memory_format=torch.contiguous_format)
    _put_into(tmp, index, source, accumulate)
    return copy_into(x, tmp)


@implements(aten.put.default)
def put(x, index, source, accumulate=False):
    return _put_into(aten.clone.default(x, memory_format=torch.contiguous_format), index, source, accumulate)


# -- advanced indexing: x[i0, i1, ...] ---------------------------------------------------------------
def _expand_masks(x, indices):
    """Boolean/uint8 masks become the long indices of their true elements (one host read-back each)."""
    out = []
    for idx in indices:
        if idx is not None and idx.dtype in (torch.bool, torch.uint8):
            idx = _as_device(idx)
            k = len(out)
            for j in range(idx.dim()):
                if idx.shape[j] != x.shape[k + j]:
                    raise IndexError(f"The shape of the mask {list(idx.shape)} at index {j} does not match the shape "
                                     f"of the indexed tensor {list(x.shape)} at index {k + j}")
            coords = nonzero(idx)
            out += [aten.select.int(coords, 1, j) for j in range(idx.dim())]
        else:
            out.append(_as_device(idx) if idx is not None else None)
    if len(out) > x.dim():
        raise IndexError(f"too many indices for tensor of dimension {x.dim()} (got {len(out)})")
    return out + [None] * (x.dim() - len(out))


def _index_plan(x, indices):
    """(result shape, B (broadcast index shape), position of B in the result, [(dim, index)], other dims)."""
    indices = _expand_masks(x, indices)
    used = [(d, t) for d, t in enumerate(indices) if t is not None]
    B = list(torch.broadcast_shapes(*(t.shape for _, t in used))) if used else []
    dims = [d for d, _ in used]
    adjacent = dims == list(range(dims[0], dims[-1] + 1)) if dims else True
    others = [d for d in range(x.dim()) if d not in dims]
    if adjacent and dims:
        before = [d for d in others if d < dims[0]]
        after = [d for d in others if d > dims[-1]]
        shape = [x.shape[d] for d in before] + B + [x.shape[d] for d in after]
        at = len(before)
    else:
        shape = B + [x.shape[d] for d in others]
        at = 0
        before, after = [], others
    return shape, B, at, used, before, after


def _index_operands(x, shape, B, at, used, before, after):
    """Strides of x over the result shape (0 on the index dims), and each index read over it."""
    nb = len(B)
    x_strides = [0] * len(shape)
    for i, d in enumerate(before):
        x_strides[i] = x.stride(d)
    for i, d in enumerate(after):
        x_strides[at + nb + i] = x.stride(d)
    idx_ops = []
    for d, t in used:
        b_dims = list(range(at + nb - t.dim(), at + nb))
        idx_ops.append((t, _strides_over(t, shape, b_dims), x.shape[d], x.stride(d)))
    return x_strides, idx_ops


@implements(aten.index.Tensor, aten._unsafe_index.Tensor)
def index(x, indices):
    shape, B, at, used, before, after = _index_plan(x, indices)
    out = empty(shape, x.dtype)
    if not used:
        return copy_into(out, x)
    x_strides, idx_ops = _index_operands(x, shape, B, at, used, before, after)
    indexed_copy("gather", shape, out, list(out.stride()), x, x_strides, idx_ops)
    return out


def _index_put_into(x, indices, values, accumulate):
    values = _as_device(values)
    shape, B, at, used, before, after = _index_plan(x, indices)
    if not used:
        if accumulate:
            return aten.add_.Tensor(x, values)
        return copy_into(x, values)
    if values.dtype != x.dtype:
        values = aten._to_copy.default(values, dtype=x.dtype)
    while values.dim() > len(shape) and values.shape[0] == 1:
        values = aten.select.int(values, 0, 0)  # leading size-1 dims broadcast away
    try:
        torch.broadcast_shapes(values.shape, shape)
    except RuntimeError:
        raise RuntimeError(f"shape mismatch: value tensor of shape {list(values.shape)} cannot be broadcast to "
                           f"indexing result of shape {shape}") from None
    x_strides, idx_ops = _index_operands(x, shape, B, at, used, before, after)
    if not accumulate:
        indexed_copy("scatter", shape, x, x_strides, values, _strides_over(values, shape), idx_ops)
        return x
    # Keys: the offset all index tensors add together, one per element of B.
    nb = len(B)
    numel_b = 1
    for s in B:
        numel_b *= s
    if numel_b == 0:
        return x
    keys = empty(B, torch.int32)
    _offset_keys(keys, B, idx_ops, at, nb)
    keys = aten.reshape.default(keys, [1, numel_b])
    # Values as [B..., rest...] so one source position is one element of B.
    vals = aten.expand.default(values, shape)
    rest = [i for i in range(len(shape)) if not at <= i < at + nb]
    vals = contiguous(aten.permute.default(vals, list(range(at, at + nb)) + rest))
    rest_shape = [shape[i] for i in rest]
    rest_numel = 1
    for s in rest_shape:
        rest_numel *= s
    x_rest = [x_strides[i] for i in rest]
    segment_reduce("sum", x, vals, keys, 1, rest_numel, s_shape=rest_shape, s_out=x_rest,
                   s_src=list(vals.stride())[nb:])
    return x


def _offset_keys(keys, B, idx_ops, at, nb):
    """keys[b] = sum over index tensors of wrapped index * stride (INVALID_KEY when any is out of range)."""
    rt = runtime()
    numel = keys.numel()
    shifted = [(t, s[at:at + nb] if nb else [], n, moves) for t, s, n, moves in idx_ops]
    sizes, strides = pointwise.collapse(list(B) or [1], [list(s) or [0] for _, s, _, _ in shifted])
    nd = len(sizes)
    idx_sts = [rt.stypes[t.dtype] for t, *_ in shifted]
    m = len(shifted)

    def source():
        lines = ["  if (gi >= pu(0u)) { return; }"] + _walk(nd, m, 2 + 3 * m, 2 + 3 * m + nd)
        lines.append("  var ok = true; var moved = 0u;")
        for k, st in enumerate(idx_sts):
            at_w = 2 + 3 * k
            lines.append(f"  {{ var v = {st.load(f'ix{k}[pu({at_w}u) + o{k}]', 'i32')};")
            lines.append(f"    let n = i32(pu({at_w + 1}u)); if (v < 0) {{ v = v + n; }}")
            lines.append(f"    if (v < 0 || v >= n) {{ ok = false; }} else {{ moved += u32(v) * pu({at_w + 2}u); }} }}")
        lines.append(f"  keys[pu(1u) + gi] = select({INVALID_KEY}, i32(moved), ok);")
        return codegen.module(["i32"] + [st.wgsl for st in idx_sts], "\n".join(lines), WG,
                              names=["keys"] + [f"ix{k}" for k in range(m)])

    p = codegen.Params()
    p.u(numel, keys.elem_offset)
    for t, _, n, moves in shifted:
        p.u(t.elem_offset, n, moves)
    p.u(*sizes)
    for s in strides:
        p.u(*s)
    kernel = rt.kernel(("offset_keys", tuple(t.dtype for t, *_ in shifted), nd), "offset_keys", 1 + m, source)
    rt.dispatch(kernel, (keys._ws.heap,) + tuple(t._ws.heap for t, *_ in shifted), p.pack(),
                codegen.groups_for(numel, WG))


@implements(aten.index_put_.default, aten._index_put_impl_.default)
def index_put_(x, indices, values, accumulate=False, unsafe=False):
    return _index_put_into(x, indices, values, accumulate)


# _unsafe_index_put is functional like index_put (only its bounds checks are skipped): writing into x
# would change the input of _unsafe_masked_index_put_accumulate and of upsampling gradients.
@implements(aten.index_put.default, aten._unsafe_index_put.default)
def index_put(x, indices, values, accumulate=False):
    return _index_put_into(aten.clone.default(x), indices, values, accumulate)


# -- data-dependent sizes: nonzero, masked_select; and masked_scatter -------------------------------------
def _flag_positions(flags_source: WgpuTensor):
    """Inclusive running count (int32, flat) of the true elements of a bool-like tensor, in row-major order."""
    flags = pointwise.run("flag", "select(0, 1, a)", [flags_source], torch.int32, "i32", load_types=["bool"])
    flat = aten.reshape.default(flags, [1, -1])
    return scan_into("sum", flat, empty(flat.shape, torch.int32), 1)


def _count(pos: WgpuTensor) -> int:
    # The one host read-back these ops need: the size of their output depends on the data.
    n = pos.numel()
    return int(to_cpu(aten.reshape.default(pos, [-1])[n - 1:n])[0]) if n else 0


@implements(aten.nonzero.default)
def nonzero(x):
    nd = x.dim()
    n = x.numel()
    if n == 0:
        return empty([0, nd], torch.int64)
    pos = _flag_positions(x)
    count = _count(pos)
    out = empty([count, nd], torch.int64)
    if count == 0 or nd == 0:
        return out
    rt = runtime()
    x_st, i64_st = rt.stypes[x.dtype], rt.stypes[torch.int64]
    sizes = list(x.shape)
    strides = list(x.stride())

    def source():
        lines = ["  if (gi >= pu(0u)) { return; }", "  var rem = gi; var xo = 0u;"]
        for d in reversed(range(nd)):
            lines.append(f"  let c{d} = rem % pu({4 + d}u); rem = rem / pu({4 + d}u);")
            lines.append(f"  xo += c{d} * pu({4 + nd + d}u);")
        lines.append(f"  if (!{x_st.load('xs[pu(1u) + xo]', 'bool')}) {{ return; }}")
        lines.append("  let row = u32(pos[pu(2u) + gi]) - 1u;")
        for d in range(nd):
            lines.append(f"  outs[pu(3u) + row * {nd}u + {d}u] = {i64_st.store(f'c{d}')};")
        return codegen.module([x_st.wgsl, "i32", i64_st.wgsl], "\n".join(lines), WG, names=["xs", "pos", "outs"])

    p = codegen.Params()
    p.u(n, x.elem_offset, pos.elem_offset, out.elem_offset, *sizes, *strides)
    kernel = rt.kernel(("nonzero", x.dtype, nd), "nonzero", 3, source)
    rt.dispatch(kernel, (x._ws.heap, pos._ws.heap, out._ws.heap), p.pack(), codegen.groups_for(n, WG))
    return out


@implements(aten.argwhere.default)
def argwhere(x):
    return nonzero(x)


def _compact_or_expand(mode, x, mask, pos, out, shape):
    """mode "select": out[pos-1] = x[i] where mask[i]; mode "scatter": out[i] = mask ? src[pos-1] : x[i]
    (x and mask read broadcast over `shape`, out flat / shaped like `shape`)."""
    rt = runtime()
    nd = len(shape)
    numel = 1
    for s in shape:
        numel *= s
    x_strides = _strides_over(x, shape)
    m_strides = _strides_over(mask, shape)
    o_strides = list(out.stride()) if mode == "scatter" else [0] * nd
    sizes, strides = pointwise.collapse(list(shape) or [1], [x_strides or [0], m_strides or [0], o_strides or [0]])
    nd2 = len(sizes)
    x_st, m_st, o_st = rt.stypes[x.dtype], rt.stypes[mask.dtype], rt.stypes[out.dtype]

    def source(src_st):
        lines = ["  if (gi >= pu(0u)) { return; }"] + _walk(nd2, 3, 6, 6 + nd2)
        lines.append(f"  let on = {m_st.load('mask[pu(2u) + o1]', 'bool')};")
        lines.append("  let at = u32(pos[pu(3u) + gi]) - 1u;")
        if mode == "select":
            lines.append("  if (on && at < pu(5u)) { outs[pu(4u) + at] = xs[pu(1u) + o0]; }")
        else:
            lines.append("  if (on) { outs[pu(4u) + o2] = src[pu(5u) + at]; }")
            lines.append("  else { outs[pu(4u) + o2] = xs[pu(1u) + o0]; }")
        names = ["xs", "mask", "pos", "outs"] + (["src"] if mode == "scatter" else [])
        types = [x_st.wgsl, m_st.wgsl, "i32", o_st.wgsl] + ([src_st.wgsl] if mode == "scatter" else [])
        return codegen.module(types, "\n".join(lines), WG, names=names)

    return sizes, strides, nd2, numel, source


@implements(aten.masked_select.default)
def masked_select(x, mask):
    mask = _as_device(mask)
    shape = list(torch.broadcast_shapes(x.shape, mask.shape))
    mask_b = aten.expand.default(mask, shape)
    pos = _flag_positions(mask_b)
    count = _count(pos)
    out = empty([count], x.dtype)
    if count == 0:
        return out
    _compact(x, mask, pos, out, shape, count)
    return out


def _compact(x, mask, pos, out, shape, limit):
    """out[k] = the k-th element of x (broadcast over shape) where mask is true, for k < limit."""
    rt = runtime()
    sizes, strides, nd2, numel, source = _compact_or_expand("select", x, mask, pos, out, shape)
    p = codegen.Params()
    p.u(numel, x.elem_offset, mask.elem_offset, pos.elem_offset, out.elem_offset, limit, *sizes)
    for s in strides:
        p.u(*s)
    kernel = rt.kernel(("masked_select", x.dtype, mask.dtype, nd2), "masked_select", 4, lambda: source(None))
    rt.dispatch(kernel, (x._ws.heap, mask._ws.heap, pos._ws.heap, out._ws.heap), p.pack(),
                codegen.groups_for(numel, WG))


@implements(aten.masked_scatter_backward.default)
def masked_scatter_backward(grad, mask, sizes):
    # The gradient of source: grad where mask is true, in order, then zeros; sized like source, so no sync.
    from navitrain.wgpu.kernels.copy import fill

    mask = _as_device(mask)
    shape = list(grad.shape)
    n = 1
    for v in sizes:
        n *= v
    out = fill(empty([n], grad.dtype), 0)
    if n and grad.numel():
        pos = _flag_positions(aten.expand.default(mask, shape))
        _compact(grad, mask, pos, out, shape, n)
    return aten.reshape.default(out, list(sizes))


def _masked_scatter_into(out, x, mask, source):
    shape = list(out.shape)
    pos = _flag_positions(aten.expand.default(mask, shape))
    src = contiguous(aten.reshape.default(source, [-1]) if source.dim() != 1 else source)
    rt = runtime()
    sizes, strides, nd2, numel, make = _compact_or_expand("scatter", x, mask, pos, out, shape)
    if numel == 0:
        return out
    p = codegen.Params()
    p.u(numel, x.elem_offset, mask.elem_offset, pos.elem_offset, out.elem_offset, src.elem_offset, *sizes)
    for s in strides:
        p.u(*s)
    src_st = rt.stypes[src.dtype]
    kernel = rt.kernel(("masked_scatter", x.dtype, mask.dtype, src.dtype, out.dtype, nd2), "masked_scatter", 5,
                       lambda: make(src_st))
    rt.dispatch(kernel, (x._ws.heap, mask._ws.heap, pos._ws.heap, out._ws.heap, src._ws.heap), p.pack(),
                codegen.groups_for(numel, WG))
    return out


@implements(aten.masked_scatter.default)
def masked_scatter(x, mask, source):
    mask = _as_device(mask)
    shape = list(torch.broadcast_shapes(x.shape, mask.shape))
    return _masked_scatter_into(empty(shape, x.dtype), x, mask, source)


@implements(aten.masked_scatter_.default)
def masked_scatter_(x, mask, source):
    # Writing x while reading it is safe: each element is read and written by the same thread only.
    return _masked_scatter_into(x, x, _as_device(mask), source)
