"""Training batch-norm backward whose dy, made by a prologue chain, is also stored for other readers.

In a residual network the gradient reaching a block's output, dz = threshold_backward(g_a + g_b, out),
is read by the block's last batch norm backward and passed on along the shortcut. Written once by a
pointwise kernel and read again by the batch norm, it costs a pass; here the batch norm makes dz from
g_a, g_b and out where it reads dy (kernels/batch_norm.Prologue, both passes) and its elementwise pass
stores dz beside the input gradient, so dz is written once and never read back for this batch norm.

batch_norm.backward runs the sums pass and the per-channel statistics (writing grad_weight and
grad_bias); the elementwise pass needs the four coefficients that pass keeps to itself, so a tiny
per-channel kernel rebuilds them from the saved statistics and the weight and bias gradients with the
same float32 operations (proj = (t1 * invstd) * invstd / n, gmean = t0 / n), then the elementwise pass
runs the same expression as the unfused one. Hence float32 parameters only (their gradients hold t0
and t1 * invstd exactly); the caller keeps other dtypes on the unfused path.
"""
from __future__ import annotations

import torch

from navitrain.wgpu.kernels import batch_norm, codegen
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

_COEFS = codegen.ParamBlock("C", "coef_off", "n: f32", *vec_fields("mean"), *vec_fields("inv"),
                            *vec_fields("weight"), *vec_fields("gw"), *vec_fields("gb"),
                            defaults=vec_defaults("weight"))
_APPLY = codegen.ParamBlock("n", "C", "B", "gi_off", "dy_off", "x_off", "coef_off",
                            f"in_off[{batch_norm.MAX_EXTRA}]")


def backward_keeping_dy(x, A, C, B, weight, save_mean, save_invstd, eps, gw, gb, prologue: batch_norm.Prologue,
                        inputs) -> tuple:
    """(grad_input, dy): training backward of x laid out as [A, C, B] with dy made by `prologue` from
    `inputs` (laid out as x); gw and gb (float32, [C]) are written. dy is stored in prologue.dtype."""
    batch_norm.backward(None, x, A, C, B, weight, save_mean, save_invstd, True, eps, gw, gb, False, prologue, inputs)
    coefs = empty([4 * C], torch.float32)
    _coefficients(coefs, A * B, C, weight, save_mean, save_invstd, gw, gb)
    return _apply(x, coefs, C, B, prologue, list(inputs))


def _coefficients(coefs, n, C, weight, mean, invstd, gw, gb) -> None:
    """A thread per channel: k0..k3 of batch_norm's backward elementwise pass, from gw = t1 * invstd
    and gb = t0."""
    named = [(mean, "mean"), (invstd, "inv"), (gw, "gw"), (gb, "gb")] + ([(weight, "weight")] if weight is not None
                                                                          else [])
    tensors = [coefs] + [t for t, _ in named]
    vecs = {}
    for t, name in named:
        vecs.update(vec_args(name, t))
    params = _COEFS.pack(C=C, coef_off=coefs.elem_offset, n=float(n), **vecs)

    def source():
        at = {name: (1 + k, vec_at(name, "c")) for k, (_, name) in enumerate(named)}
        w = load(weight, *at["weight"]) if weight is not None else "1.0"
        lines = [_COEFS.wgsl(), "  let c = gi; if (c >= C) { return; }",
                 f"  let invstd = {load(invstd, *at['inv'])};",
                 "  let k = coef_off + 4u * c;",
                 f"  b0[k] = {load(mean, *at['mean'])};",
                 f"  b0[k + 1u] = {load(gw, *at['gw'])} * invstd / n;",
                 f"  b0[k + 2u] = {load(gb, *at['gb'])} / n;",
                 f"  b0[k + 3u] = invstd * {w};"]
        return module(tensors, "\n".join(lines))

    key = ("bn_bwd_coefs", tuple(t.dtype for t in tensors), weight is not None)
    launch(key, "batch_norm_backward_coefs", tensors, params, source, codegen.groups_for(C, WG))


def _rounded(dtype, value: str) -> str:
    if dtype == torch.float32:
        return value
    st = runtime().stypes[dtype]
    return st.load(st.store(value), "f32")


def _apply(x, coefs, C, B, prologue: batch_norm.Prologue, inputs) -> tuple:
    """The elementwise pass: dy from the prologue, stored; grad_input as batch_norm's unfused pass
    computes it from dy."""
    n = x.numel()
    gi = empty(x.shape, x.dtype, x.stride())
    dy = empty(x.shape, prologue.dtype, x.stride())
    tensors = [gi, dy, x, coefs, *inputs]
    offsets = [t.elem_offset for t in inputs] + [0] * (batch_norm.MAX_EXTRA - len(inputs))
    params = _APPLY.pack(n=n, C=C, B=B, gi_off=gi.elem_offset, dy_off=dy.elem_offset, x_off=x.elem_offset,
                         coef_off=coefs.elem_offset, in_off=offsets)
    stypes = runtime().stypes

    def source():
        lines = [_APPLY.wgsl(),
                 "  if (gi >= n) { return; }",
                 "  let c = (gi / B) % C;",
                 f"  let xv = {load(x, 2, 'x_off + gi')};",
                 "  let k = coef_off + 4u * c;"]
        for j, ((name, load_type), t) in enumerate(zip(zip(prologue.names, prologue.load_types), inputs)):
            lines.append(f"  let {name} = {stypes[t.dtype].load(f'b{4 + j}[in_off_{j} + gi]', load_type)};")
        lines.append(prologue.prelude)
        # Rounded as the unfused chain stores dy and the unfused batch norm loads it.
        lines.append(f"  let dy = {_rounded(prologue.dtype, prologue.expr)};")
        lines.append("  " + store(dy, 1, "dy_off + gi", "dy"))
        lines.append("  let v = (dy - b3[k + 2u] - (xv - b3[k]) * b3[k + 1u]) * b3[k + 3u];")
        lines.append("  " + store(gi, 0, "gi_off + gi", "v"))
        return module(tensors, "\n".join(lines))

    key = ("bn_apply_keep_dy", prologue, tuple(t.dtype for t in tensors))
    launch(key, "batch_norm_apply_keep_dy", tensors, params, source, codegen.groups_for(n, WG))
    return gi, dy
