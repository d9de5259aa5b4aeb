"""Two training batch norms over tensors of one shape and layout whose results meet in one elementwise
chain: a ResNet downsample block, out = relu(bn(conv(h)) + bn_d(conv_d(x))) (compiled graphs, issue 19).

Forward: each batch norm's statistics as batch_norm.forward computes them (a sums pass, or a
convolution's moments; saved mean/invstd, running update, four coefficients per channel), then ONE
elementwise pass normalizes both inputs and runs the chain: the shortcut branch's normalized value,
which the unfused graph writes and the chain reads back, stays in registers (rounded to its dtype as
the unfused op stores it).

Backward: both batch norms read the same dy (the gradient of the add, made by a prologue chain). One
sums pass makes dy once and sums dy, dy * (x1 - mean1) and dy * (x2 - mean2); each batch norm's
per-channel kernel takes its two sums; one elementwise pass makes dy again and writes both input
gradients. The unfused graph stores dy and reads it back for the second batch norm's two passes.
"""
from __future__ import annotations

import torch

from navitrain.wgpu.kernels import batch_norm, codegen
from navitrain.wgpu.kernels.channel_sums import channel_sums
from navitrain.wgpu.kernels.norm_common import WG, launch, load, module, store
from navitrain.wgpu.runtime import runtime
from navitrain.wgpu.tensor import empty

MAX_EXTRA = 2   # tensors the forward chain reads besides the two inputs (one binding went to the second input)
_FORWARD = codegen.ParamBlock("n", "C", "B", "y_off", "x1_off", "coef1_off", "x2_off", "coef2_off",
                              f"in_off[{MAX_EXTRA}]")
_BACKWARD = codegen.ParamBlock("n", "C", "B", "gi1_off", "gi2_off", "x1_off", "x2_off", "coef1_off", "coef2_off",
                               f"in_off[{batch_norm.MAX_EXTRA}]")


def _rounded(dtype, value: str, to: str = "f32") -> str:
    """`value` (f32) as an unfused op stores it in `dtype` and the next one loads it as `to`."""
    st = runtime().stypes[dtype]
    if dtype == torch.float32 and to == "f32":
        return value
    return st.load(st.store(value), to)


def forward(x1, x2, A, C, B, stats1: dict, stats2: dict, epilogue: batch_norm.Epilogue, joined: int, inputs):
    """The epilogue's result: names[0] is x1 normalized, names[joined] x2 normalized, the other names
    `inputs` in order (laid out as x1). stats1/stats2: batch_norm.coefficients' keyword arguments
    (weight, bias, running_mean, running_var, momentum, eps, save_mean, save_invstd, moments)."""
    coefs1, off1 = batch_norm.coefficients(x1, A, C, B, training=True, **stats1)
    coefs2, off2 = batch_norm.coefficients(x2, A, C, B, training=True, **stats2)
    n = x1.numel()
    y = empty(x1.shape, epilogue.out_dtype, x1.stride())
    tensors = [y, x1, coefs1, x2, coefs2, *inputs]
    offsets = [t.elem_offset for t in inputs] + [0] * (MAX_EXTRA - len(inputs))
    params = _FORWARD.pack(n=n, C=C, B=B, y_off=y.elem_offset, x1_off=x1.elem_offset, coef1_off=off1,
                           x2_off=x2.elem_offset, coef2_off=off2, in_off=offsets)
    stypes = runtime().stypes

    def source():
        lines = [_FORWARD.wgsl(),
                 "  if (gi >= n) { return; }",
                 "  let c = (gi / B) % C;",
                 "  let k1 = coef1_off + 4u * c; let k2 = coef2_off + 4u * c;",
                 f"  let x1v = {load(x1, 1, 'x1_off + gi')};",
                 f"  let x2v = {load(x2, 3, 'x2_off + gi')};"]
        names = list(zip(epilogue.names, epilogue.load_types))
        lines.append(f"  let {names[0][0]} = {_rounded(x1.dtype, '((x1v - b2[k1]) * b2[k1 + 1u] + b2[k1 + 2u])')};")
        others = iter(enumerate(inputs))
        for name, load_type in names[1:]:
            if name == epilogue.names[joined]:
                value = _rounded(x2.dtype, "((x2v - b4[k2]) * b4[k2 + 1u] + b4[k2 + 2u])", load_type)
            else:
                j, t = next(others)
                value = stypes[t.dtype].load(f"b{5 + j}[in_off_{j} + gi]", load_type)
            lines.append(f"  let {name} = {value};")
        lines.append(epilogue.prelude)
        lines.append("  " + store(y, 0, "y_off + gi", epilogue.expr))
        return module(tensors, "\n".join(lines))

    key = ("bn_pair_apply", epilogue, joined, tuple(t.dtype for t in tensors))
    launch(key, "batch_norm_pair_apply", tensors, params, source, codegen.groups_for(n, WG))
    return y


def backward(x1, x2, A, C, B, grads1: dict, grads2: dict, eps: float, prologue: batch_norm.Prologue, inputs):
    """(gi1, gi2): training input gradients of two batch norms that read the same dy, made by `prologue`
    from `inputs` (laid out as x1). grads1/grads2: weight, save_mean, save_invstd, gw, gb (gw and gb
    written: tensors of [C])."""
    n_in = len(inputs)
    binds = "".join(f"      let {name} = X{j};\n" for j, name in enumerate(prologue.names))
    prelude = binds + prologue.prelude + f"\n      let DY = {_rounded(prologue.dtype, prologue.expr)};"
    terms = ["DY", f"DY * (X{n_in} - V0)", f"DY * (X{n_in + 1} - V1)"]
    partials, G, Bp = channel_sums("bn_bwd_pair", A, C, B, [*inputs, x1, x2], terms,
                                   chan_vecs=[grads1["save_mean"], grads2["save_mean"]], prelude=prelude)
    sums = {"G": G, "Bp": Bp, "part_off": partials.elem_offset}
    coefs = empty([8 * C], torch.float32)   # both batch norms' k0..k3: one binding in the elementwise pass
    for k, g in enumerate((grads1, grads2)):
        batch_norm._backward_statistics(coefs, partials, sums, A * B, C, g["weight"], g["save_mean"],
                                        g["save_invstd"], True, eps, g["gw"], g["gb"],
                                        coef_offset=coefs.elem_offset + 4 * C * k, K=3, t1_term=1 + k)
    return _apply_backward(x1, x2, coefs, C, B, prologue, list(inputs))


def _apply_backward(x1, x2, coefs, C, B, prologue, inputs) -> tuple:
    n = x1.numel()
    gi1, gi2 = empty(x1.shape, x1.dtype, x1.stride()), empty(x2.shape, x2.dtype, x2.stride())
    tensors = [gi1, gi2, x1, x2, coefs, *inputs]
    offsets = [t.elem_offset for t in inputs] + [0] * (batch_norm.MAX_EXTRA - len(inputs))
    params = _BACKWARD.pack(n=n, C=C, B=B, gi1_off=gi1.elem_offset, gi2_off=gi2.elem_offset, x1_off=x1.elem_offset,
                            x2_off=x2.elem_offset, coef1_off=coefs.elem_offset, coef2_off=coefs.elem_offset + 4 * C,
                            in_off=offsets)
    stypes = runtime().stypes

    def source():
        lines = [_BACKWARD.wgsl(),
                 "  if (gi >= n) { return; }",
                 "  let c = (gi / B) % C;",
                 "  let k1 = coef1_off + 4u * c; let k2 = coef2_off + 4u * c;",
                 f"  let x1v = {load(x1, 2, 'x1_off + gi')};",
                 f"  let x2v = {load(x2, 3, 'x2_off + gi')};"]
        for j, ((name, load_type), t) in enumerate(zip(zip(prologue.names, prologue.load_types), inputs)):
            lines.append(f"  let {name} = {stypes[t.dtype].load(f'b{5 + j}[in_off_{j} + gi]', load_type)};")
        lines.append(prologue.prelude)
        # Rounded as the unfused chain stores dy and the unfused batch norms load it.
        lines.append(f"  let dy = {_rounded(prologue.dtype, prologue.expr)};")
        lines.append("  let v1 = (dy - b4[k1 + 2u] - (x1v - b4[k1]) * b4[k1 + 1u]) * b4[k1 + 3u];")
        lines.append("  let v2 = (dy - b4[k2 + 2u] - (x2v - b4[k2]) * b4[k2 + 1u]) * b4[k2 + 3u];")
        lines.append("  " + store(gi1, 0, "gi1_off + gi", "v1"))
        lines.append("  " + store(gi2, 1, "gi2_off + gi", "v2"))
        return module(tensors, "\n".join(lines))

    key = ("bn_pair_apply_bwd", prologue, tuple(t.dtype for t in tensors))
    launch(key, "batch_norm_pair_apply_backward", tensors, params, source, codegen.groups_for(n, WG))
    return gi1, gi2
