"""Row norms: layer norm and group norm, forward and backward. Each row (a sample's normalized slice,
or a (sample, group) pair) is M rows of L contiguous elements, reduced by a slice of a workgroup sized
to the row (`threads_per_row` lanes, then a tree in workgroup memory), then written. These are their
own kernels, not rows.py's: a row here is contiguous and short rows share a workgroup.

Group norm's backward (PyTorch's CPU formulation) is four small kernels: per-(sample, channel) sums of
dy * x and dy, two coefficients per (sample, group), the input gradient, the weight/bias gradients."""
from __future__ import annotations

import torch

from navitrain.wgpu.kernels import codegen, loop_budget
from navitrain.wgpu.kernels import row_norm_strided as strided
from navitrain.wgpu.kernels.channel_sums import channel_sums, finish_sums
from navitrain.wgpu.kernels.norm_common import (
    WG,
    launch,
    load,
    module,
    next_pow2,
    store,
    vec_args,
    vec_at,
    vec_defaults,
    vec_fields,
)
from navitrain.wgpu.tensor import empty

_NORMALIZE = codegen.ParamBlock(
    "M", "L", "y_off", "mean_off", "rstd_off", "x_off", "eps: f32", "G", "D", "HW",
    *vec_fields("weight"), *vec_fields("bias"), *strided.fields("x"),
    defaults={"G": 1, "D": 1, "HW": 1, **vec_defaults("weight", "bias"), **strided.defaults("x")})
_LN_BACKWARD = codegen.ParamBlock(
    "M", "L", "gi_off", "dy_off", "x_off", "mean_off", "rstd_off", *vec_fields("weight"), *strided.fields("dy", "x"),
    defaults={**vec_defaults("weight"), **strided.defaults("dy", "x")})
_GN_SUMS = codegen.ParamBlock("M", "L", "out_off", "dy_off", "x_off")
_GN_COEFS = codegen.ParamBlock(
    "NG", "groups", "D", "scratch_off", "coef_at", "mean_off", "rstd_off", "inv_count: f32",
    *vec_fields("weight"), defaults=vec_defaults("weight"))
_GN_INPUT = codegen.ParamBlock(
    "total", "C", "HW", "D", "groups", "gi_off", "dy_off", "x_off", "coef_off", "rstd_off", *vec_fields("weight"),
    defaults=vec_defaults("weight"))
_GN_PARAMS = codegen.ParamBlock(
    "C", "N", "D", "groups", "scratch_off", "mean_off", "rstd_off", *vec_fields("gw"), *vec_fields("gb"),
    defaults=vec_defaults("gw", "gb"))


# -- the row frame: rows of L contiguous elements, TPR lanes each (blocks with fields M and L) ---------
def threads_per_row(L: int, geo=None) -> int:
    """A power of two near L / 4 (a few elements per thread), from a short list to keep variants few.
    Rows read through strides (`geo`) take one thread each: a row's elements are far apart there while
    neighbouring rows are neighbours in memory (a permuted NCHW plane), so threads walking rows side by
    side read contiguously (16 lanes per row ran 2x slower than copy + contiguous rows on lavapipe)."""
    if geo is not None:
        # ... unless the row is too long for llvmpipe's loop budget (kernels/loop_budget.py): then the
        # fewest lanes that fit it
        return next((t for t in _LANES[::-1] if row_passes(L, t) <= loop_budget.PASS_BUDGET), _LANES[0])
    want = next_pow2(max(1, -(-L // 4)))
    return next(t for t in _LANES if t <= want)


_LANES = (256, 64, 16, 4, 1)


def row_passes(L: int, tpr: int) -> int:
    """Loop passes of the busiest thread of a row kernel (the forward's: two sums and the write, each
    with its tree), which llvmpipe caps (kernels/loop_budget.py)."""
    return 3 * loop_budget.strided(L, tpr) + 2 * tpr.bit_length()


def _require_row_budget(L: int, tpr: int) -> None:
    # A row longer than 256 lanes can walk within llvmpipe's budget (~5M elements) runs on the CPU there.
    loop_budget.require(row_passes(L, tpr), f"a normalized row of {L} elements")


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
            f"  let row = group * {WG // tpr}u + slot; let live = row < M;")


def _row_groups(M: int, tpr: int):
    return codegen.grid(-(-M // (WG // tpr)))


# -- forward ----------------------------------------------------------------------------------------
def row_normalize(x, M, L, weight, bias, eps, y, mean, rstd, gn_shape=None, geo=None):
    """y = (x - mean_row) * rstd_row * w[k] + b[k] over M contiguous rows of length L, writing each
    row's mean and rstd. k is the position in the row (layer norm) or the channel (group norm, given
    gn_shape = (groups, channels per group, HxW)). With `geo` (layer norm only) x's rows are read
    through its strides (row_norm_strided.py); y is contiguous either way."""
    tpr = threads_per_row(L, geo)
    _require_row_budget(L, tpr)
    opt = [t for t in (weight, bias) if t is not None]
    tensors = [y, mean, rstd, x] + opt
    G, D, HW = gn_shape or (1, 1, 1)
    params = _NORMALIZE.pack(M=M, L=L, y_off=y.elem_offset, mean_off=mean.elem_offset, rstd_off=rstd.elem_offset,
                             x_off=x.elem_offset, eps=float(eps), G=G, D=D, HW=HW,
                             **vec_args("weight", weight), **vec_args("bias", bias),
                             **(strided.args(geo, x=x) if geo else {}))

    def source():
        return _normalize_source(tpr, x, y, mean, rstd, weight, bias, tensors, gn_shape is not None, geo)

    key = ("row_norm", tpr, gn_shape is not None, weight is not None, bias is not None, geo and geo.used,
           tuple(t.dtype for t in tensors))
    launch(key, "row_normalize", tensors, params, source, _row_groups(M, tpr))


def _normalize_source(tpr, x, y, mean, rstd, weight, bias, tensors, group_norm: bool, geo) -> str:
    k = "(row % G) * D + j / HW" if group_norm else "j"
    binding = iter(range(4, 4 + len(tensors)))
    w = load(weight, next(binding), vec_at("weight", f"({k})")) if weight is not None else None
    b = load(bias, next(binding), vec_at("bias", f"({k})")) if bias is not None else None
    xv = load(x, 3, "base + j * x_ls" if geo else "base + j")
    lines = [_NORMALIZE.wgsl(), _row_frame(tpr)]
    if geo:
        lines += [strided.row_index_wgsl("row", geo.used), f"  let base = {strided.row_start('x', geo.used)};"]
    else:
        lines.append("  let base = x_off + row * L;")
    lines.append(_row_sums(tpr, ["xv"], f"let xv = {xv};", ["total"]))
    lines.append("  let mean = total / f32(L);")
    lines.append(_row_sums(tpr, ["(xv - mean) * (xv - mean)"], f"let xv = {xv};", ["sq"]))
    # A row holding inf has sq = NaN: rstd must stay NaN (as on the CPU), which WGSL's max may drop.
    lines.append("  let rstd = 1.0 / sqrt(fmax_nan(sq / f32(L), 0.0) + eps);")
    lines.append("  if (!live) { return; }")
    # The CPU's Welford mean of a row holding inf is NaN (inf - inf) unless the inf comes last: store NaN
    # as it does, wherever the variance is NaN.
    lines.append("  if (lane == 0u) { " + store(mean, 1, "mean_off + row", "keep_nan(sq, mean)") + " "
                 + store(rstd, 2, "rstd_off + row", "rstd") + " }")
    lines.append(f"  for (var j = lane; j < L; j = j + {tpr}u) {{")
    val = "(" + xv + " - mean) * rstd"
    if w is not None:
        val = f"{val} * {w}"
    if b is not None:
        val = f"{val} + {b}"
    lines.append("    " + store(y, 0, "y_off + row * L + j", val))
    lines.append("  }")
    return module(tensors, "\n".join(lines), f"var<workgroup> red: array<f32, {WG}>;\n")


# -- layer norm backward ----------------------------------------------------------------------------
def layer_norm_backward_input(gi, grad_out, x, mean, rstd, weight, M, L, geo=None) -> None:
    """gi over M contiguous rows of length L, from the rows' mean and rstd (a row kernel). With `geo`,
    grad_out and x are read through their strides (row_norm_strided.py); gi is contiguous."""
    tpr = threads_per_row(L, geo)
    _require_row_budget(L, tpr)
    tensors = [gi, grad_out, x, mean, rstd] + ([weight] if weight is not None else [])
    params = _LN_BACKWARD.pack(M=M, L=L, gi_off=gi.elem_offset, dy_off=grad_out.elem_offset, x_off=x.elem_offset,
                               mean_off=mean.elem_offset, rstd_off=rstd.elem_offset, **vec_args("weight", weight),
                               **(strided.args(geo, dy=grad_out, x=x) if geo else {}))

    def source():
        w = load(weight, 5, vec_at("weight", "j")) if weight is not None else "1.0"
        dy_at, x_at = ("dy_base + j * dy_ls", "x_base + j * x_ls") if geo else ("dy_base + j", "x_base + j")
        loads = (f"let gv = {load(grad_out, 1, dy_at)} * {w}; "
                 f"let xh = ({load(x, 2, x_at)} - mu) * rs;")
        if geo:
            bases = (strided.row_index_wgsl("row", geo.used) + f"  let dy_base = {strided.row_start('dy', geo.used)}; "
                     f"let x_base = {strided.row_start('x', geo.used)};")
        else:
            bases = "  let dy_base = dy_off + row * L; let x_base = x_off + row * L;"
        lines = [_LN_BACKWARD.wgsl(), _row_frame(tpr), bases,
                 "  var mu = 0.0; var rs = 0.0;",
                 f"  if (live) {{ mu = {load(mean, 3, 'mean_off + row')}; rs = {load(rstd, 4, 'rstd_off + row')}; }}",
                 _row_sums(tpr, ["gv", "gv * xh"], loads, ["sg", "sgx"]),
                 "  if (!live) { return; }",
                 "  let inv_l = 1.0 / f32(L);",
                 f"  for (var j = lane; j < L; j = j + {tpr}u) {{",
                 "    " + loads,
                 "    " + store(gi, 0, "gi_off + row * L + j", "rs * (gv - sg * inv_l - xh * sgx * inv_l)"),
                 "  }"]
        return module(tensors, "\n".join(lines), f"var<workgroup> red: array<f32, {2 * WG}>;\n")

    key = ("ln_bwd", tpr, weight is not None, geo and geo.used, tuple(t.dtype for t in tensors))
    launch(key, "layer_norm_backward", tensors, params, source, _row_groups(M, tpr))


def layer_norm_backward_params(grad_out, x, mean, rstd, M, L, gw, gb) -> None:
    """gw and gb ([L] vectors, either may be None): column sums over the M rows, [M, L] being [A, C, 1]
    with per-row mean and rstd ([M] vectors)."""
    wanted = [(t, term) for t, term in ((gw, "X0 * (X1 - R0) * R1"), (gb, "X0")) if t is not None]
    partials, G, Bp = channel_sums("ln_wb", M, L, 1, [grad_out, x], [term for _, term in wanted],
                                   row_vecs=[mean, rstd])
    finish_sums(partials, G, Bp, L, [t for t, _ in wanted])


# -- group norm backward ----------------------------------------------------------------------------
def group_norm_backward(grad_out, x, mean, rstd, weight, N, C, HxW, group, gi, gw, gb) -> None:
    """Writes gi, gw and gb (any may be None) for contiguous x and grad_out of N * C * HxW elements."""
    # ds[n, c] = sum(dy * x), db[n, c] = sum(dy) over the HxW positions; then two floats per (n, group).
    # A thread per (sample, group) walks the group's C / group channels, a thread per channel the N
    # samples; past llvmpipe's loop budget (kernels/loop_budget.py) the CPU computes it. The sums' rows
    # are HxW long (row_passes bounds them).
    _require_row_budget(HxW, threads_per_row(HxW))
    if gi is not None:
        loop_budget.require(loop_budget.strided(C // group, 1) + 2, f"a group norm backward over {C // group} "
                            "channels a group")
    if gw is not None or gb is not None:
        loop_budget.require(loop_budget.strided(N, 1) + 2, f"a group norm's weight gradient over {N} samples")
    scratch = empty([2 * N * C + 2 * N * group], torch.float32)
    _gn_sums(scratch, grad_out, x, N * C, HxW)
    if gi is not None:
        _gn_input_coefs(scratch, mean, rstd, weight, N, C, HxW, group)
        _gn_input(gi, grad_out, x, scratch, rstd, weight, N, C, HxW, group)
    if gw is not None or gb is not None:
        _gn_params(scratch, mean, rstd, gw, gb, N, C, group)


def _gn_sums(scratch, grad_out, x, rows, HxW) -> None:
    """(ds, db) per (sample, channel) row into the scratch's first 2 * N * C floats."""
    tpr = threads_per_row(HxW)
    tensors = [scratch, grad_out, x]
    params = _GN_SUMS.pack(M=rows, L=HxW, out_off=scratch.elem_offset, dy_off=grad_out.elem_offset,
                           x_off=x.elem_offset)

    def source():
        loads = (f"let dy = {load(grad_out, 1, 'dy_off + row * L + j')}; "
                 f"let xv = {load(x, 2, 'x_off + row * L + j')};")
        lines = [_GN_SUMS.wgsl(), _row_frame(tpr), _row_sums(tpr, ["dy * xv", "dy"], loads, ["ds", "db"]),
                 "  if (live && lane == 0u) { b0[out_off + 2u * row] = ds; b0[out_off + 2u * row + 1u] = db; }"]
        return module(tensors, "\n".join(lines), f"var<workgroup> red: array<f32, {2 * WG}>;\n")

    launch(("gn_bwd_sums", tpr, tuple(t.dtype for t in tensors)), "group_norm_backward_sums", tensors, params,
           source, _row_groups(rows, tpr))


def _gn_input_coefs(scratch, mean, rstd, weight, N, C, HxW, group) -> None:
    """c2, c3 per (n, g), after the sums in the scratch: dx = rstd * w[c] * dy + c2 * x + c3 (PyTorch's
    CPU formulation)."""
    D = C // group
    tensors = [scratch, mean, rstd] + ([weight] if weight is not None else [])
    params = _GN_COEFS.pack(NG=N * group, groups=group, D=D, scratch_off=scratch.elem_offset, coef_at=2 * N * C,
                            mean_off=mean.elem_offset, rstd_off=rstd.elem_offset, inv_count=1.0 / (D * HxW),
                            **vec_args("weight", weight))

    def source():
        w = load(weight, 3, vec_at("weight", "c")) if weight is not None else "1.0"
        lines = [_GN_COEFS.wgsl(),
                 "  let i = gi; if (i >= NG) { return; }",
                 "  let n = i / groups; let g = i % groups;",
                 "  var dsg = 0.0; var dbg = 0.0;",
                 "  for (var d = 0u; d < D; d = d + 1u) {",
                 "    let c = g * D + d; let at = scratch_off + 2u * (n * groups * D + c);",
                 f"    let wc = {w};",
                 "    dsg = dsg + b0[at] * wc; dbg = dbg + b0[at + 1u] * wc;",
                 "  }",
                 f"  let mu = {load(mean, 1, 'mean_off + i')}; let rs = {load(rstd, 2, 'rstd_off + i')};",
                 "  let c2 = (dbg * mu - dsg) * rs * rs * rs * inv_count;",
                 "  let c3 = -c2 * mu - dbg * rs * inv_count;",
                 "  b0[scratch_off + coef_at + 2u * i] = c2; b0[scratch_off + coef_at + 2u * i + 1u] = c3;"]
        return module(tensors, "\n".join(lines))

    launch(("gn_bwd_coef", tuple(t.dtype for t in tensors)), "group_norm_backward_coefs", tensors, params, source,
           codegen.groups_for(N * group, WG))


def _gn_input(gi, grad_out, x, scratch, rstd, weight, N, C, HxW, group) -> None:
    """gi = rstd * w[c] * dy + c2 * x + c3, a thread per element."""
    tensors = [gi, grad_out, x, scratch, rstd] + ([weight] if weight is not None else [])
    total = N * C * HxW
    params = _GN_INPUT.pack(total=total, C=C, HW=HxW, D=C // group, groups=group, gi_off=gi.elem_offset,
                            dy_off=grad_out.elem_offset, x_off=x.elem_offset,
                            coef_off=scratch.elem_offset + 2 * N * C, rstd_off=rstd.elem_offset,
                            **vec_args("weight", weight))

    def source():
        w = load(weight, 5, vec_at("weight", "c")) if weight is not None else "1.0"
        lines = [_GN_INPUT.wgsl(),
                 "  if (gi >= total) { return; }",
                 "  let nc = gi / HW; let c = nc % C; let n = nc / C;",
                 "  let ng = n * groups + c / D;",
                 f"  let rs = {load(rstd, 4, 'rstd_off + ng')};",
                 f"  let dy = {load(grad_out, 1, 'dy_off + gi')}; let xv = {load(x, 2, 'x_off + gi')};",
                 f"  let v = rs * {w} * dy + b3[coef_off + 2u * ng] * xv + b3[coef_off + 2u * ng + 1u];",
                 "  " + store(gi, 0, "gi_off + gi", "v")]
        return module(tensors, "\n".join(lines))

    launch(("gn_bwd_apply", tuple(t.dtype for t in tensors)), "group_norm_backward_input", tensors, params, source,
           codegen.groups_for(total, WG))


def _gn_params(scratch, mean, rstd, gw, gb, N, C, group) -> None:
    """gw[c] = sum over n of (ds - db * mean) * rstd, gb[c] = sum over n of db (a thread per channel)."""
    outs = [(t, name, total) for t, name, total in ((gw, "gw", "sw"), (gb, "gb", "sb")) if t is not None]
    tensors = [scratch, mean, rstd] + [t for t, _, _ in outs]
    params = _GN_PARAMS.pack(C=C, N=N, D=C // group, groups=group, scratch_off=scratch.elem_offset,
                             mean_off=mean.elem_offset, rstd_off=rstd.elem_offset,
                             **vec_args("gw", gw), **vec_args("gb", gb))

    def source():
        lines = [_GN_PARAMS.wgsl(),
                 "  let c = gi; if (c >= C) { return; }",
                 "  let g = c / D;",
                 "  var sw = 0.0; var sb = 0.0;",
                 "  for (var n = 0u; n < N; n = n + 1u) {",
                 "    let at = scratch_off + 2u * (n * C + c); let ng = n * groups + g;",
                 f"    let mu = {load(mean, 1, 'mean_off + ng')}; let rs = {load(rstd, 2, 'rstd_off + ng')};",
                 "    sw = sw + (b0[at] - b0[at + 1u] * mu) * rs; sb = sb + b0[at + 1u];",
                 "  }"]
        for i, (t, name, total) in enumerate(outs):
            lines.append("  " + store(t, 3 + i, vec_at(name, "c"), total))
        return module(tensors, "\n".join(lines))

    launch(("gn_bwd_wb", gw is not None, gb is not None, tuple(t.dtype for t in tensors)),
           "group_norm_backward_params", tensors, params, source, codegen.groups_for(C, WG))
