"""PyTorch's inference fast paths of nn.TransformerEncoderLayer / nn.TransformerEncoder and
nn.MultiheadAttention, on the wgpu device.

In eval mode without gradients, PyTorch sends a whole encoder layer to aten._transformer_encoder_layer_fwd
and an attention block to aten._native_multi_head_attention for any PrivateUse1 device
(torch/nn/modules/transformer.py, activation.py). Neither op has a decomposition, so every such call ran on
the CPU. An encoder given a key padding mask first packs its input into a nested tensor, which this device
cannot hold, and the call failed.

Here both ops are composed from the device's own ops, following ATen's CPU kernels
(native/transformers/transformer.cpp, attention.cpp):
- the projections are the weights' row blocks;
- q is scaled by 1/sqrt(head dim) after its bias;
- the mask is read as ATen reads it: converted to bool, True = masked out. mask_type 0 is (L, S), 1 is a
  (B, S) key padding mask, 2 is (B, H, L, S) or broadcastable to it;
- a fully masked row's weights are NaN, as the CPU's are.

An encoder given a key padding mask packs its batch into a nested tensor (aten._nested_tensor_from_mask),
runs the layers on the valid tokens only, and unpacks with zeros (to_padded_tensor). Nested tensors have
no storage on this device, so the packing is kept padded: the batch with its padded positions zeroed,
carrying its valid-token mask as an attribute. Each layer reads that mask as its key padding mask and
zeroes the padded positions of its output (a nested layer computes nothing there), and to_padded_tensor
fills them with the padding value. The result is the CPU's, padded positions included.
"""
from __future__ import annotations

import math

import torch

from navitrain.wgpu.dispatch import implements
from navitrain.wgpu.tensor import to_cpu

aten = torch.ops.aten
F = torch.nn.functional


def _masked_softmax(scores, mask, mask_type):
    """softmax over the last dim of (B, H, L, S) scores with ATen's mask rules (see the module doc)."""
    if mask is None:
        return torch.softmax(scores, -1)
    masked = mask if mask.dtype == torch.bool else mask != 0
    B, H, L, S = scores.shape
    if mask_type == 1:
        masked = masked.view(B, 1, 1, S)
    elif masked.dim() == 2:
        masked = masked.view(1, 1, L, S)
    elif masked.dim() == 3:
        masked = masked.view(B, -1, L, S)
    return torch.softmax(scores.masked_fill(masked, float("-inf")), -1)   # a fully masked row: NaN, as ATen's


@implements(aten._native_multi_head_attention.default)
def native_multi_head_attention(query, key, value, embed_dim, num_head, qkv_weight, qkv_bias, proj_weight,
                                proj_bias, mask=None, need_weights=True, average_attn_weights=True,
                                mask_type=None):
    B, L, E = query.shape
    S = key.shape[1]
    D = embed_dim // num_head
    if query is key and key is value:   # self-attention: one product for q, k and v
        q, k, v = F.linear(query, qkv_weight, qkv_bias).split(embed_dim, -1)
    else:
        weights, biases = qkv_weight.split(embed_dim), qkv_bias.split(embed_dim)
        q, k, v = (F.linear(t, w, b) for t, w, b in zip((query, key, value), weights, biases))
    q = q.reshape(B, L, num_head, D).transpose(1, 2) / math.sqrt(D)
    k = k.reshape(B, S, num_head, D).transpose(1, 2)
    v = v.reshape(B, S, num_head, D).transpose(1, 2)
    weights = _masked_softmax(torch.matmul(q, k.transpose(-2, -1)), mask, mask_type)
    context = torch.matmul(weights, v).transpose(1, 2).reshape(B, L, E)
    out = F.linear(context, proj_weight, proj_bias)
    if not need_weights:
        return out, query.new_empty(0)
    return out, weights.sum(1) / num_head if average_attn_weights else weights


# The attribute of a "packed" batch (see the module doc): its valid-token mask, (B, S) bool, True = a token.
_VALID = "_navitrain_valid_tokens"


def _fill_padding(x, valid, value):
    """x with the positions `valid` marks as padding set to `value`."""
    return x.masked_fill(valid.logical_not().unsqueeze(-1), value)


def _packed(x, valid):
    """x with its padded positions zeroed, carrying `valid` (what a nested tensor's unpacking would give)."""
    out = _fill_padding(x, valid, 0.0)
    setattr(out, _VALID, valid)
    return out


@implements(aten._transformer_encoder_layer_fwd.default)
def transformer_encoder_layer_fwd(src, embed_dim, num_heads, qkv_weight, qkv_bias, proj_weight, proj_bias,
                                  use_gelu, norm_first, eps, norm_weight_1, norm_bias_1, norm_weight_2,
                                  norm_bias_2, ffn_weight_1, ffn_bias_1, ffn_weight_2, ffn_bias_2, mask=None,
                                  mask_type=None):
    valid = getattr(src, _VALID, None)
    if valid is not None and mask is None:   # a packed batch: its padding is the key padding mask
        out = transformer_encoder_layer_fwd(
            src, embed_dim, num_heads, qkv_weight, qkv_bias, proj_weight, proj_bias, use_gelu, norm_first, eps,
            norm_weight_1, norm_bias_1, norm_weight_2, norm_bias_2, ffn_weight_1, ffn_bias_1, ffn_weight_2,
            ffn_bias_2, valid.logical_not(), 1)
        return _packed(out, valid)

    def norm(x, weight, bias):
        return F.layer_norm(x, (embed_dim,), weight, bias, eps)

    x = norm(src, norm_weight_1, norm_bias_1) if norm_first else src
    x = native_multi_head_attention(x, x, x, embed_dim, num_heads, qkv_weight, qkv_bias, proj_weight, proj_bias,
                                    mask, False, True, mask_type)[0] + src
    if not norm_first:
        x = norm(x, norm_weight_1, norm_bias_1)
    residual = x
    if norm_first:
        x = norm(x, norm_weight_2, norm_bias_2)
    hidden = F.linear(x, ffn_weight_1, ffn_bias_1)
    x = F.linear(F.gelu(hidden) if use_gelu else F.relu(hidden), ffn_weight_2, ffn_bias_2) + residual
    return x if norm_first else norm(x, norm_weight_2, norm_bias_2)


@implements(aten._nested_tensor_from_mask_left_aligned.default)
def nested_tensor_from_mask_left_aligned(t, mask):
    """Whether every row of `mask` (True = a token) is a run of tokens and then padding only."""
    if mask.shape[-1] < 2:
        return True
    return not bool(to_cpu((mask[..., 1:] & mask[..., :-1].logical_not()).any()).item())


@implements(aten._nested_tensor_from_mask.default)
def nested_tensor_from_mask(t, mask, mask_check=True):
    if mask_check and not nested_tensor_from_mask_left_aligned(t, mask):
        raise RuntimeError("Mask must be left-aligned without gaps")   # ATen's words
    return _packed(t, mask)


@implements(aten.to_padded_tensor.default)
def to_padded_tensor(t, padding, output_size=None):
    valid = getattr(t, _VALID, None)
    if valid is None:
        raise RuntimeError("to_padded_tensor: expected a nested tensor (only an encoder's packed batch is one here)")
    if output_size is not None and list(output_size) != list(t.shape):
        raise NotImplementedError("to_padded_tensor with an output size other than the packed batch's on wgpu")
    return _fill_padding(t, valid, padding)
