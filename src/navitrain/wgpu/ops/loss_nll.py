"""Losses with their own aten kernels: nll_loss (1-D and 2-D targets) forward and backward.

A target outside [0, C) that is not ignore_index gives a NaN loss on the device (the CPU raises): the
GPU cannot raise without a sync per step, and a NaN cannot go unnoticed the way a wrong value could.
"""
from __future__ import annotations

import torch

from navitrain.wgpu.dims import contiguous
from navitrain.wgpu.dispatch import implements
from navitrain.wgpu.kernels import codegen, pointwise
from navitrain.wgpu.kernels.copy import fill
from navitrain.wgpu.kernels.reduction import reduce
from navitrain.wgpu.runtime import runtime
from navitrain.wgpu.tensor import empty

aten = torch.ops.aten
WG = 256


def _flatten(x, target):
    """Geometry of the input as [N, C, S] (S = spatial positions; 1 for 2-D input, N = 1 for 1-D)."""
    if x.dim() == 1:
        return 1, x.shape[0], 1
    N, C = x.shape[0], x.shape[1]
    S = 1
    for s in x.shape[2:]:
        S *= s
    return N, C, S


# Thread n of the N*S (sample, position) pairs: sample b = n / S, position s = n % S.
_FORWARD = codegen.ParamBlock("count", "C", "S", "x_off", "target_off", "ignore_index: i32", "weight_off",
                              "loss_off", "wt_off")
_FORWARD_PACK = _FORWARD.pack_words  # in _FORWARD's order: the keyword pack() costs microseconds


def _forward_source(x_st, t_st, w_st, has_weight):
    idx = t_st.load("b3[target_off + n]", "i32") if t_st.wgsl != "i64" else "i32(b3[target_off + n])"
    weight = f"{w_st.load('b4[weight_off + u32(t)]', 'f32')}" if has_weight else "1.0"
    body = _FORWARD.wgsl() + f"""
  if (gi >= count) {{ return; }}
  let n = gi; let b = n / S; let s = n % S;
  let t = {idx};
  var loss = 0.0; var wt = 0.0;
  if (t != ignore_index) {{
    if (t < 0 || u32(t) >= C) {{ loss = bitcast<f32>(0x7fc00000u); wt = 0.0; }}
    else {{
      wt = {weight};
      loss = -wt * {x_st.load("b2[x_off + (b * C + u32(t)) * S + s]", "f32")};
    }}
  }}
  b0[loss_off + n] = loss;
  b1[wt_off + n] = wt;"""
    types = ["f32", "f32", x_st.wgsl, t_st.wgsl] + ([w_st.wgsl] if has_weight else [])
    return codegen.module(types, body, WG)


@implements(aten.nll_loss_forward.default, aten.nll_loss2d_forward.default)
def nll_loss_forward(x, target, weight, reduction, ignore_index):
    rt = runtime()
    N, C, S = _flatten(x, target)
    x, target = contiguous(x), contiguous(target)
    count = N * S
    losses = empty([count], torch.float32)
    weights = empty([count], torch.float32)
    if count:
        has_w = weight is not None
        x_st, t_st = rt.stypes[x.dtype], rt.stypes[target.dtype]
        w_st = rt.stypes[weight.dtype] if has_w else None
        params = _FORWARD_PACK(count, C, S, x.elem_offset, target.elem_offset, ignore_index,
                               weight.elem_offset if has_w else 0, losses.elem_offset, weights.elem_offset)
        key = ("nll_fwd", x.dtype, target.dtype, weight.dtype if has_w else None)
        kernel = rt.kernel(key, "nll_loss_forward", 5 if has_w else 4, lambda: _forward_source(x_st, t_st, w_st, has_w))
        heaps = (losses._ws.heap, weights._ws.heap, x._ws.heap, target._ws.heap) + ((weight._ws.heap,) if has_w else ())
        rt.dispatch(kernel, heaps, params, codegen.groups_for(count, WG))
    total_weight = reduce(weights, None, False, "sum", x.dtype)
    if reduction == 0:  # none
        out = pointwise.run("cast", "a", [losses], x.dtype, "f32")
        shape = [N] + list(x.shape[2:]) if x.dim() > 1 else []
        return aten.reshape.default(out, shape), total_weight
    total = reduce(losses, None, False, "sum", torch.float32)
    if reduction == 2:  # sum
        return pointwise.run("cast", "a", [total], x.dtype, "f32"), total_weight
    return pointwise.run("div", "a / b", [total, total_weight], x.dtype, "f32"), total_weight


# `scale` multiplies a reduced (single) grad_output; per-sample grad_outputs are read at grad_off + n.
_BACKWARD = codegen.ParamBlock("count", "C", "S", "grad_in_off", "target_off", "ignore_index: i32", "weight_off",
                               "grad_off", "scale: f32")
_BACKWARD_PACK = _BACKWARD.pack_words


def _backward_source(g_st, t_st, w_st, gi_st, has_weight, per_sample):
    idx = t_st.load("b2[target_off + n]", "i32") if t_st.wgsl != "i64" else "i32(b2[target_off + n])"
    weight = f"{w_st.load('b3[weight_off + u32(t)]', 'f32')}" if has_weight else "1.0"
    g = g_st.load("b1[grad_off + n]", "f32") if per_sample else f"{g_st.load('b1[grad_off]', 'f32')} * scale"
    body = _BACKWARD.wgsl() + f"""
  if (gi >= count) {{ return; }}
  let n = gi; let b = n / S; let s = n % S;
  let t = {idx};
  if (t == ignore_index || t < 0 || u32(t) >= C) {{ return; }}
  b0[grad_in_off + (b * C + u32(t)) * S + s] = {gi_st.store(f"-({weight}) * {g}")};"""
    types = [gi_st.wgsl, g_st.wgsl, t_st.wgsl] + ([w_st.wgsl] if has_weight else [])
    return codegen.module(types, body, WG)


@implements(aten.nll_loss_backward.default, aten.nll_loss2d_backward.default)
def nll_loss_backward(grad_output, x, target, weight, reduction, ignore_index, total_weight):
    rt = runtime()
    N, C, S = _flatten(x, target)
    target = contiguous(target)
    grad_input = fill(empty(x.shape, x.dtype), 0)
    count = N * S
    if count == 0:
        return grad_input
    per_sample = reduction == 0
    grad_output = contiguous(grad_output)
    scale = 1.0
    if reduction == 1:
        # Divide by the total weight on the device (no read-back, no sync).
        scale_t = pointwise.run("recip", "1.0 / a", [total_weight], torch.float32, "f32")
        grad_output = pointwise.run("mul", "a * b", [grad_output, scale_t], torch.float32, "f32")
    has_w = weight is not None
    g_st, t_st = rt.stypes[grad_output.dtype], rt.stypes[target.dtype]
    w_st = rt.stypes[weight.dtype] if has_w else None
    gi_st = rt.stypes[grad_input.dtype]
    params = _BACKWARD_PACK(count, C, S, grad_input.elem_offset, target.elem_offset, ignore_index,
                            weight.elem_offset if has_w else 0, grad_output.elem_offset, scale)
    key = ("nll_bwd", grad_output.dtype, target.dtype, weight.dtype if has_w else None, x.dtype, per_sample)
    kernel = rt.kernel(key, "nll_loss_backward", 4 if has_w else 3,
                       lambda: _backward_source(g_st, t_st, w_st, gi_st, has_w, per_sample))
    heaps = (grad_input._ws.heap, grad_output._ws.heap, target._ws.heap) + ((weight._ws.heap,) if has_w else ())
    rt.dispatch(kernel, heaps, params, codegen.groups_for(count, WG))
    return grad_input
