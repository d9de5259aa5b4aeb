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


@pytest.mark.parametrize("case", ["causal_short_query", "causal_long_query", "transposed_views", "scale", "3d",
                                  "only_v_grad"])
def test_sdpa_fast_path_matches_cpu(case):
    """navitrain's own attention node (float32, no mask or is_causal, no dropout) against the CPU's math."""
    shapes = {"causal_short_query": ((2, 2, 5, 8), (2, 2, 9, 8), (2, 2, 9, 6)),
              "causal_long_query": ((1, 3, 11, 4), (1, 3, 6, 4), (1, 3, 6, 4)),
              "3d": ((4, 7, 8), (4, 9, 8), (4, 9, 8))}.get(case, ((2, 3, 7, 8), (2, 3, 9, 8), (2, 3, 9, 8)))
    kwargs = {"is_causal": case.startswith("causal")}
    if case == "scale":
        kwargs["scale"] = 0.37
    (q, k, v), (dq, dk, dv) = _pair(*shapes, seed=11)
    leaves = (q, k, v), (dq, dk, dv)
    if case == "transposed_views":  # GPT's layout: (batch, length, heads, dim) viewed as (batch, heads, ...)
        leaves = _pair((2, 7, 3, 8), (2, 9, 3, 8), (2, 9, 3, 8), seed=12)
        (q, k, v), (dq, dk, dv) = ([t.transpose(1, 2) for t in ts] for ts in leaves)
        kwargs["is_causal"] = True
    if case == "only_v_grad":
        for t in (q, k, dq, dk):
            t.requires_grad_(False)
    ref = F.scaled_dot_product_attention(q, k, v, **kwargs)
    out = F.scaled_dot_product_attention(dq, dk, dv, **kwargs)
    assert type(out.grad_fn).__name__ == "_AttentionBackward"  # one node, not the math decomposition
    torch.testing.assert_close(out.detach().cpu(), ref.detach(), rtol=1e-5, atol=1e-5)
    grad = torch.randn(ref.shape, generator=torch.Generator().manual_seed(13))
    ref.backward(grad)
    out.backward(grad.to("wgpu"))
    for a, b in zip(*leaves):
        assert (a.grad is None) == (b.grad is None)
        if a.grad is not None:
            torch.testing.assert_close(b.grad.cpu(), a.grad, rtol=1e-4, atol=1e-5)


def test_sdpa_transposed_views_reach_their_leaves():
    (q, k, v), (dq, dk, dv) = _pair((2, 7, 3, 8), (2, 7, 3, 8), (2, 7, 3, 8), seed=14)
    ref = F.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, k, v)), is_causal=True)
    out = F.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (dq, dk, dv)), is_causal=True)
    grad = torch.randn(ref.shape, generator=torch.Generator().manual_seed(15))
    ref.backward(grad)
    out.backward(grad.to("wgpu"))
    for a, b in ((q, dq), (k, dk), (v, dv)):
        torch.testing.assert_close(b.grad.cpu(), a.grad, rtol=1e-4, atol=1e-5)


def test_sdpa_inference_and_fallbacks_keep_working():
    (q, k, v), (dq, dk, dv) = _pair((2, 3, 7, 8), (2, 3, 7, 8), (2, 3, 7, 8), seed=16)
    with torch.no_grad():
        torch.testing.assert_close(F.scaled_dot_product_attention(dq, dk, dv).cpu(),
                                   F.scaled_dot_product_attention(q, k, v), rtol=1e-5, atol=1e-5)
    # An explicit mask is not on the fast path: PyTorch's math path, still on the device
    mask = torch.randn(7, 7, generator=torch.Generator().manual_seed(17))
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    out = F.scaled_dot_product_attention(dq, dk, dv, attn_mask=mask.to("wgpu"))
    assert out.grad_fn is not None and type(out.grad_fn).__name__ != "_AttentionBackward"
    torch.testing.assert_close(out.detach().cpu(), ref.detach(), rtol=1e-5, atol=1e-5)
