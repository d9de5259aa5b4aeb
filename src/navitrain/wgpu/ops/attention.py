"""scaled_dot_product_attention as one autograd node with its own backward.

Without this, PyTorch runs its math decomposition for a PrivateUse1 device: scaling q and k, building
the causal mask (ones, tril, where), expands and reshapes around two bmms, softmax, and the autograd
of all of it: about 35 aten ops per attention call forward and backward, each paying the host cost of
a Python-dispatched op. Here the call is registered at the AutogradPrivateUse1 key and computed
straight from navitrain's kernels:

    forward:  S = scale * Q K^T (the scale is the GEMM's alpha), P = softmax(causal(S)) in one row
              kernel, O = P V
    backward: dV = P^T dO, dP = dO V^T, dS = P * (dP - rowsum(dP * P)), dQ = scale * dS K,
              dK = scale * dS^T Q

P is kept for backward, as the math path keeps its attention weights. Masks other than is_causal,
dropout, grouped-query attention and dtypes other than float32 go to PyTorch's math path unchanged.
"""
from __future__ import annotations

import math

import torch

from navitrain.wgpu.kernels import gemm, rows
from navitrain.wgpu.ops.softmax import _MAX, _SUMEXP, softmax, softmax_backward
from navitrain.wgpu.ops.views import view_of
from navitrain.wgpu.tensor import WgpuTensor, contiguous_strides, empty

aten = torch.ops.aten

# softmax's row passes, with keys a query may not see left out: row r of S is query (r % L), and key
# j is visible to it when j <= r % L (torch's is_causal: tril(L, S)).
_VISIBLE = "(j <= row % u32(extra_0))"
_CAUSAL_PASSES = [
    (_MAX[0], f"acc = fmax_nan(acc, select({_MAX[0]}, X0(j), {_VISIBLE}));", _MAX[2]),
    (_SUMEXP[0], f"acc = acc + select(0.0, exp(X0(j) - r0), {_VISIBLE});", _SUMEXP[2]),
]
_CAUSAL_WRITE = f"Y0(j, select(0.0, exp(X0(j) - r0) / r1, {_VISIBLE}));"


def _batched(x: WgpuTensor) -> WgpuTensor:
    """x as a contiguous [batch, rows, cols] tensor (a view when x is contiguous already)."""
    if not x.is_contiguous():
        x = aten.clone.default(x, memory_format=torch.contiguous_format)
    batch = math.prod(x.shape[:-2])
    return view_of(x, [batch, x.shape[-2], x.shape[-1]], [x.shape[-2] * x.shape[-1], x.shape[-1], 1])


def _t(x: WgpuTensor) -> WgpuTensor:
    """The transpose of the last two dims of a [batch, rows, cols] tensor (a view)."""
    b, r, c = x.shape
    s = x.stride()
    return view_of(x, [b, c, r], [s[0], s[2], s[1]])


def _mm(a: WgpuTensor, b: WgpuTensor, alpha: float = 1.0) -> WgpuTensor:
    out = empty([a.shape[0], a.shape[1], b.shape[2]], a.dtype)
    return gemm.gemm(a, b, out, alpha=alpha)


class _Attention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, is_causal: bool, scale: float):
        out_shape = list(q.shape[:-1]) + [v.shape[-1]]
        q3, k3, v3 = _batched(q), _batched(k), _batched(v)
        s = _mm(q3, _t(k3), alpha=scale)
        if is_causal:
            p = empty(s.shape, s.dtype)
            rows.launch("attention_causal_softmax", None, [s], [p], _CAUSAL_PASSES, _CAUSAL_WRITE, 2,
                        [float(q.shape[-2])])
        else:
            p = softmax(s, 2, False)
        o = _mm(p, v3)
        ctx.save_for_backward(q3, k3, v3, p)
        ctx.scale = scale
        ctx.shapes = (q.shape, k.shape, v.shape)
        return view_of(o, out_shape, contiguous_strides(out_shape))

    @staticmethod
    def backward(ctx, grad_out):
        q3, k3, v3, p = ctx.saved_tensors
        q_shape, k_shape, v_shape = ctx.shapes
        do = _batched(grad_out)
        dq = dk = dv = None
        if ctx.needs_input_grad[2]:
            dv = _mm(_t(p), do)
        if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
            dp = _mm(do, _t(v3))
            ds = softmax_backward(dp, p, 2, p.dtype)  # P * (dP - rowsum(dP * P)); zero where masked
            if ctx.needs_input_grad[0]:
                dq = _mm(ds, k3, alpha=ctx.scale)
            if ctx.needs_input_grad[1]:
                dk = _mm(_t(ds), q3, alpha=ctx.scale)
        return (None if dq is None else view_of(dq, list(q_shape), contiguous_strides(q_shape)),
                None if dk is None else view_of(dk, list(k_shape), contiguous_strides(k_shape)),
                None if dv is None else view_of(dv, list(v_shape), contiguous_strides(v_shape)),
                None, None)


def _takes_fast_path(q, k, v, attn_mask, dropout_p, enable_gqa) -> bool:
    return (attn_mask is None and dropout_p == 0.0 and not enable_gqa
            and all(isinstance(t, WgpuTensor) and t.dtype == torch.float32 for t in (q, k, v))
            and q.dim() >= 3 and q.dim() == k.dim() == v.dim()
            and q.shape[:-2] == k.shape[:-2] == v.shape[:-2] and q.shape[-1] == k.shape[-1]
            and k.shape[-2] == v.shape[-2] and min(q.shape[-2], k.shape[-2], q.shape[-1], v.shape[-1]) > 0)


def scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                                 enable_gqa=False):
    if not _takes_fast_path(query, key, value, attn_mask, dropout_p, enable_gqa):
        if attn_mask is not None and attn_mask.dtype == torch.bool:
            # What PyTorch's own entry point does before its math path: True keeps, False masks out.
            attn_mask = torch.zeros_like(attn_mask, dtype=query.dtype).masked_fill_(attn_mask.logical_not(),
                                                                                      float("-inf"))
        return aten._scaled_dot_product_attention_math.default(
            query, key, value, attn_mask, dropout_p, is_causal, None, scale=scale, enable_gqa=enable_gqa)[0]
    scale = 1.0 / math.sqrt(query.shape[-1]) if scale is None else float(scale)
    return _Attention.apply(query, key, value, bool(is_causal), scale)


_lib = torch.library.Library("aten", "IMPL")
_lib.impl("scaled_dot_product_attention", scaled_dot_product_attention, "AutogradPrivateUse1")
