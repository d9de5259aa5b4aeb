"""The inference fast paths of nn.TransformerEncoderLayer / nn.TransformerEncoder / nn.MultiheadAttention
(ops/transformer_fastpath.py): aten._native_multi_head_attention and aten._transformer_encoder_layer_fwd
against the CPU's own kernels for the same arguments (self- and cross-attention, every mask type, bool and
float masks, a fully masked row, NaN and inf inputs, pre- and post-norm, ReLU and GELU), and the modules in
eval mode with no CPU fallback (the suite runs strict), including an encoder's packed (nested on the CPU) batch
of a key padding mask."""
import pytest
import torch
from torch import nn

import navitrain.wgpu  # noqa: F401

INF, NAN = float("inf"), float("nan")
B, L, E, H = 3, 6, 16, 4
S = L   # ATen's CPU kernel takes query, key and value of one shape


def _wgpu(args):
    return [a.to("wgpu") if isinstance(a, torch.Tensor) else a for a in args]


def _close(got, want):
    torch.testing.assert_close(got.cpu(), want, rtol=2e-5, atol=2e-5, equal_nan=True)


def _mask(kind, gen):
    """(mask, mask_type): ATen reads any mask as bool, True = masked out."""
    if kind == "none":
        return None, None
    if kind == "attn":      # (L, S), type 0
        return torch.rand(L, S, generator=gen) < 0.3, 0
    if kind == "padding":   # (B, S), type 1; batch row 2 entirely padded
        m = torch.rand(B, S, generator=gen) < 0.3
        m[2] = True
        return m, 1
    # (B, H, L, S) float, 0 / -inf, type 2 (what merge_masks gives for an attn mask with a padding mask)
    return torch.where(torch.rand(B, H, L, S, generator=gen) < 0.3, -INF, 0.0), 2


@pytest.mark.parametrize("mask_kind", ["none", "attn", "padding", "merged"])
@pytest.mark.parametrize("self_attention", [True, False])
@pytest.mark.parametrize("need_weights,average", [(False, True), (True, True), (True, False)])
def test_native_multi_head_attention_matches_the_cpu(mask_kind, self_attention, need_weights, average):
    gen = torch.Generator().manual_seed(hash((mask_kind, self_attention, need_weights, average)) % 2**31)
    query = torch.randn(B, L, E, generator=gen)
    query[0, 1, 3], query[1, 0, 0] = NAN, INF
    if self_attention:
        key = value = query
    else:
        key, value = torch.randn(B, S, E, generator=gen), torch.randn(B, S, E, generator=gen)
    mask, mask_type = _mask(mask_kind, gen)
    weights = [torch.randn(3 * E, E, generator=gen) * 0.3, torch.randn(3 * E, generator=gen),
               torch.randn(E, E, generator=gen) * 0.3, torch.randn(E, generator=gen)]
    args = [query, key, value, E, H, *weights, mask, need_weights, average, mask_type]
    want = torch._native_multi_head_attention(*args)
    wargs = _wgpu(args)
    if self_attention:
        wargs[1] = wargs[2] = wargs[0]   # the same tensor object, as the module passes it
    got = torch._native_multi_head_attention(*wargs)
    _close(got[0], want[0])
    if need_weights:
        _close(got[1], want[1])


@pytest.mark.parametrize("mask_kind", ["none", "padding", "merged"])
@pytest.mark.parametrize("norm_first,use_gelu", [(False, False), (True, True), (False, True)])
def test_encoder_layer_matches_the_cpu(mask_kind, norm_first, use_gelu):
    gen = torch.Generator().manual_seed(7 + 3 * norm_first + use_gelu)
    src = torch.randn(B, S, E, generator=gen)
    mask, mask_type = _mask(mask_kind, gen)
    if mask is not None and mask.dtype == torch.bool:
        mask = torch.where(mask, -INF, 0.0)   # the layer's canonical float mask
    ff = 32
    params = [torch.randn(3 * E, E, generator=gen) * 0.3, torch.randn(3 * E, generator=gen),
              torch.randn(E, E, generator=gen) * 0.3, torch.randn(E, generator=gen)]
    norms = [1 + 0.1 * torch.randn(E, generator=gen), 0.1 * torch.randn(E, generator=gen),
             1 + 0.1 * torch.randn(E, generator=gen), 0.1 * torch.randn(E, generator=gen)]
    ffn = [torch.randn(ff, E, generator=gen) * 0.3, torch.randn(ff, generator=gen),
           torch.randn(E, ff, generator=gen) * 0.3, torch.randn(E, generator=gen)]
    args = [src, E, H, *params, use_gelu, norm_first, 1e-5, *norms, *ffn, mask, mask_type]
    want = torch._transformer_encoder_layer_fwd(*args)
    got = torch._transformer_encoder_layer_fwd(*_wgpu(args))
    _close(got, want)


@pytest.mark.parametrize("nested", [True, False])
@pytest.mark.parametrize("left_aligned", [True, False])
def test_encoder_modules_in_eval_mode(nested, left_aligned):
    """The modules in eval mode: an encoder with a key padding mask packs a left-aligned batch (the CPU's
    nested route: 0 at padded positions, then the final norm) and runs any other with the mask; on wgpu the
    same values come back, padded positions included."""
    torch.manual_seed(3)
    enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(E, H, 32, 0.0, batch_first=True), 2,
                                norm=nn.LayerNorm(E), enable_nested_tensor=nested).eval()
    with torch.no_grad():
        enc.norm.bias.uniform_(-1, 1)   # padded positions then come out of the final norm non-zero
    mha = nn.MultiheadAttention(E, H, batch_first=True).eval()
    x = torch.randn(B, S, E)
    pad = torch.zeros(B, S, dtype=torch.bool)
    pad[1, 4:], pad[2, 2:] = True, True
    if not left_aligned:
        pad[0, 0] = True   # a gap before the tokens: PyTorch does not pack this batch
    with torch.no_grad():
        want_plain, want_padded = enc(x), enc(x, src_key_padding_mask=pad)
        want_mha = mha(x, x, x, key_padding_mask=pad)
        enc, mha = enc.to("wgpu"), mha.to("wgpu")
        xw, padw = x.to("wgpu"), pad.to("wgpu")
        got_plain, got_padded = enc(xw), enc(xw, src_key_padding_mask=padw)
        got_mha = mha(xw, xw, xw, key_padding_mask=padw)
    _close(got_plain, want_plain)
    _close(got_padded, want_padded)
    _close(got_mha[0], want_mha[0])
    _close(got_mha[1], want_mha[1])


def test_packed_batch_ops_refuse_what_the_cpu_refuses():
    x = torch.randn(2, 4, E).to("wgpu")
    with pytest.raises(RuntimeError, match="nested tensor"):
        torch.ops.aten.to_padded_tensor.default(x, 0.0)
    gap = torch.tensor([[True, False, True, True], [True, True, False, False]]).to("wgpu")
    assert not torch._nested_tensor_from_mask_left_aligned(x, gap)
    assert torch._nested_tensor_from_mask_left_aligned(x, gap.sort(dim=1, descending=True).values)
    with pytest.raises(RuntimeError, match="left-aligned"):
        torch._nested_tensor_from_mask(x, gap)
