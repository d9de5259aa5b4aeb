"""Attention on wgpu against the CPU: scaled_dot_product_attention (masks, causal, dropout off),
MultiheadAttention and TransformerEncoderLayer in training mode, forward and backward."""
import copy

import pytest
import torch
import torch.nn.functional as F

import navitrain.wgpu as nw


def _pair(*shapes, seed=0):
    g = torch.Generator().manual_seed(seed)
    cpu = [torch.randn(s, generator=g, requires_grad=True) for s in shapes]
    dev = [t.detach().to("wgpu").requires_grad_() for t in cpu]
    return cpu, dev


@pytest.mark.parametrize("mask", ["none", "causal", "bool", "float"])
def test_sdpa_matches_cpu(mask):
    (q, k, v), (dq, dk, dv) = _pair((2, 3, 7, 8), (2, 3, 9, 8), (2, 3, 9, 8))
    kwargs, dkwargs = {}, {}
    if mask == "causal":
        (q, k, v), (dq, dk, dv) = _pair((2, 3, 9, 8), (2, 3, 9, 8), (2, 3, 9, 8))
        kwargs = dkwargs = {"is_causal": True}
    elif mask == "bool":
        m = torch.rand(7, 9, generator=torch.Generator().manual_seed(3)) > 0.3
        m[:, 0] = True
        kwargs, dkwargs = {"attn_mask": m}, {"attn_mask": m.to("wgpu")}
    elif mask == "float":
        m = torch.randn(2, 1, 7, 9, generator=torch.Generator().manual_seed(4))
        kwargs, dkwargs = {"attn_mask": m}, {"attn_mask": m.to("wgpu")}
    ref = F.scaled_dot_product_attention(q, k, v, **kwargs)
    out = F.scaled_dot_product_attention(dq, dk, dv, **dkwargs)
    torch.testing.assert_close(out.detach().cpu(), ref.detach(), rtol=1e-5, atol=1e-5)
    grad = torch.randn(ref.shape, generator=torch.Generator().manual_seed(5))
    ref.backward(grad)
    out.backward(grad.to("wgpu"))
    for a, b in ((q, dq), (k, dk), (v, dv)):
        torch.testing.assert_close(b.grad.cpu(), a.grad, rtol=1e-4, atol=1e-5)


def _compare_module(module, inputs, rtol=1e-4):
    torch.manual_seed(0)
    cpu = module
    dev = copy.deepcopy(module).to("wgpu")
    cpu.train()
    dev.train()
    ref = cpu(*inputs)
    out = dev(*[t.to("wgpu") for t in inputs])
    ref = ref[0] if isinstance(ref, tuple) else ref
    out = out[0] if isinstance(out, tuple) else out
    torch.testing.assert_close(out.detach().cpu(), ref.detach(), rtol=rtol, atol=rtol)
    ref.sum().backward()
    out.sum().backward()
    for (name, p), q in zip(cpu.named_parameters(), dev.parameters()):
        torch.testing.assert_close(q.grad.cpu(), p.grad, rtol=rtol * 10, atol=rtol * 10, msg=lambda m: f"{name}: {m}")


def test_multihead_attention_training_mode():
    nw.reset_fallback_counts()
    mha = torch.nn.MultiheadAttention(16, 4, batch_first=True, dropout=0.0)
    x = torch.randn(2, 5, 16, generator=torch.Generator().manual_seed(6))
    _compare_module(mha, (x, x, x))
    assert nw.fallback_report()["total_fallback_calls"] == 0


def test_transformer_encoder_layer_training_mode():
    nw.reset_fallback_counts()
    layer = torch.nn.TransformerEncoderLayer(16, 4, dim_feedforward=32, dropout=0.0, batch_first=True,
                                             activation="gelu")
    x = torch.randn(2, 6, 16, generator=torch.Generator().manual_seed(7))
    _compare_module(layer, (x,))
    assert nw.fallback_report()["total_fallback_calls"] == 0


def test_transformer_dropout_trains_and_differs_between_steps():
    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(16, 4, dim_feedforward=32, dropout=0.1, batch_first=True).to("wgpu")
    x = torch.randn(2, 6, 16).to("wgpu")
    a, b = layer(x), layer(x)
    assert not torch.equal(a.detach().cpu(), b.detach().cpu())
    a.sum().backward()


def test_fully_masked_rows_give_zeros_like_the_cpu():
    (q, k, v), (dq, dk, dv) = _pair((1, 2, 4, 8), (1, 2, 6, 8), (1, 2, 6, 8), seed=9)
    m = torch.ones(4, 6, dtype=torch.bool)
    m[2] = False  # row 2 attends to nothing
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=m)
    out = F.scaled_dot_product_attention(dq, dk, dv, attn_mask=m.to("wgpu"))
    torch.testing.assert_close(out.detach().cpu(), ref.detach(), rtol=1e-5, atol=1e-6, equal_nan=True)
