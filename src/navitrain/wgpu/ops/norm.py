"""Normalization layers: batch norm (training with running-stat updates, eval), layer norm, group norm,
forward and backward.

Batch norm sees its input as [A, C, B] with the channel in the middle: [N, C, spatial] for a contiguous
input, [N * spatial, C, 1] for a channels-last one (channels are the fastest dim there), so both layouts
are read in place. Per-channel sums are one pass over the data: workgroups take a tile of channels and a
chunk of rows, reduce in workgroup memory, and write f32 partial sums that a tiny per-channel kernel
combines (statistics, running stats, the affine coefficients), before an elementwise pass writes the
result. Variance is accumulated around a shift (the channel's first element), which keeps the one-pass
sum of squares from cancelling when the mean is large next to the spread.

Layer norm and group norm are row kernels: each row (a sample's normalized slice, or a (sample, group)
pair) is reduced by a slice of a workgroup sized to the row, then written.
"""
from __future__ import annotations

import math

import torch

from navitrain.wgpu.kernels import codegen, wgsl_math
from navitrain.wgpu.dispatch import implements
from navitrain.wgpu.kernels.copy import copy_into
from navitrain.wgpu.runtime import runtime
from navitrain.wgpu.tensor import empty

aten = torch.ops.aten
WG = 256
NAN = float("nan")


# -- small helpers ----------------------------------------------------------------------------------
def _st(t):
    return runtime().stypes[t.dtype]


def _ld(t, binding: int, index: str) -> str:
    return _st(t).load(f"b{binding}[{index}]", "f32")


def _sv(t, binding: int, index: str, value: str) -> str:
    return f"b{binding}[{index}] = {_st(t).store(value)};"


def _module(tensors, body: str, shared: str = "") -> str:
    helpers = wgsl_math.helpers("shader-int64" in runtime().features)
    return codegen.module([_st(t).wgsl for t in tensors], body, WG, helpers=helpers, shared=shared)


def _launch(key, name, tensors, params: codegen.Params, source, groups):
    rt = runtime()
    kernel = rt.kernel(key, name, len(tensors), source)
    rt.dispatch(kernel, tuple(t._ws.heap for t in tensors), params.pack(), groups)


def _dt(t):
    return None if t is None else t.dtype


def _next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def _order_strides(shape, order) -> list[int]:
    """Strides of a dense tensor whose dims, slowest first, are `order`."""
    strides = [0] * len(shape)
    acc = 1
    for d in reversed(order):
        strides[d] = acc
        acc *= max(int(shape[d]), 1)
    return strides


def _has_order(t, order) -> bool:
    want = _order_strides(t.shape, order)
    return all(s == 1 or st == w for s, st, w in zip(t.shape, t.stride(), want))


def _cl_order(nd: int) -> list[int]:
    return [0] + list(range(2, nd)) + [1]


def _layout(t) -> str | None:
    """'ncs' (contiguous), 'cl' (channels fastest, the rest contiguous) or None (anything else)."""
    if _has_order(t, list(range(t.dim()))):
        return "ncs"
    if t.dim() >= 3 and _has_order(t, _cl_order(t.dim())):
        return "cl"
    return None


def _in_layout(t, mode: str):
    """`t` itself when it is laid out as `mode`, else a copy that is."""
    if _layout(t) == mode:
        return t
    order = list(range(t.dim())) if mode == "ncs" else _cl_order(t.dim())
    return copy_into(empty(t.shape, t.dtype, _order_strides(t.shape, order)), t)


def _contig(t):
    return t if t.is_contiguous() else aten.clone.default(t, memory_format=torch.contiguous_format)


def _flat(t, n: int):
    """A parameter of the normalized shape as a 1-D vector of n elements (None stays None)."""
    return None if t is None else aten.reshape.default(_contig(t), [n])


def _vec(t, params: codegen.Params):
    """Parameter words for a 1-D per-channel vector: element offset and stride."""
    params.u(t.elem_offset, t.stride(0) if t.dim() else 0)


def _param_dtype(x, *params):
    """PyTorch's rule for statistics outputs: float32 when a reduced-precision input comes with float32
    parameters (autocast's mixed case), else the input's dtype."""
    for p in params:
        if p is not None and x.dtype in (torch.float16, torch.bfloat16) and p.dtype == torch.float32:
            return torch.float32
    return x.dtype


# -- per-channel sums over [A, C, B] ----------------------------------------------------------------
def _channel_sums(name, A, C, B, inputs, terms, chan_vecs=(), row_vecs=(), shift=False, extra=0):
    """Partial sums of `terms` (WGSL over X0.. = inputs at the element, V0.. = chan_vecs[c],
    R0.. = row_vecs[a], SH = the channel's first element of input 0 when `shift`) for every channel c,
    over all (a, b). Returns (partials, G, Bp): f32 partials
    laid out [G, C, Bp, K] (then `extra` spare elements); a channel's total is the sum over G and Bp.

    When B is small the data is read as rows of W = C * B "virtual channels" (the B of a channel summed
    later): a workgroup takes a tile of consecutive columns and strides down the rows, so its threads read
    consecutive addresses. When B is large a workgroup takes one channel and walks its runs of B."""
    K = len(terms)
    W = C * B
    if B <= 16:
        variant, Bp = "cols", B
        TC = W if W <= WG else 64
        R = WG // TC
        tiles = -(-W // TC)
        G = max(1, min(-(-A * TC // 2048), -(-512 // tiles), 65535 // tiles))
        chunk = -(-A // G)
        G = -(-A // chunk)
        groups = codegen.grid(tiles * G)
    else:
        variant, Bp = "rows", 1
        M = A * B
        G = max(1, min(-(-M // 4096), -(-512 // C), 65535))
        chunk = -(-M // G)
        G = -(-M // chunk)
        TC = R = tiles = 1
        groups = codegen.grid(C * G)
    partials = empty([G * C * Bp * K + extra], torch.float32)
    tensors = [partials, *inputs, *chan_vecs, *row_vecs]
    p = codegen.Params()
    p.u(A, C, B, W, TC, R, _next_pow2(R), tiles, G, chunk, partials.elem_offset)  # words 0..10
    for t in inputs:
        p.u(t.elem_offset)
    for t in (*chan_vecs, *row_vecs):
        _vec(t, p)
    n_in = len(inputs)
    w_in = 11
    w_vec = w_in + n_in

    def source():
        lines = []
        a = lines.append
        a("  let A = pu(0u); let C = pu(1u); let B = pu(2u); let W = pu(3u);")
        a("  let G = pu(8u); let chunk = pu(9u);")
        if variant == "cols":
            a("  let TC = pu(4u); let R = pu(5u); let tiles = pu(7u);")
            a("  if (group >= tiles * G) { return; }")
            a("  let tile = group % tiles; let g = group / tiles;")
            a("  let j = lid % TC; let r = lid / TC;")
            a("  let col = tile * TC + j; let c = min(col, W - 1u) / B;")
            a("  let live = r < R && col < W;")
            a("  let a0 = g * chunk; let a1 = min(A, a0 + chunk);")
        else:
            a("  if (group >= C * G) { return; }")
            a("  let c = group % C; let g = group / C;")
            a("  let l0 = g * chunk; let l1 = min(A * B, l0 + chunk);")
        for k, t in enumerate(chan_vecs):
            a(f"  let V{k} = {_ld(t, 1 + n_in + k, f'pu({w_vec + 2 * k}u) + c * pu({w_vec + 2 * k + 1}u)')};")
        if shift:
            # A non-finite shift would make every shifted value NaN (inf - inf): shift by 0 then.
            a(f"  let SH = finite_or_0({_ld(inputs[0], 1, f'pu({w_in}u) + c * B')});")
        for k in range(K):
            a(f"  var acc{k} = 0.0;")
        if variant == "cols":
            a("  if (live) {")
            a("    for (var ai = a0 + r; ai < a1; ai = ai + R) {")
            a("      let e = ai * W + col;")
        else:
            a("  {")
            a(f"    for (var l = l0 + lid; l < l1; l = l + {WG}u) {{")
            a("      let ai = l / B; let e = (ai * C + c) * B + (l - ai * B);")
        for k, t in enumerate(inputs):
            a(f"      let X{k} = {_ld(t, 1 + k, f'pu({w_in + k}u) + e')};")
        base = 1 + n_in + len(chan_vecs)
        for k, t in enumerate(row_vecs):
            w = w_vec + 2 * (len(chan_vecs) + k)
            a(f"      let R{k} = {_ld(t, base + k, f'pu({w}u) + ai * pu({w + 1}u)')};")
        for k, term in enumerate(terms):
            a(f"      acc{k} = acc{k} + ({term});")
        a("    }")
        a("  }")
        for k in range(K):
            a(f"  red[{k * WG}u + lid] = acc{k};")
        a("  workgroupBarrier();")
        if variant == "cols":
            a("  for (var s = pu(6u) >> 1u; s > 0u; s = s >> 1u) {")
            a("    if (r < s && r + s < R) {")
            for k in range(K):
                a(f"      red[{k * WG}u + lid] = red[{k * WG}u + lid] + red[{k * WG}u + lid + s * TC];")
            a("    }")
            a("    workgroupBarrier();")
            a("  }")
            a("  if (r == 0u && col < W) {")
            a(f"    let o = pu(10u) + (g * W + col) * {K}u;")
        else:
            a(f"  for (var s = {WG // 2}u; s > 0u; s = s >> 1u) {{")
            a("    if (lid < s) {")
            for k in range(K):
                a(f"      red[{k * WG}u + lid] = red[{k * WG}u + lid] + red[{k * WG}u + lid + s];")
            a("    }")
            a("    workgroupBarrier();")
            a("  }")
            a("  if (lid == 0u) {")
            a(f"    let o = pu(10u) + (g * C + c) * {K}u;")
        for k in range(K):
            a(f"    b0[o + {k}u] = red[{k * WG}u + lid];")
        a("  }")
        shared = f"var<workgroup> red: array<f32, {K * WG}>;\n"
        return _module(tensors, "\n".join(lines), shared)

    key = ("norm_sums", name, variant, tuple(terms), tuple(t.dtype for t in tensors), n_in, len(chan_vecs), shift)
    _launch(key, f"norm_sums_{name}", tensors, p, source, groups)
    return partials, G, Bp


def _sum_partials(K: int, terms: list[tuple[int, str]], binding: int = 0) -> str:
    """WGSL declaring, for each (k, var) in `terms`, var = the total of term k of channel c, from the
    partials of _channel_sums bound at `binding` (params: G at word 0, Bp at 1, C at 2, partials' offset
    at 3)."""
    decl = "".join(f"  var {v} = 0.0;\n" for _, v in terms)
    adds = "".join(f"      {v} = {v} + b{binding}[at + {k}u];\n" for k, v in terms)
    return (decl
            + "  for (var g = 0u; g < pu(0u); g = g + 1u) {\n"
            + "    for (var q = 0u; q < pu(1u); q = q + 1u) {\n"
            + f"      let at = pu(3u) + ((g * pu(2u) + c) * pu(1u) + q) * {K}u;\n"
            + adds
            + "    }\n  }\n")


# -- batch norm ---------------------------------------------------------------------------------
def _bn_geometry(x):
    if x.dim() < 2:
        raise RuntimeError(f"batch_norm: expected an input with at least 2 dims (N, C, ...), got {tuple(x.shape)}")
    mode = _layout(x) or "ncs"
    x = _in_layout(x, mode)
    N, C = x.shape[0], x.shape[1]
    S = math.prod(x.shape[2:])
    A, B = (N, S) if mode == "ncs" else (N * S, 1)
    return x, mode, A, C, B


def _bn_apply(x, coefs, coef_offset, A, C, B, out_dtype, grad=None, train=True):
    """The elementwise pass over [A, C, B], with four coefficients k0..k3 per channel:
    y = (x - k0) * k1 + k2 (forward), or with `grad`, gi = (dy - k2 - (x - k0) * k1) * k3 (backward;
    in evaluation mode gi = dy * k3, which does not read x: an infinite x times a zero k1 would be NaN).
    Subtracting the mean first keeps y accurate when the mean is large next to the spread."""
    y = empty(x.shape, out_dtype, x.stride())
    n = x.numel()
    tensors = [y, x, coefs] + ([grad] if grad is not None else [])
    p = codegen.Params()
    p.u(n, C, B, y.elem_offset, x.elem_offset, coef_offset, grad.elem_offset if grad is not None else 0)

    def source():
        lines = ["  if (gi >= pu(0u)) { return; }",
                 "  let c = (gi / pu(2u)) % pu(1u);",
                 f"  let xv = {_ld(x, 1, 'pu(4u) + gi')};"]
        if grad is None:
            lines.append("  let k = pu(5u) + 4u * c;")
            lines.append("  let v = (xv - b2[k]) * b2[k + 1u] + b2[k + 2u];")
        else:
            lines.append(f"  let dy = {_ld(grad, 3, 'pu(6u) + gi')};")
            lines.append("  let k = pu(5u) + 4u * c;")
            if train:
                lines.append("  let v = (dy - b2[k + 2u] - (xv - b2[k]) * b2[k + 1u]) * b2[k + 3u];")
            else:
                lines.append("  let v = dy * b2[k + 3u];")
        lines.append("  " + _sv(y, 0, "pu(3u) + gi", "v"))
        return _module(tensors, "\n".join(lines))

    key = ("bn_apply", train or grad is None, tuple(t.dtype for t in tensors))
    _launch(key, "batch_norm_apply", tensors, p, source, codegen.groups_for(n, WG))
    return y


def _batch_norm(x, weight, bias, running_mean, running_var, training, momentum, eps):
    x, mode, A, C, B = _bn_geometry(x)
    has_running = running_mean is not None and running_var is not None
    if not training and not has_running:
        raise RuntimeError("batch_norm: running_mean and running_var must be defined in evaluation mode")
    stat_dtype = _param_dtype(x, weight, bias, running_mean, running_var)
    n = A * B
    if training:
        save_mean, save_invstd = empty([C], stat_dtype), empty([C], stat_dtype)
    else:
        save_mean, save_invstd = empty([0], stat_dtype), empty([0], stat_dtype)
    if x.numel() == 0:
        if n == 0 and C > 0:
            raise RuntimeError(f"input tensor must have at least one element, but got input_sizes = {list(x.shape)}")
        return empty(x.shape, x.dtype, x.stride()), save_mean, save_invstd
    # The coefficients of the elementwise pass (4 per channel) go after the partial sums, in the same buffer.
    if training:
        coefs, G, Bp = _channel_sums("bn_fwd", A, C, B, [x], ["X0 - SH", "(X0 - SH) * (X0 - SH)"], shift=True,
                                     extra=4 * C)
        coef_offset = coefs.elem_offset + G * C * Bp * 2
    else:
        coefs = empty([4 * C], torch.float32)
        coef_offset = coefs.elem_offset
    tensors = [coefs]
    if training:
        tensors += [x, save_mean, save_invstd]
    opt = [t for t in (weight, bias) if t is not None]
    run = [running_mean, running_var] if has_running else []
    tensors += opt + run
    p = codegen.Params()
    if training:
        p.u(G, Bp, C, coefs.elem_offset)
    else:
        p.u(0, 0, C, 0)
    p.u(C, coef_offset, x.elem_offset, B)  # 4..7
    p.u(save_mean.elem_offset, save_invstd.elem_offset)  # 8, 9
    p.f(float(n), float(eps), float(momentum), n / (n - 1) if n > 1 else NAN)  # 10..13
    vec_w = 14
    for t in opt + run:
        _vec(t, p)

    def source():
        lines = ["  let c = gi; if (c >= pu(4u)) { return; }"]
        idx = {}
        nb = 4 if training else 1
        for k, t in enumerate(opt + run):
            idx[id(t)] = (nb + k, vec_w + 2 * k)

        def at(t):
            b, w = idx[id(t)]
            return b, f"pu({w}u) + c * pu({w + 1}u)"
        if training:
            lines.append(_sum_partials(2, [(0, "t0"), (1, "t1")]))
            lines.append(f"  let sh = finite_or_0({_ld(x, 1, 'pu(6u) + c * pu(7u)')});")  # as SH above
            lines.append("  let n = pf(10u); let d = t0 / n;")
            lines.append("  let mean = sh + d; let var_b = fmax_nan(t1 / n - d * d, 0.0);")  # keeps NaN (inf - inf)
            lines.append("  let invstd = 1.0 / sqrt(var_b + pf(11u));")
            lines.append("  " + _sv(save_mean, 2, "pu(8u) + c", "mean"))
            lines.append("  " + _sv(save_invstd, 3, "pu(9u) + c", "invstd"))
            if has_running:
                bm, im = at(running_mean)
                bv, iv = at(running_var)
                lines.append(f"  let rm = {_ld(running_mean, bm, im)}; let rv = {_ld(running_var, bv, iv)};")
                lines.append("  let m = pf(12u);")
                lines.append("  " + _sv(running_mean, bm, im, "(1.0 - m) * rm + m * mean"))
                lines.append("  " + _sv(running_var, bv, iv, "(1.0 - m) * rv + m * (var_b * pf(13u))"))
        else:
            bm, im = at(running_mean)
            bv, iv = at(running_var)
            lines.append(f"  let mean = {_ld(running_mean, bm, im)};")
            lines.append(f"  let invstd = 1.0 / sqrt({_ld(running_var, bv, iv)} + pf(11u));")
        w = _ld(weight, *at(weight)) if weight is not None else "1.0"
        b = _ld(bias, *at(bias)) if bias is not None else "0.0"
        lines.append("  let k = pu(5u) + 4u * c;")
        lines.append(f"  b0[k] = mean; b0[k + 1u] = invstd * {w}; b0[k + 2u] = {b}; b0[k + 3u] = 0.0;")
        return _module(tensors, "\n".join(lines))

    key = ("bn_fin", training, has_running, tuple(t.dtype for t in tensors), weight is not None, bias is not None)
    _launch(key, "batch_norm_stats", tensors, p, source, codegen.groups_for(C, WG))
    y = _bn_apply(x, coefs, coef_offset, A, C, B, x.dtype)
    return y, save_mean, save_invstd


def _batch_norm_backward(grad_out, x, weight, running_mean, running_var, save_mean, save_invstd, train, eps,
                         output_mask):
    x, mode, A, C, B = _bn_geometry(x)
    grad_out = _in_layout(grad_out, mode)
    n = A * B
    if train:
        mean_src, inv_src = save_mean, save_invstd
    else:
        if running_mean is None or running_var is None:
            raise RuntimeError("batch_norm_backward: running_mean and running_var are needed in evaluation mode")
        mean_src, inv_src = running_mean, running_var
    param_dtype = weight.dtype if weight is not None else x.dtype
    gw = empty([C], param_dtype) if output_mask[1] else None
    gb = empty([C], param_dtype) if output_mask[2] else None
    if x.numel() == 0:
        from navitrain.wgpu.kernels.copy import fill

        for t in (gw, gb):
            if t is not None:
                fill(t, 0)
        gi = empty(x.shape, x.dtype, x.stride()) if output_mask[0] else None
        return gi, gw, gb
    need_sums = train or gw is not None or gb is not None
    coefs = empty([4 * C], torch.float32)
    tensors = [coefs]
    if need_sums:
        partials, G, Bp = _channel_sums("bn_bwd", A, C, B, [grad_out, x], ["X0", "X0 * (X1 - V0)"],
                                        chan_vecs=[mean_src])
        tensors.append(partials)
    extra = [t for t in (weight, gw, gb) if t is not None]
    tensors += [mean_src, inv_src] + extra
    p = codegen.Params()
    if need_sums:
        p.u(G, Bp, C, partials.elem_offset)
    else:
        p.u(0, 0, C, 0)
    p.u(C, coefs.elem_offset)  # 4, 5
    p.f(float(n), float(eps))  # 6, 7
    vec_w = 8
    for t in [mean_src, inv_src] + extra:
        _vec(t, p)

    def source():
        nb = 2 if need_sums else 1
        where = {}
        for k, t in enumerate([mean_src, inv_src] + extra):
            where[id(t)] = (nb + k, f"pu({vec_w + 2 * k}u) + c * pu({vec_w + 2 * k + 1}u)")
        lines = ["  let c = gi; if (c >= pu(4u)) { return; }"]
        if need_sums:
            lines.append(_sum_partials(2, [(0, "t0"), (1, "t1")], binding=1))
        else:
            lines.append("  let t0 = 0.0; let t1 = 0.0;")
        lines.append(f"  let mean = {_ld(mean_src, *where[id(mean_src)])};")
        if train:
            lines.append(f"  let invstd = {_ld(inv_src, *where[id(inv_src)])};")
            lines.append("  let n = pf(6u);")
            lines.append("  let proj = t1 * invstd * invstd / n; let gmean = t0 / n;")
        else:
            lines.append(f"  let invstd = 1.0 / sqrt({_ld(inv_src, *where[id(inv_src)])} + pf(7u));")
            lines.append("  let proj = 0.0; let gmean = 0.0;")
        w = _ld(weight, *where[id(weight)]) if weight is not None else "1.0"
        lines.append("  let k = pu(5u) + 4u * c;")
        lines.append(f"  b0[k] = mean; b0[k + 1u] = proj; b0[k + 2u] = gmean; b0[k + 3u] = invstd * {w};")
        if gw is not None:
            lines.append("  " + _sv(gw, where[id(gw)][0], where[id(gw)][1], "t1 * invstd"))
        if gb is not None:
            lines.append("  " + _sv(gb, where[id(gb)][0], where[id(gb)][1], "t0"))
        return _module(tensors, "\n".join(lines))

    key = ("bn_bwd_fin", train, need_sums, tuple(t.dtype for t in tensors), weight is not None,
           gw is not None, gb is not None)
    _launch(key, "batch_norm_backward_stats", tensors, p, source, codegen.groups_for(C, WG))
    gi = _bn_apply(x, coefs, coefs.elem_offset, A, C, B, x.dtype, grad=grad_out, train=train) if output_mask[0] else None
    return gi, gw, gb


@implements(aten.native_batch_norm.default)
def native_batch_norm(x, weight, bias, running_mean, running_var, training, momentum, eps):
    return _batch_norm(x, weight, bias, running_mean, running_var, training, momentum, eps)


@implements(aten._native_batch_norm_legit.default)
def native_batch_norm_legit(x, weight, bias, running_mean, running_var, training, momentum, eps):
    return _batch_norm(x, weight, bias, running_mean, running_var, training, momentum, eps)


@implements(aten._native_batch_norm_legit.no_stats)
def native_batch_norm_legit_no_stats(x, weight, bias, training, momentum, eps):
    return _batch_norm(x, weight, bias, None, None, True, momentum, eps)


@implements(aten._native_batch_norm_legit_no_training.default)
def native_batch_norm_legit_no_training(x, weight, bias, running_mean, running_var, momentum, eps):
    return _batch_norm(x, weight, bias, running_mean, running_var, False, momentum, eps)


@implements(aten._native_batch_norm_legit_functional.default)
def native_batch_norm_legit_functional(x, weight, bias, running_mean, running_var, training, momentum, eps):
    # The functional form (torch.compile, export) returns updated copies instead of updating in place.
    new_mean = aten.clone.default(running_mean)
    new_var = aten.clone.default(running_var)
    return (*_batch_norm(x, weight, bias, new_mean, new_var, training, momentum, eps), new_mean, new_var)


def _reserve():
    return empty([0], torch.uint8)


@implements(aten._batch_norm_with_update.default)
def batch_norm_with_update(x, weight, bias, running_mean, running_var, momentum, eps):
    return (*_batch_norm(x, weight, bias, running_mean, running_var, True, momentum, eps), _reserve())


@implements(aten._batch_norm_no_update.default)
def batch_norm_no_update(x, weight, bias, running_mean, running_var, momentum, eps):
    training = running_mean is None or running_var is None
    return (*_batch_norm(x, weight, bias, running_mean, running_var, training, momentum, eps), _reserve())


@implements(aten.native_batch_norm_backward.default)
def native_batch_norm_backward(grad_out, x, weight, running_mean, running_var, save_mean, save_invstd, train, eps,
                               output_mask):
    return _batch_norm_backward(grad_out, x, weight, running_mean, running_var, save_mean, save_invstd, train,
                                eps, output_mask)


@implements(aten.batch_norm_backward.default)
def batch_norm_backward(grad_out, x, weight, running_mean, running_var, save_mean, save_var, update, eps,
                        output_mask, reserve):
    return _batch_norm_backward(grad_out, x, weight, running_mean, running_var, save_mean, save_var, update, eps,
                                output_mask)


# -- row kernels (layer norm, group norm) ---------------------------------------------------------
def _threads_per_row(L: int) -> int:
    """A power of two near L / 4 (a few elements per thread), from a short list to keep variants few."""
    want = _next_pow2(max(1, -(-L // 4)))
    return next(t for t in (256, 64, 16, 4, 1) if t <= want)


def _row_sums(tpr: int, terms: list[str], loads: str, names: list[str]) -> str:
    """WGSL: every live row sums `terms` over j in [0, L) (its TPR lanes split the row, then a tree in
    workgroup memory), giving `names` to the row totals. All threads reach the barriers."""
    acc = [f"acc_{n}" for n in names]
    out = [f"  var {a} = 0.0;" for a in acc]
    out.append(f"  if (live) {{ for (var j = lane; j < L; j = j + {tpr}u) {{")
    out.append("    " + loads)
    out += [f"    {a} = {a} + ({t});" for a, t in zip(acc, terms)]
    out.append("  } }")
    out += [f"  red[{k * WG}u + lid] = {a};" for k, a in enumerate(acc)]
    out.append("  workgroupBarrier();")
    out.append(f"  for (var s = {tpr // 2}u; s > 0u; s = s >> 1u) {{")
    out.append("    if (lane < s) {")
    out += [f"      red[{k * WG}u + lid] = red[{k * WG}u + lid] + red[{k * WG}u + lid + s];" for k in range(len(acc))]
    out.append("    }")
    out.append("    workgroupBarrier();")
    out.append("  }")
    out += [f"  let {n} = red[{k * WG}u + slot * {tpr}u];" for k, n in enumerate(names)]
    out.append("  workgroupBarrier();")
    return "\n".join(out)


def _row_frame(tpr: int) -> str:
    return (f"  let lane = lid % {tpr}u; let slot = lid / {tpr}u;\n"
            f"  let row = group * {WG // tpr}u + slot; let live = row < pu(0u); let L = pu(1u);")


def _row_groups(M: int, tpr: int):
    return codegen.grid(-(-M // (WG // tpr)))


def _row_normalize(x, M, L, weight, bias, eps, y, mean, rstd, gn_shape=None):
    """y = (x - mean_row) * rstd_row * w[k] + b[k] over M contiguous rows of length L, writing each
    row's mean and rstd. k is the position in the row (layer norm) or the channel (group norm, given
    gn_shape = (groups, channels per group, HxW))."""
    tpr = _threads_per_row(L)
    opt = [t for t in (weight, bias) if t is not None]
    tensors = [y, mean, rstd, x] + opt
    p = codegen.Params()
    p.u(M, L, y.elem_offset, mean.elem_offset, rstd.elem_offset, x.elem_offset)
    p.f(float(eps))  # 6
    G, D, HW = gn_shape or (1, 1, 1)
    p.u(G, D, HW)  # 7, 8, 9
    for t in opt:
        _vec(t, p)  # 10.., 12..

    def source():
        k = "j" if gn_shape is None else "(row % pu(7u)) * pu(8u) + j / pu(9u)"
        nxt = iter(range(len(opt)))
        w = b = None
        if weight is not None:
            i = next(nxt)
            w = _ld(weight, 4 + i, f"pu({10 + 2 * i}u) + ({k}) * pu({11 + 2 * i}u)")
        if bias is not None:
            i = next(nxt)
            b = _ld(bias, 4 + i, f"pu({10 + 2 * i}u) + ({k}) * pu({11 + 2 * i}u)")
        xv = _ld(x, 3, "base + j")
        lines = [_row_frame(tpr), "  let base = pu(5u) + row * L;"]
        lines.append(_row_sums(tpr, ["xv"], f"let xv = {xv};", ["total"]))
        lines.append("  let mean = total / f32(L);")
        lines.append(_row_sums(tpr, ["(xv - mean) * (xv - mean)"], f"let xv = {xv};", ["sq"]))
        # A row holding inf has sq = NaN: rstd must stay NaN (as on the CPU), which WGSL's max may drop.
        lines.append("  let rstd = 1.0 / sqrt(fmax_nan(sq / f32(L), 0.0) + pf(6u));")
        lines.append("  if (!live) { return; }")
        lines.append("  if (lane == 0u) { " + _sv(mean, 1, "pu(3u) + row", "mean") + " "
                     + _sv(rstd, 2, "pu(4u) + row", "rstd") + " }")
        lines.append(f"  for (var j = lane; j < L; j = j + {tpr}u) {{")
        val = "(" + xv + " - mean) * rstd"
        if w is not None:
            val = f"{val} * {w}"
        if b is not None:
            val = f"{val} + {b}"
        lines.append("    " + _sv(y, 0, "pu(2u) + row * L + j", val))
        lines.append("  }")
        return _module(tensors, "\n".join(lines), f"var<workgroup> red: array<f32, {WG}>;\n")

    key = ("row_norm", tpr, gn_shape is not None, weight is not None, bias is not None,
           tuple(t.dtype for t in tensors))
    _launch(key, "row_normalize", tensors, p, source, _row_groups(M, tpr))


def _fill_nan_or_empty(*ts):
    from navitrain.wgpu.kernels.copy import fill

    for t in ts:
        if t is not None and t.numel():
            fill(t, NAN)


@implements(aten.native_layer_norm.default)
def native_layer_norm(x, normalized_shape, weight, bias, eps):
    nd = len(normalized_shape)
    if tuple(x.shape[x.dim() - nd:]) != tuple(normalized_shape):
        raise RuntimeError(f"layer_norm: input of shape {tuple(x.shape)} does not end with normalized_shape "
                           f"{list(normalized_shape)}")
    axis = x.dim() - nd
    x = _contig(x)
    M, L = math.prod(x.shape[:axis]), math.prod(normalized_shape)
    weight = _flat(weight, L)
    bias = _flat(bias, L)
    stat_shape = list(x.shape[:axis]) + [1] * nd
    stat_dtype = _param_dtype(x, weight, bias)
    y = empty(x.shape, x.dtype)
    mean, rstd = empty(stat_shape, stat_dtype), empty(stat_shape, stat_dtype)
    if M == 0:
        return y, mean, rstd
    if L == 0:
        _fill_nan_or_empty(mean, rstd)
        return y, mean, rstd
    _row_normalize(x, M, L, weight, bias, eps, y, mean, rstd)
    return y, mean, rstd


def _finish_sums(partials, G, Bp, C, outputs):
    """outputs[k][c] = the total of term k of channel c (a thread per channel)."""
    K = len(outputs)
    tensors = [partials, *outputs]
    p = codegen.Params()
    p.u(G, Bp, C, partials.elem_offset)
    for t in outputs:
        _vec(t, p)

    def source():
        lines = ["  let c = gi; if (c >= pu(2u)) { return; }"]
        lines.append(_sum_partials(K, [(k, f"t{k}") for k in range(K)]))
        for k, t in enumerate(outputs):
            lines.append("  " + _sv(t, 1 + k, f"pu({4 + 2 * k}u) + c * pu({5 + 2 * k}u)", f"t{k}"))
        return _module(tensors, "\n".join(lines))

    key = ("norm_finish", K, tuple(t.dtype for t in tensors))
    _launch(key, "norm_finish_sums", tensors, p, source, codegen.groups_for(C, WG))


@implements(aten.native_layer_norm_backward.default)
def native_layer_norm_backward(grad_out, x, normalized_shape, mean, rstd, weight, bias, output_mask):
    nd = len(normalized_shape)
    axis = x.dim() - nd
    x, grad_out = _contig(x), _contig(grad_out)
    mean, rstd = _contig(mean), _contig(rstd)
    M, L = math.prod(x.shape[:axis]), math.prod(normalized_shape)
    weight = _flat(weight, L)
    gi = empty(x.shape, x.dtype) if output_mask[0] else None
    gw = empty(list(normalized_shape), weight.dtype) if output_mask[1] and weight is not None else None
    gb_dtype = bias.dtype if bias is not None else (weight.dtype if weight is not None else x.dtype)
    gb = empty(list(normalized_shape), gb_dtype) if output_mask[2] and bias is not None else None
    if M == 0 or L == 0:
        from navitrain.wgpu.kernels.copy import fill

        for t in (gw, gb):
            if t is not None:
                fill(t, 0)
        return gi, gw, gb
    if gi is not None:
        tpr = _threads_per_row(L)
        tensors = [gi, grad_out, x, mean, rstd] + ([weight] if weight is not None else [])
        p = codegen.Params()
        p.u(M, L, gi.elem_offset, grad_out.elem_offset, x.elem_offset, mean.elem_offset, rstd.elem_offset)
        if weight is not None:
            _vec(weight, p)  # 7, 8

        def source():
            w = _ld(weight, 5, "pu(7u) + j * pu(8u)") if weight is not None else "1.0"
            loads = (f"let gv = {_ld(grad_out, 1, 'pu(3u) + row * L + j')} * {w}; "
                     f"let xh = ({_ld(x, 2, 'pu(4u) + row * L + j')} - mu) * rs;")
            lines = [_row_frame(tpr),
                     "  var mu = 0.0; var rs = 0.0;",
                     f"  if (live) {{ mu = {_ld(mean, 3, 'pu(5u) + row')}; rs = {_ld(rstd, 4, 'pu(6u) + row')}; }}",
                     _row_sums(tpr, ["gv", "gv * xh"], loads, ["sg", "sgx"]),
                     "  if (!live) { return; }",
                     "  let inv_l = 1.0 / f32(L);",
                     f"  for (var j = lane; j < L; j = j + {tpr}u) {{",
                     "    " + loads,
                     "    " + _sv(gi, 0, "pu(2u) + row * L + j", "rs * (gv - sg * inv_l - xh * sgx * inv_l)"),
                     "  }"]
            return _module(tensors, "\n".join(lines), f"var<workgroup> red: array<f32, {2 * WG}>;\n")

        key = ("ln_bwd", tpr, weight is not None, tuple(t.dtype for t in tensors))
        _launch(key, "layer_norm_backward", tensors, p, source, _row_groups(M, tpr))
    if gw is not None or gb is not None:
        # Column sums over the M rows: [M, L] is [A, C, 1] with per-row mean/rstd.
        flat_mean = aten.reshape.default(mean, [M])
        flat_rstd = aten.reshape.default(rstd, [M])
        wanted = [(t, term) for t, term in ((gw, "X0 * (X1 - R0) * R1"), (gb, "X0")) if t is not None]
        partials, G, Bp = _channel_sums("ln_wb", M, L, 1, [grad_out, x], [term for _, term in wanted],
                                        row_vecs=[flat_mean, flat_rstd])
        _finish_sums(partials, G, Bp, L, [aten.reshape.default(t, [L]) for t, _ in wanted])
    return gi, gw, gb


# -- group norm ---------------------------------------------------------------------------------------
@implements(aten.native_group_norm.default)
def native_group_norm(x, weight, bias, N, C, HxW, group, eps):
    x = _contig(x)
    y = empty(x.shape, x.dtype)
    mean, rstd = empty([N, group], x.dtype), empty([N, group], x.dtype)
    M, L = N * group, (C // group) * HxW
    if M == 0:
        return y, mean, rstd
    if L == 0:
        _fill_nan_or_empty(mean, rstd)
        return y, mean, rstd
    _row_normalize(x, M, L, weight, bias, eps, y, mean, rstd, gn_shape=(group, C // group, HxW))
    return y, mean, rstd


@implements(aten.native_group_norm_backward.default)
def native_group_norm_backward(grad_out, x, mean, rstd, weight, N, C, HxW, group, output_mask):
    x, grad_out = _contig(x), _contig(grad_out)
    mean, rstd = _contig(mean), _contig(rstd)
    D = C // group
    pdt = weight.dtype if weight is not None else x.dtype
    gi = empty(x.shape, x.dtype) if output_mask[0] else None
    gw = empty([C], pdt) if output_mask[1] else None
    gb = empty([C], pdt) if output_mask[2] else None
    if N * C * HxW == 0:
        from navitrain.wgpu.kernels.copy import fill

        for t in (gw, gb):
            if t is not None:
                fill(t, 0)
        return gi, gw, gb
    # ds[n, c] = sum(dy * x), db[n, c] = sum(dy) over the HxW positions; then two floats per (n, group).
    scratch = empty([2 * N * C + 2 * N * group], torch.float32)
    tpr = _threads_per_row(HxW)
    tensors = [scratch, grad_out, x]
    p = codegen.Params()
    p.u(N * C, HxW, scratch.elem_offset, grad_out.elem_offset, x.elem_offset)

    def sums_source():
        loads = (f"let dy = {_ld(grad_out, 1, 'pu(3u) + row * L + j')}; "
                 f"let xv = {_ld(x, 2, 'pu(4u) + row * L + j')};")
        lines = [_row_frame(tpr), _row_sums(tpr, ["dy * xv", "dy"], loads, ["ds", "db"]),
                 "  if (live && lane == 0u) { b0[pu(2u) + 2u * row] = ds; b0[pu(2u) + 2u * row + 1u] = db; }"]
        return _module(tensors, "\n".join(lines), f"var<workgroup> red: array<f32, {2 * WG}>;\n")

    _launch(("gn_bwd_sums", tpr, tuple(t.dtype for t in tensors)), "group_norm_backward_sums", tensors, p,
            sums_source, _row_groups(N * C, tpr))

    w_list = [weight] if weight is not None else []
    if gi is not None:
        # c2, c3 per (n, g): dx = rstd * w[c] * dy + c2 * x + c3 (PyTorch's CPU formulation).
        t2 = [scratch, mean, rstd] + w_list
        p2 = codegen.Params()
        p2.u(N * group, group, D, scratch.elem_offset, 2 * N * C, mean.elem_offset, rstd.elem_offset)
        p2.f(1.0 / (D * HxW))  # 7
        if weight is not None:
            _vec(weight, p2)  # 8, 9

        def coef_source():
            w = _ld(weight, 3, "pu(8u) + c * pu(9u)") if weight is not None else "1.0"
            lines = ["  let i = gi; if (i >= pu(0u)) { return; }",
                     "  let n = i / pu(1u); let g = i % pu(1u); let D = pu(2u);",
                     "  var dsg = 0.0; var dbg = 0.0;",
                     "  for (var d = 0u; d < D; d = d + 1u) {",
                     "    let c = g * D + d; let at = pu(3u) + 2u * (n * pu(1u) * D + c);",
                     f"    let wc = {w};",
                     "    dsg = dsg + b0[at] * wc; dbg = dbg + b0[at + 1u] * wc;",
                     "  }",
                     f"  let mu = {_ld(mean, 1, 'pu(5u) + i')}; let rs = {_ld(rstd, 2, 'pu(6u) + i')};",
                     "  let s = pf(7u);",
                     "  let c2 = (dbg * mu - dsg) * rs * rs * rs * s;",
                     "  let c3 = -c2 * mu - dbg * rs * s;",
                     "  b0[pu(3u) + pu(4u) + 2u * i] = c2; b0[pu(3u) + pu(4u) + 2u * i + 1u] = c3;"]
            return _module(t2, "\n".join(lines))

        _launch(("gn_bwd_coef", tuple(t.dtype for t in t2)), "group_norm_backward_coefs", t2, p2, coef_source,
                codegen.groups_for(N * group, WG))

        t3 = [gi, grad_out, x, scratch, rstd] + w_list
        total = N * C * HxW
        p3 = codegen.Params()
        p3.u(total, C, HxW, D, group, gi.elem_offset, grad_out.elem_offset, x.elem_offset,
             scratch.elem_offset + 2 * N * C, rstd.elem_offset)
        if weight is not None:
            _vec(weight, p3)  # 10, 11

        def apply_source():
            w = _ld(weight, 5, "pu(10u) + c * pu(11u)") if weight is not None else "1.0"
            lines = ["  if (gi >= pu(0u)) { return; }",
                     "  let nc = gi / pu(2u); let c = nc % pu(1u); let n = nc / pu(1u);",
                     "  let ng = n * pu(4u) + c / pu(3u);",
                     f"  let rs = {_ld(rstd, 4, 'pu(9u) + ng')};",
                     f"  let dy = {_ld(grad_out, 1, 'pu(6u) + gi')}; let xv = {_ld(x, 2, 'pu(7u) + gi')};",
                     f"  let v = rs * {w} * dy + b3[pu(8u) + 2u * ng] * xv + b3[pu(8u) + 2u * ng + 1u];",
                     "  " + _sv(gi, 0, "pu(5u) + gi", "v")]
            return _module(t3, "\n".join(lines))

        _launch(("gn_bwd_apply", tuple(t.dtype for t in t3)), "group_norm_backward_input", t3, p3, apply_source,
                codegen.groups_for(total, WG))

    if gw is not None or gb is not None:
        outs = [t for t in (gw, gb) if t is not None]
        t4 = [scratch, mean, rstd] + outs
        p4 = codegen.Params()
        p4.u(C, N, D, group, scratch.elem_offset, mean.elem_offset, rstd.elem_offset)
        for t in outs:
            _vec(t, p4)  # 7.., 9..

        def wb_source():
            lines = ["  let c = gi; if (c >= pu(0u)) { return; }",
                     "  let g = c / pu(2u);",
                     "  var sw = 0.0; var sb = 0.0;",
                     "  for (var n = 0u; n < pu(1u); n = n + 1u) {",
                     "    let at = pu(4u) + 2u * (n * pu(0u) + c); let ng = n * pu(3u) + g;",
                     f"    let mu = {_ld(mean, 1, 'pu(5u) + ng')}; let rs = {_ld(rstd, 2, 'pu(6u) + ng')};",
                     "    sw = sw + (b0[at] - b0[at + 1u] * mu) * rs; sb = sb + b0[at + 1u];",
                     "  }"]
            for i, (t, v) in enumerate(zip(outs, [s for s, t in (("sw", gw), ("sb", gb)) if t is not None])):
                lines.append("  " + _sv(t, 3 + i, f"pu({7 + 2 * i}u) + c * pu({8 + 2 * i}u)", v))
            return _module(t4, "\n".join(lines))

        _launch(("gn_bwd_wb", gw is not None, gb is not None, tuple(t.dtype for t in t4)),
                "group_norm_backward_params", t4, p4, wb_source, codegen.groups_for(C, WG))
    return gi, gw, gb
