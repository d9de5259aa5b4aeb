"""Batch norm kernels over an input seen as [A, C, B] with the channel in the middle ([N, C, spatial]
for a contiguous input, [N * spatial, C, 1] for a channels-last one, so both layouts are read in
place). Training: per-channel sums (channel_sums, one pass over the data), a tiny per-channel kernel
for the statistics, the running-stat update and four coefficients per channel, then an elementwise
pass writes the result. Variance is accumulated around a shift (the channel's first element), which
keeps the one-pass sum of squares from cancelling when the mean is large next to the spread. Backward
has the same shape: sums of dy and dy * (x - mean), per-channel coefficients (and the weight and bias
gradients), the elementwise pass.

Compiled graphs (fusion_norm.py) hand the forward an `Epilogue`: the elementwise ops that follow the
normalization (ReLU, a residual add) run in its elementwise pass instead of passes of their own; and
the backward a `Prologue`: the elementwise ops that make dy (ReLU's gradient, the sum of a residual's
gradients) run where dy is read, in both backward passes, instead of writing dy once and reading it
twice."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from navitrain.wgpu.kernels import codegen
from navitrain.wgpu.kernels.channel_sums import PARTIAL_FIELDS, channel_sums, sum_partials
from navitrain.wgpu.kernels.norm_common import (
    WG,
    launch,
    load,
    module,
    store,
    vec_args,
    vec_at,
    vec_defaults,
    vec_fields,
)
from navitrain.wgpu.runtime import runtime
from navitrain.wgpu.tensor import empty

NAN = float("nan")
_NO_PARTIALS = {"G": 0, "Bp": 0, "part_off": 0}

_APPLY = codegen.ParamBlock("n", "C", "B", "y_off", "x_off", "coef_off", "dy_off", defaults={"dy_off": 0})
MAX_EXTRA = 3  # tensors an Epilogue or Prologue may read besides x (the bindings: y, x, coefficients, 3, dy)
_FUSED_APPLY = codegen.ParamBlock("n", "C", "B", "y_off", "x_off", "coef_off", f"in_off[{MAX_EXTRA}]")


@dataclass(frozen=True)
class Epilogue:
    """Elementwise work on the normalized value before it is stored: WGSL `prelude` lines and the stored
    `expr`, over names[0] (the normalized value, rounded to x's dtype as the unfused op stores it) and
    names[1:] (tensors with x's shape and strides, loaded as load_types[1:]), computed in f32 and stored
    as `out_dtype`."""
    prelude: str
    expr: str
    names: tuple
    load_types: tuple
    out_dtype: torch.dtype


@dataclass(frozen=True)
class Prologue:
    """How dy is made from tensors with x's shape and strides (loaded as `names`, `load_types`): WGSL
    `prelude` lines and `expr`, rounded to `dtype` as the unfused op would store it."""
    prelude: str
    expr: str
    names: tuple
    load_types: tuple
    dtype: torch.dtype
_STATS = codegen.ParamBlock(
    *PARTIAL_FIELDS, "coef_off", "x_off", "B", "mean_off", "invstd_off",
    "n: f32", "eps: f32", "momentum: f32", "unbias: f32",
    *vec_fields("weight"), *vec_fields("bias"), *vec_fields("rmean"), *vec_fields("rvar"),
    defaults={**_NO_PARTIALS, **vec_defaults("weight", "bias", "rmean", "rvar")})
_BACKWARD_STATS = codegen.ParamBlock(
    *PARTIAL_FIELDS, "coef_off", "n: f32", "eps: f32",
    *vec_fields("mean"), *vec_fields("inv"), *vec_fields("weight"), *vec_fields("gw"), *vec_fields("gb"),
    defaults={**_NO_PARTIALS, **vec_defaults("weight", "gw", "gb")})


def forward(x, A, C, B, weight, bias, running_mean, running_var, training, momentum, eps, save_mean, save_invstd,
            epilogue: Epilogue | None = None, epilogue_inputs=(), moments=None):
    """y, with save_mean/save_invstd written (training) and the running statistics updated when given.
    In evaluation mode the statistics are the running ones. With an `epilogue`, its result instead of y
    (`epilogue_inputs` laid out as x). `moments` (training): x's per-tile statistics, written by the
    convolution that made x (conv/channel_stats.ConvMoments), instead of a sums pass over x."""
    coefs, coef_offset = coefficients(x, A, C, B, weight, bias, running_mean, running_var, training, momentum, eps,
                                      save_mean, save_invstd, moments)
    if epilogue is not None:
        return _apply_fused(x, coefs, coef_offset, C, B, epilogue, list(epilogue_inputs))
    return _apply(x, coefs, coef_offset, C, B, x.dtype)


def coefficients(x, A, C, B, weight, bias, running_mean, running_var, training, momentum, eps, save_mean,
                 save_invstd, moments=None):
    """(buffer, element offset) of the forward elementwise pass's four coefficients per channel, with the
    statistics saved and the running ones updated as forward() does (kernels/batch_norm_pair.py applies
    two batch norms' coefficients in one pass)."""
    # The coefficients of the elementwise pass (4 per channel) go after the partial sums, in the same buffer.
    if training and moments is not None:
        coefs = moments.partials
        coef_offset = moments.spare_offset
        partials = {"G": moments.tiles, "Bp": moments.tile_cols, "part_off": moments.partials.elem_offset}
    elif training:
        coefs, G, Bp = channel_sums("bn_fwd", A, C, B, [x], ["X0 - SH", "(X0 - SH) * (X0 - SH)"], shift=True,
                                    extra=4 * C)
        coef_offset = coefs.elem_offset + G * C * Bp * 2
        partials = {"G": G, "Bp": Bp, "part_off": coefs.elem_offset}
    else:
        coefs = empty([4 * C], torch.float32)
        coef_offset = coefs.elem_offset
        partials = {}
    _statistics(x, A, C, B, weight, bias, running_mean, running_var, training, momentum, eps, save_mean,
                save_invstd, coefs, coef_offset, partials, moments is not None)
    return coefs, coef_offset


def _rounded(dtype, value: str) -> str:
    """`value` as an unfused op stores it in `dtype` and the next one loads it back."""
    if dtype == torch.float32:
        return value
    st = runtime().stypes[dtype]
    return st.load(st.store(value), "f32")


def _apply_fused(x, coefs, coef_offset, C, B, epilogue: Epilogue, inputs, grad: Prologue | None = None):
    """The forward elementwise pass with `epilogue` (grad None), or the backward training one with dy
    made by prologue `grad` from `inputs`; one thread per element, every tensor read at x's index."""
    n = x.numel()
    out_dtype = epilogue.out_dtype if grad is None else x.dtype
    y = empty(x.shape, out_dtype, x.stride())
    tensors = [y, x, coefs, *inputs]
    offsets = [t.elem_offset for t in inputs] + [0] * (MAX_EXTRA - len(inputs))
    params = _FUSED_APPLY.pack(n=n, C=C, B=B, y_off=y.elem_offset, x_off=x.elem_offset, coef_off=coef_offset,
                               in_off=offsets)
    fused = grad if grad is not None else epilogue

    def source():
        lines = [_FUSED_APPLY.wgsl(),
                 "  if (gi >= n) { return; }",
                 "  let c = (gi / B) % C;",
                 f"  let xv = {load(x, 1, 'x_off + gi')};",
                 "  let k = coef_off + 4u * c;"]
        named = list(zip(fused.names, fused.load_types))
        if grad is None:
            lines.append(f"  let {named[0][0]} = {_rounded(x.dtype, '((xv - b2[k]) * b2[k + 1u] + b2[k + 2u])')};")
            named = named[1:]
        for j, ((name, load_type), t) in enumerate(zip(named, inputs)):
            lines.append(f"  let {name} = {runtime().stypes[t.dtype].load(f'b{3 + j}[in_off_{j} + gi]', load_type)};")
        lines.append(fused.prelude)
        if grad is None:
            lines.append("  " + store(y, 0, "y_off + gi", epilogue.expr))
        else:
            lines.append(f"  let dy = {_rounded(grad.dtype, grad.expr)};")
            lines.append("  let v = (dy - b2[k + 2u] - (xv - b2[k]) * b2[k + 1u]) * b2[k + 3u];")
            lines.append("  " + store(y, 0, "y_off + gi", "v"))
        return module(tensors, "\n".join(lines))

    key = ("bn_apply_fused", grad is None, fused, tuple(t.dtype for t in tensors))
    launch(key, "batch_norm_apply_fused", tensors, params, source, codegen.groups_for(n, WG))
    return y


def _statistics(x, A, C, B, weight, bias, running_mean, running_var, training, momentum, eps, save_mean,
                save_invstd, coefs, coef_offset, partials, from_moments=False):
    """A thread per channel: mean and invstd (from the sums, per-tile moments, or the running statistics),
    the running update, and the coefficients k0..k3 of the forward elementwise pass."""
    has_running = running_mean is not None and running_var is not None
    n = A * B
    named = [(t, name) for t, name in ((weight, "weight"), (bias, "bias")) if t is not None]
    if has_running:
        named += [(running_mean, "rmean"), (running_var, "rvar")]
    tensors = [coefs] + ([x, save_mean, save_invstd] if training else []) + [t for t, _ in named]
    vecs = {}
    for t, name in named:
        vecs.update(vec_args(name, t))
    params = _STATS.pack(C=C, coef_off=coef_offset, x_off=x.elem_offset, B=B, mean_off=save_mean.elem_offset,
                         invstd_off=save_invstd.elem_offset, n=float(n), eps=float(eps), momentum=float(momentum),
                         unbias=n / (n - 1) if n > 1 else NAN, **partials, **vecs)

    def source():
        first = 4 if training else 1
        at = {name: (first + k, vec_at(name, "c")) for k, (_, name) in enumerate(named)}
        if from_moments:   # a workgroup per channel combines its tiles; its first thread goes on
            lines = [_STATS.wgsl(), "  let c = group; if (c >= C) { return; }"]
        else:
            lines = [_STATS.wgsl(), "  let c = gi; if (c >= C) { return; }"]
        if training:
            lines += _batch_statistics(x, save_mean, save_invstd, running_mean, running_var, has_running, at,
                                       from_moments)
        else:
            lines.append(f"  let mean = {load(running_mean, *at['rmean'])};")
            lines.append(f"  let invstd = 1.0 / sqrt({load(running_var, *at['rvar'])} + eps);")
        w = load(weight, *at["weight"]) if weight is not None else "1.0"
        b = load(bias, *at["bias"]) if bias is not None else "0.0"
        lines.append("  let k = coef_off + 4u * c;")
        lines.append(f"  b0[k] = mean; b0[k + 1u] = invstd * {w}; b0[k + 2u] = {b}; b0[k + 3u] = 0.0;")
        return module(tensors, "\n".join(lines), _MOMENTS_SHARED if from_moments else "")

    key = ("bn_fin", training, from_moments, has_running, tuple(t.dtype for t in tensors), weight is not None,
           bias is not None)
    launch(key, "batch_norm_stats", tensors, params, source, codegen.grid(C) if from_moments
           else codegen.groups_for(C, WG))


def _batch_statistics(x, save_mean, save_invstd, running_mean, running_var, has_running, at,
                      from_moments=False) -> list[str]:
    """WGSL: mean, invstd of channel c from its shifted sums (or per-tile moments), saved, and the running
    update."""
    if from_moments:
        lines = _combined_moments()
    else:
        lines = [sum_partials(2, [(0, "t0"), (1, "t1")]),
                 f"  let sh = finite_or_0({load(x, 1, 'x_off + c * B')});",  # as channel_sums' SH
                 "  let d = t0 / n;",
                 "  let mean = sh + d; let var_b = fmax_nan(t1 / n - d * d, 0.0);"]  # keeps NaN (inf - inf)
    lines += ["  let invstd = 1.0 / sqrt(var_b + eps);",
              "  " + store(save_mean, 2, "mean_off + c", "mean"),
              "  " + store(save_invstd, 3, "invstd_off + c", "invstd")]
    if has_running:
        bm, im = at["rmean"]
        bv, iv = at["rvar"]
        lines.append(f"  let rm = {load(running_mean, bm, im)}; let rv = {load(running_var, bv, iv)};")
        lines.append("  " + store(running_mean, bm, im, "(1.0 - momentum) * rm + momentum * mean"))
        lines.append("  " + store(running_var, bv, iv, "(1.0 - momentum) * rv + momentum * (var_b * unbias)"))
    return lines


_MOMENTS_SHARED = f"var<workgroup> moments: array<f32, {4 * WG}>;\n"   # (count, mean, M2, total) per thread


def _combined_moments() -> list[str]:
    """WGSL (a workgroup per channel c; its first thread alone goes on after it): mean and var_b of
    channel c from G tiles of (hi, S1, S2) laid out [G, C, 3] at part_off (conv/channel_stats.py; tile t
    holds nb = min(Bp, n - t * Bp) values, its mean is hi + S1 / nb and its M2 is S2 - S1^2 / nb). Each
    tile's mean is taken relative to a shift (the first tile's hi, 0 if not finite), so it is a small
    number known to f32 precision. Thread j combines tiles j, j + WG, ... in order, then the threads'
    states are merged in a fixed tree: M2s by Chan's formula, the mean as the shift plus the relative
    means' total over n. A NaN or an infinity in a tile makes its S2, and so var_b, NaN as the CPU's
    variance; an infinite hi (S1 then NaN) stays infinite in the mean, as on the CPU."""
    def merge(ind, nb, mb, qb, tb):
        """Statements folding a state (count nb, relative mean mb, M2 qb, total tb) into this thread's."""
        return [f"{ind}if ({nb} > 0.0) {{",
                f"{ind}  if (cnt == 0.0) {{ cnt = {nb}; cm = {mb}; m2 = {qb}; total = {tb}; }} else {{",
                f"{ind}    let tot = cnt + {nb}; let delta = {mb} - cm;",
                f"{ind}    cm = cm + delta * ({nb} / tot);",
                f"{ind}    m2 = m2 + {qb} + delta * delta * (cnt * {nb} / tot);",
                f"{ind}    total = total + {tb}; cnt = tot;",
                f"{ind}  }}",
                f"{ind}}}"]

    lines = ["  let sh = finite_or_0(b0[part_off + 3u * c]);",
             "  var cnt = 0.0; var cm = 0.0; var m2 = 0.0; var total = 0.0;",
             f"  for (var t = lid; t < G; t = t + {WG}u) {{",
             "    let nb = min(f32(Bp), n - f32(t) * f32(Bp)); let at = part_off + (t * C + c) * 3u;",
             "    let hi = b0[at]; let s1 = select(b0[at + 1u], 0.0, is_nan(hi) || is_inf(hi));",
             "    let d = (hi - sh) + s1 / nb; let q = b0[at + 2u] - s1 * (s1 / nb);",
             *merge("    ", "nb", "d", "q", "nb * d"),
             "  }",
             "  let me = 4u * lid;",
             "  moments[me] = cnt; moments[me + 1u] = cm; moments[me + 2u] = m2; moments[me + 3u] = total;",
             "  workgroupBarrier();",
             f"  for (var s = {WG // 2}u; s > 0u; s = s >> 1u) {{",
             "    if (lid < s) {",
             "      let o = 4u * (lid + s);",
             *merge("      ", "moments[o]", "moments[o + 1u]", "moments[o + 2u]", "moments[o + 3u]"),
             "      moments[me] = cnt; moments[me + 1u] = cm; moments[me + 2u] = m2; moments[me + 3u] = total;",
             "    }",
             "    workgroupBarrier();",
             "  }",
             "  if (lid != 0u) { return; }",
             "  let mean = sh + total / n;",
             "  let var_b = fmax_nan(m2 / n, 0.0);"]
    return lines


def _apply(x, coefs, coef_offset, C, B, out_dtype, grad=None, train=True):
    """The elementwise pass over [A, C, B], with four coefficients k0..k3 per channel:
    y = (x - k0) * k1 + k2 (forward), or with `grad`, gi = (dy - k2 - (x - k0) * k1) * k3 (backward;
    in evaluation mode gi = dy * k3, which does not read x: an infinite x times a zero k1 would be NaN).
    Subtracting the mean first keeps y accurate when the mean is large next to the spread."""
    y = empty(x.shape, out_dtype, x.stride())
    n = x.numel()
    tensors = [y, x, coefs] + ([grad] if grad is not None else [])
    params = _APPLY.pack(n=n, C=C, B=B, y_off=y.elem_offset, x_off=x.elem_offset, coef_off=coef_offset,
                         dy_off=grad.elem_offset if grad is not None else 0)

    def source():
        lines = [_APPLY.wgsl(),
                 "  if (gi >= n) { return; }",
                 "  let c = (gi / B) % C;",
                 f"  let xv = {load(x, 1, 'x_off + gi')};"]
        if grad is None:
            lines.append("  let k = coef_off + 4u * c;")
            lines.append("  let v = (xv - b2[k]) * b2[k + 1u] + b2[k + 2u];")
        else:
            lines.append(f"  let dy = {load(grad, 3, 'dy_off + gi')};")
            lines.append("  let k = coef_off + 4u * c;")
            if train:
                lines.append("  let v = (dy - b2[k + 2u] - (xv - b2[k]) * b2[k + 1u]) * b2[k + 3u];")
            else:
                lines.append("  let v = dy * b2[k + 3u];")
        lines.append("  " + store(y, 0, "y_off + gi", "v"))
        return module(tensors, "\n".join(lines))

    key = ("bn_apply", train or grad is None, tuple(t.dtype for t in tensors))
    launch(key, "batch_norm_apply", tensors, params, source, codegen.groups_for(n, WG))
    return y


def backward(grad_out, x, A, C, B, weight, mean_src, inv_src, train, eps, gw, gb, want_input,
             prologue: Prologue | None = None, prologue_inputs=()):
    """The input gradient (None unless `want_input`), writing gw and gb when given. mean_src/inv_src are
    the saved mean and invstd (train) or the running mean and variance (evaluation). With a `prologue`
    (training only), dy is made from `prologue_inputs` (laid out as x) where it is read; grad_out is
    then None."""
    need_sums = train or gw is not None or gb is not None
    coefs = empty([4 * C], torch.float32)
    partials = None
    if prologue is not None:
        if not train:
            raise ValueError("batch_norm backward: a prologue is for training mode")
        inputs = [*prologue_inputs, x]
        binds = "".join(f"      let {name} = X{j};\n" for j, name in enumerate(prologue.names))
        prelude = binds + prologue.prelude + f"\n      let DY = {_rounded(prologue.dtype, prologue.expr)};"
        partials, G, Bp = channel_sums("bn_bwd_fused", A, C, B, inputs, ["DY", f"DY * (X{len(inputs) - 1} - V0)"],
                                       chan_vecs=[mean_src], prelude=prelude)
    elif need_sums:
        partials, G, Bp = channel_sums("bn_bwd", A, C, B, [grad_out, x], ["X0", "X0 * (X1 - V0)"],
                                       chan_vecs=[mean_src])
    sums = {"G": G, "Bp": Bp, "part_off": partials.elem_offset} if need_sums else {}
    _backward_statistics(coefs, partials, sums, A * B, C, weight, mean_src, inv_src, train, eps, gw, gb)
    if not want_input:
        return None
    if prologue is not None:
        return _apply_fused(x, coefs, coefs.elem_offset, C, B, None, list(prologue_inputs), grad=prologue)
    return _apply(x, coefs, coefs.elem_offset, C, B, x.dtype, grad=grad_out, train=train)


def _backward_statistics(coefs, partials, sums, n, C, weight, mean_src, inv_src, train, eps, gw, gb,
                         coef_offset=None, K=2, t1_term=1):
    """A thread per channel: the coefficients k0..k3 of the backward elementwise pass (at `coef_offset`,
    default the start of `coefs`), gw and gb. The partials hold K terms: the sum of dy first, the sum of
    dy * (x - mean) at `t1_term` (kernels/batch_norm_pair.py sums two batch norms' terms in one pass)."""
    coef_offset = coefs.elem_offset if coef_offset is None else coef_offset
    need_sums = partials is not None
    named = [(mean_src, "mean"), (inv_src, "inv")]
    named += [(t, name) for t, name in ((weight, "weight"), (gw, "gw"), (gb, "gb")) if t is not None]
    tensors = [coefs] + ([partials] if need_sums else []) + [t for t, _ in named]
    vecs = {}
    for t, name in named:
        vecs.update(vec_args(name, t))
    params = _BACKWARD_STATS.pack(C=C, coef_off=coef_offset, n=float(n), eps=float(eps), **sums, **vecs)

    def source():
        first = 2 if need_sums else 1
        at = {name: (first + k, vec_at(name, "c")) for k, (_, name) in enumerate(named)}
        lines = [_BACKWARD_STATS.wgsl(), "  let c = gi; if (c >= C) { return; }"]
        if need_sums:
            lines.append(sum_partials(K, [(0, "t0"), (t1_term, "t1")], binding=1))
        else:
            lines.append("  let t0 = 0.0; let t1 = 0.0;")
        lines.append(f"  let mean = {load(mean_src, *at['mean'])};")
        if train:
            lines.append(f"  let invstd = {load(inv_src, *at['inv'])};")
            lines.append("  let proj = t1 * invstd * invstd / n; let gmean = t0 / n;")
        else:
            lines.append(f"  let invstd = 1.0 / sqrt({load(inv_src, *at['inv'])} + eps);")
            lines.append("  let proj = 0.0; let gmean = 0.0;")
        w = load(weight, *at["weight"]) if weight is not None else "1.0"
        lines.append("  let k = coef_off + 4u * c;")
        lines.append(f"  b0[k] = mean; b0[k + 1u] = proj; b0[k + 2u] = gmean; b0[k + 3u] = invstd * {w};")
        if gw is not None:
            lines.append("  " + store(gw, *at["gw"], "t1 * invstd"))
        if gb is not None:
            lines.append("  " + store(gb, *at["gb"], "t0"))
        return module(tensors, "\n".join(lines))

    key = ("bn_bwd_fin", train, need_sums, tuple(t.dtype for t in tensors), weight is not None,
           gw is not None, gb is not None, K, t1_term)
    launch(key, "batch_norm_backward_stats", tensors, params, source, codegen.groups_for(C, WG))
