"""Matrix products fused with the elementwise ops after them (navitrain.wgpu.fusion_gemm, issue 19): the
GEMM kernel's tail (kernels/gemm_operands.Tail) against the CPU, in one pass and split over K, batched,
with a bias, broadcast and bool inputs, NaN and +-inf, a kept product; and compiled transformer blocks
(residual add, GELU and its gradient, attention mask and scale) against the same graphs unfused, eager
wgpu and the CPU; the unfused path the fused module takes for a layout other than the traced one."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import navitrain.wgpu.compile as wc
from navitrain.wgpu import fusion, fusion_gemm
from navitrain.wgpu.kernels import gemm
from navitrain.wgpu.kernels.activation_exprs import GELU_ERF
from navitrain.wgpu.tensor import empty
from tests.wgpu.fusion_checks import assert_matches_unfused_eager_and_cpu, train_steps

aten = torch.ops.aten


def _randn(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _over(t: torch.Tensor) -> tuple:
    """(row, col, batch) strides of a tensor shaped as the product."""
    s = t.stride()
    return (s[-2], s[-1], s[0] if t.dim() == 3 else 0)


GELU_TAIL = GELU_ERF.format(a="gemm_v")


@pytest.mark.parametrize("M, N, K, batch, config", [
    (37, 29, 50, 0, None),                                        # guarded edges
    (64, 64, 64, 0, None),                                        # whole tiles, vec4 loads and stores
    (16, 64, 2048, 0, gemm.TileConfig(32, 32, 8, 4, 4, splits=4)),  # split over K: the tail in the summing pass
    (5, 33, 17, 3, None),                                         # batched
])
def test_tail_computes_the_chain_of_the_product_as_the_cpu(M, N, K, batch, config):
    lead = (batch,) if batch else ()
    a, b = _randn(*lead, M, K, seed=1), _randn(*lead, K, N, seed=2)
    res, col = _randn(*lead, M, N, seed=3), _randn(N, seed=4)
    res.view(-1)[3] = float("nan")
    res.view(-1)[5] = float("inf")
    # (product + col) * res, then GELU of that: two inputs, a `let`, a broadcast over rows and batches.
    tail = gemm.Tail("gemm_v", ("in_b", "in_c"), ("f32", "f32"), "  let v0 = (gemm_v + in_c) * in_b;",
                     GELU_ERF.format(a="v0"))
    out = empty(list(res.shape), torch.float32)
    gemm.gemm(a.to("wgpu"), b.to("wgpu"), out, config=config, tail=tail,
              tail_inputs=((res.to("wgpu"), _over(res)), (col.to("wgpu"), (0, 1, 0))))
    # GELU in float32 on the CPU: its gelu(inf) is NaN (the kernels follow it), float64's is inf.
    expected = F.gelu((((a.double() @ b.double()) + col.double()) * res.double()).float())
    assert torch.equal(torch.isnan(out.cpu()), torch.isnan(expected))
    torch.testing.assert_close(out.cpu(), expected, rtol=1e-4, atol=1e-4, equal_nan=True)


@pytest.mark.parametrize("config", [None, gemm.TileConfig(32, 32, 8, 4, 4, splits=4)])
def test_tail_with_a_bias_three_inputs_a_bool_and_a_kept_product(config):
    M, N, K = 24, 40, 1024
    a, b, bias = _randn(M, K, seed=5), _randn(K, N, seed=6), _randn(N, seed=7)
    x, y = _randn(M, N, seed=8), _randn(M, 1, seed=9).expand(M, N)
    keep = _randn(M, N, seed=10) > 0
    # where(keep, product * x, y) + product: three inputs (one bool, one broadcast along columns).
    tail = gemm.Tail("gemm_v", ("in_b", "in_c", "in_d"), ("f32", "f32", "bool"),
                     "  let v0 = select(in_c, gemm_v * in_b, in_d);", "v0 + gemm_v", keep_product=True)
    dev = [t.to("wgpu") for t in (a, b, bias, x, keep)]
    yd = y.contiguous()[:, :1].to("wgpu").expand(M, N)
    out, kept = empty([M, N], torch.float32), empty([M, N], torch.float32)
    gemm.gemm(dev[0], dev[1], out, 0.5, 2.0, dev[2], cin_strides=(0, 1, 0), config=config, tail=tail,
              tail_inputs=((dev[3], _over(dev[3])), (yd, _over(yd)), (dev[4], _over(dev[4]))), kept=kept)
    product = 0.5 * (a.double() @ b.double()) + 2.0 * bias.double()
    expected = torch.where(keep, product * x, y) + product
    torch.testing.assert_close(kept.cpu(), product.float(), rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(out.cpu(), expected.float(), rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("config", [None, gemm.TileConfig(32, 32, 8, 4, 4, splits=4)])
def test_tail_stores_a_batch_split_in_two(config):
    # attn @ v of [batch * heads, tokens, features] stored as [batch, tokens, heads, features] (the head merge).
    batch, heads, T, K, D = 3, 2, 9, 520, 8
    a, b = _randn(batch * heads, T, K, seed=20), _randn(batch * heads, K, D, seed=21)
    merged = torch.full((batch, T, heads, D), float("nan"))
    out = merged.to("wgpu")
    product = out.as_strided((batch * heads, T, D), (T * heads * D, heads * D, 1))   # outer batch stride only
    tail = gemm.Tail("gemm_v", (), (), "", "gemm_v * 2.0")
    gemm.gemm(a.to("wgpu"), b.to("wgpu"), product, config=config, tail=tail, out_batch_lo=(heads, D))
    expected = ((a.double() @ b.double()) * 2).view(batch, heads, T, D).transpose(1, 2).float()
    torch.testing.assert_close(out.cpu(), expected, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="tail"):
        gemm.gemm(a.to("wgpu"), b.to("wgpu"), product, out_batch_lo=(heads, D))


def test_tail_rounds_a_narrow_product_as_the_unfused_store_would():
    a, b = _randn(20, 30, seed=11).to(torch.bfloat16), _randn(30, 12, seed=12).to(torch.bfloat16)
    tail = gemm.Tail("gemm_v", (), (), "", "gemm_v * 3.0", torch.bfloat16)
    out = empty([20, 12], torch.bfloat16)
    gemm.gemm(a.to("wgpu"), b.to("wgpu"), out, tail=tail)
    unfused = (a.to("wgpu") @ b.to("wgpu")) * 3.0
    assert torch.equal(out.cpu(), unfused.cpu())


def test_a_tail_refuses_what_it_cannot_read():
    a, b, out = empty([4, 4], torch.float32), empty([4, 4], torch.float32), empty([4, 4], torch.float32)
    four = tuple((a, (4, 1, 0)) for _ in range(4))
    tail = gemm.Tail("gemm_v", ("in_b", "in_c", "in_d", "in_e"), ("f32",) * 4, "", "gemm_v")
    with pytest.raises(ValueError, match="at most 3"):
        gemm.gemm(a, b, out, tail=tail, tail_inputs=four)
    with pytest.raises(ValueError, match="kept"):
        gemm.gemm(a, b, out, tail=gemm.Tail("gemm_v", (), (), "", "gemm_v", keep_product=True))


class Block(nn.Module):
    """A pre-norm transformer block with a hand-written masked attention: scores + mask (bmm -> add),
    the residual adds after both projections (addmm -> view -> add), GELU of fc1 (its input kept for the
    backward) and GELU's gradient of fc2's input gradient (mm -> view -> gelu_backward)."""

    def __init__(self, d=16, heads=2):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.fc1, self.fc2 = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x):
        B, T, D = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(D, dim=2)
        q, k, v = (t.view(B, T, self.heads, -1).transpose(1, 2) for t in (q, k, v))
        mask = torch.triu(torch.full((T, T), float("-inf"), device=x.device), diagonal=1)
        att = torch.softmax(q @ k.transpose(-2, -1) / (D // self.heads) ** 0.5 + mask, dim=-1)
        x = x + self.proj((att @ v).transpose(1, 2).reshape(B, T, D))
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


def _encoder():
    """nn.TransformerEncoderLayer, sequence first: its projections are viewed as [tokens, batch, features]
    and transposed before the residual adds; its attention's output is permuted and copied contiguous."""
    return nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0), 2, enable_nested_tensor=False)


@pytest.mark.usefixtures("fresh_compile_state")
@pytest.mark.parametrize("make_model, special", [(Block, False), (Block, True), (_encoder, False)])
def test_compiled_transformer_block_with_fused_products_matches_unfused_eager_and_cpu(make_model, special):
    torch.manual_seed(12)
    model = make_model()
    x = _randn(2, 6, 16, seed=13)
    if special:   # in the first sequence only: attention spreads them over its rows, the second stays finite
        x[0, 5, 3] = float("nan")
        x[0, 2, 0] = float("inf")
    cpu = train_steps(model, x, "cpu", compiled=False)
    eager = train_steps(model, x, "wgpu", compiled=False)
    fused = train_steps(model, x, "wgpu", compiled=True)
    # forward: scores + mask, two residual adds, GELU keeping its input; backward: GELU's gradient and
    # at least the scale of a score gradient
    assert wc.stats["gemm_epilogues"] >= 5 and wc.stats["backward_replays"] >= 1
    torch._dynamo.reset()
    unfused = train_steps(model, x, "wgpu", compiled=True, fuse=False)
    assert fused[3] < unfused[3]
    if special:
        out = fused[0]
        assert torch.isnan(out).any() and not torch.isnan(out).all()
        assert torch.equal(torch.isnan(out), torch.isnan(cpu[0]))
    assert_matches_unfused_eager_and_cpu(fused, unfused, eager, cpu)


@pytest.mark.usefixtures("fresh_compile_state")
def test_only_the_gemm_pass_left_out_gives_the_same_values_with_more_dispatches(monkeypatch):
    torch.manual_seed(14)
    model, x = Block(), _randn(2, 5, 16, seed=15)
    out, grads, _, fused = train_steps(model, x, "wgpu", compiled=True)
    assert wc.stats["gemm_epilogues"] >= 5
    torch._dynamo.reset()
    wc.reset_stats()
    monkeypatch.setattr(wc._env, "value", lambda var, _orig=wc._env.value:
                        frozenset({"gemm"}) if var is wc._env.WGPU_FUSION_OFF else _orig(var))
    out_off, grads_off, _, unfused = train_steps(model, x, "wgpu", compiled=True)
    assert wc.stats["gemm_epilogues"] == 0 and fused < unfused
    torch.testing.assert_close(out, out_off, rtol=1e-5, atol=1e-5)
    for name in grads:
        torch.testing.assert_close(grads[name], grads_off[name], rtol=1e-4, atol=1e-5, msg=name)


def test_fused_gemm_takes_the_unfused_ops_for_a_layout_other_than_the_traced_one():
    a, w, bias = _randn(6, 8, seed=16).to("wgpu"), _randn(5, 8, seed=17).to("wgpu"), _randn(5, seed=18).to("wgpu")
    res = _randn(2, 3, 5, seed=19)
    chain = fusion.FusedPointwise("fused_add", "a + b", "", ("f32", "f32"), torch.float32, (2, 3, 5), (15, 5, 1),
                                  ("add",))
    tail = gemm.Tail("gemm_v", ("in_b",), ("f32",), "", "gemm_v + in_b")
    module = fusion_gemm.FusedGemm(aten.addmm.default, 1.0, 1.0, tail, (6, 5), (5, 1),
                                   (((2, 3, 5), (15, 5, 1), (5, 1, 0)),), chain, ((2, 3, 5), (15, 5, 1)))
    expected = (a.cpu() @ w.cpu().t() + bias.cpu()).view(2, 3, 5) + res
    fused = module(a, w.t(), bias, res.to("wgpu"))
    strided = res.transpose(0, 1).contiguous().transpose(0, 1)       # same values, another layout
    unfused = module(a, w.t(), bias, strided.to("wgpu"))
    torch.testing.assert_close(fused.cpu(), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(unfused.cpu(), expected, rtol=1e-5, atol=1e-5)
    assert tuple(fused.stride()) == (15, 5, 1) and tuple(unfused.stride()) == (15, 5, 1)


@pytest.mark.usefixtures("fresh_compile_state")
def test_scaled_addmm_a_bool_mask_and_a_bmm_chain_compile_as_eagerly():
    def f(b, x, w, r, mask):
        y = torch.addmm(b, x, w, beta=0.5, alpha=2.0) + r                 # addmm's scales, a residual
        z = torch.where(mask, y, float("-inf")).softmax(-1)              # a bool input of the chain
        return z, torch.bmm(x.view(2, 3, 8), w.view(2, 4, 8).repeat(1, 2, 1).transpose(1, 2)) * 0.5 - r.view(2, 3, 8)

    b, x, w, r = _randn(8, seed=30), _randn(6, 8, seed=31), _randn(8, 8, seed=32), _randn(6, 8, seed=33)
    mask = _randn(6, 8, seed=34) > 0
    mask[:, 0] = True
    x[2, 3] = float("nan")
    expected = f(b, x, w, r, mask)
    compiled = torch.compile(f, backend="wgpu")
    for _ in range(3):   # eager, captured, replayed
        got = compiled(*(t.to("wgpu") for t in (b, x, w, r, mask)))
    assert wc.stats["gemm_epilogues"] == 2 and wc.stats["inference_replays"] >= 1
    for a, e in zip(got, expected):
        assert torch.isnan(e).any()
        torch.testing.assert_close(a.cpu(), e, rtol=1e-5, atol=1e-5, equal_nan=True)
