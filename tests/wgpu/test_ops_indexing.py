"""Indexing kernels against PyTorch on the CPU: OpInfo samples (outputs, gradients, non-contiguous
inputs) for gathers, scatters, accumulating scatters, advanced indexing, masked ops, nonzero and the
embedding; then what OpInfo misses: duplicate indices in every accumulating op (determinism, the CPU's
order of additions), embedding backward with padding_idx / scale_grad_by_freq / many tokens (multi-tile
key sort), channels_last and float16 inputs, x[idx] += v, bool-mask indexing, out-of-range indices
(NaN, not a crash), and the backward of max/min along a dim with zero CPU fallbacks."""
import pytest
import torch
import torch.nn.functional as F

import navitrain.wgpu as nw
from tests.wgpu import opinfo

F32, F16, I64 = torch.float32, torch.float16, torch.int64
DEV = "wgpu"


# (OpInfo name, variant, dtypes, extra keyword arguments for opinfo.check)
CASES = [
    ("index_select", "", [F32, I64, F16], {}),
    ("gather", "", [F32, I64], {}),
    ("take_along_dim", "", [F32], {}),
    ("scatter", "", [F32, torch.bool], {}),
    ("scatter_add", "", [F32, I64], {}),
    ("scatter_reduce", "sum", [F32], {}),
    ("scatter_reduce", "prod", [F32], {"rtol": 1e-4}),
    ("scatter_reduce", "mean", [F32, I64], {}),
    ("scatter_reduce", "amax", [F32], {}),
    ("scatter_reduce", "amin", [I64], {}),
    ("index_add", "", [F32, I64], {}),
    ("index_reduce", "mean", [F32], {}),
    ("index_copy", "", [F32], {}),
    ("index_fill", "", [F32, torch.bool], {}),
    ("index_put", "", [F32, I64], {}),
    ("__getitem__", "", [F32, I64], {}),
    ("masked_select", "", [F32, torch.bool], {}),
    ("masked_scatter", "", [F32], {}),
    ("nonzero", "", [F32, torch.bool], {}),
    ("take", "", [F32], {}),
    ("put", "", [F32], {}),
    ("nn.functional.embedding", "", [F32, F16], {}),
    ("nn.functional.one_hot", "", [I64], {}),
]


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("name,variant,dtypes,kw", CASES,
                         ids=[f"{c[0]}{'.' + c[1] if c[1] else ''}" for c in CASES])
def test_op_matches_cpu(name, variant, dtypes, kw):
    op = opinfo.find(name, variant)
    for dtype in dtypes:
        checked = opinfo.check(op, dtype, **kw)
        assert checked > 0, f"{name}: no samples for {dtype}"


def _dev(t):
    return t.detach().to(DEV)


def _grad_pair(fn, *inputs, grad_seed=0):
    """Outputs and input gradients of fn on the CPU and on the device, for one random output gradient."""
    cpu = [t.detach().clone().requires_grad_(t.dtype.is_floating_point) for t in inputs]
    dev = [_dev(t).requires_grad_(t.dtype.is_floating_point) for t in inputs]
    out_c, out_d = fn(*cpu), fn(*dev)
    g = torch.randn(out_c.shape, generator=torch.Generator().manual_seed(grad_seed), dtype=out_c.dtype)
    out_c.backward(g)
    out_d.backward(g.to(DEV))
    return out_c, out_d, [t.grad for t in cpu if t.requires_grad], [t.grad for t in dev if t.requires_grad]


def test_embedding_backward_padding_and_frequency_scaling():
    torch.manual_seed(0)
    weight = torch.randn(50, 33)
    tokens = torch.randint(0, 50, (6, 40))
    tokens[:, ::7] = 3  # a frequent id, and the padding id below
    for pad, by_freq in [(None, False), (3, False), (3, True), (0, True)]:
        wc = weight.clone().requires_grad_()
        wd = _dev(weight).requires_grad_()
        yc = F.embedding(tokens, wc, padding_idx=pad, scale_grad_by_freq=by_freq)
        yd = F.embedding(tokens.to(DEV), wd, padding_idx=pad, scale_grad_by_freq=by_freq)
        g = torch.randn(yc.shape, generator=torch.Generator().manual_seed(1))
        yc.backward(g)
        yd.backward(g.to(DEV))
        assert torch.equal(yd.cpu(), yc.detach())
        torch.testing.assert_close(wd.grad.cpu(), wc.grad, rtol=1e-5, atol=1e-5)
        if pad is not None:
            assert wd.grad.cpu()[pad].abs().max() == 0


def test_embedding_backward_many_tokens_is_deterministic():
    # 5000 tokens: the key sort takes the multi-tile merge path; two runs must agree bit for bit.
    torch.manual_seed(1)
    weight = torch.randn(300, 8)
    tokens = torch.randint(0, 300, (5000,))
    grads = []
    for _ in range(2):
        wd = _dev(weight).requires_grad_()
        F.embedding(tokens.to(DEV), wd).backward(torch.ones(5000, 8, device=DEV))
        grads.append(wd.grad.cpu())
    assert torch.equal(grads[0], grads[1])
    expected = torch.zeros(300, 8).index_add_(0, tokens, torch.ones(5000, 8))
    assert torch.equal(grads[0], expected)


def test_accumulating_ops_match_cpu_order_with_many_duplicates():
    # Sums are formed in the original index order from the destination's value, as the CPU adds:
    # results agree bit for bit even with heavy duplication.
    torch.manual_seed(2)
    x = torch.randn(7, 5)
    src = torch.randn(3000, 5)
    idx = torch.randint(0, 7, (3000,))
    assert torch.equal(x.to(DEV).index_add(0, idx.to(DEV), src.to(DEV)).cpu(), x.index_add(0, idx, src))
    sidx = torch.randint(0, 7, (3000, 5))
    assert torch.equal(x.to(DEV).scatter_add(0, sidx.to(DEV), src.to(DEV)).cpu(), x.scatter_add(0, sidx, src))
    acc = torch.zeros(7, 5).to(DEV).index_put_((idx.to(DEV),), src.to(DEV), accumulate=True).cpu()
    assert torch.equal(acc, torch.zeros(7, 5).index_put_((idx,), src, accumulate=True))
    for reduce in ("amax", "amin", "mean", "prod"):
        small = src[:40] * 0.5 + 1
        got = x.to(DEV).scatter_reduce(0, sidx[:40].to(DEV), small.to(DEV), reduce, include_self=False).cpu()
        torch.testing.assert_close(got, x.scatter_reduce(0, sidx[:40], small, reduce, include_self=False))


def test_inplace_index_add_with_alpha():
    x = torch.randn(6, 4)
    idx = torch.tensor([5, 0, 5, 2])
    src = torch.randn(4, 4)
    xd = _dev(x)
    xd.index_add_(0, idx.to(DEV), src.to(DEV), alpha=-2.5)
    torch.testing.assert_close(xd.cpu(), x.index_add(0, idx, src, alpha=-2.5))


def test_advanced_indexing_forms_and_their_backward():
    torch.manual_seed(3)
    x = torch.randn(5, 6, 7)
    i = torch.tensor([[0, 4], [2, 2]])
    j = torch.tensor([1, 5])
    mask = torch.rand(5, 6) > 0.4
    forms = [
        lambda t: t[i],
        lambda t: t[:, j],
        lambda t: t[i, :, j],          # separated index dims go first
        lambda t: t[:, j, i],
        lambda t: t[..., -1],
        lambda t: t[mask.to(t.device)],
        lambda t: t[1:4, j],
    ]
    for k, form in enumerate(forms):
        out_c, out_d, (gc,), (gd,) = _grad_pair(form, x, grad_seed=k)
        assert torch.equal(out_d.cpu(), out_c.detach()), k
        torch.testing.assert_close(gd.cpu(), gc, rtol=1e-6, atol=1e-6, msg=f"form {k}")


def test_index_put_accumulate_with_broadcast_values_and_bool_mask():
    x = torch.randn(4, 3, 5)
    idx = (torch.tensor([0, 3, 0, 0]), torch.tensor([2, 1, 2, 2]))
    v = torch.randn(5)
    xd = _dev(x)
    xd.index_put_(tuple(t.to(DEV) for t in idx), v.to(DEV), accumulate=True)
    torch.testing.assert_close(xd.cpu(), x.clone().index_put_(idx, v, accumulate=True))
    z, zd = x.clone(), _dev(x)
    z[idx] = v[None, None]  # leading size-1 dims of the values broadcast away
    zd[tuple(t.to(DEV) for t in idx)] = v[None, None].to(DEV)
    assert torch.equal(zd.cpu(), z)
    # x[mask] += 1 goes through index (gather), add and index_put_.
    mask = x > 0
    y, yd = x.clone(), _dev(x)
    y[mask] += 1
    yd[mask.to(DEV)] += 1
    assert torch.equal(yd.cpu(), y)


def test_gathers_on_channels_last_and_float16_inputs():
    torch.manual_seed(4)
    x = torch.randn(2, 6, 5, 4).to(memory_format=torch.channels_last)
    idx = torch.tensor([5, 0, 3])
    assert torch.equal(x.to(DEV).index_select(1, idx.to(DEV)).cpu(), x.index_select(1, idx))
    gidx = torch.randint(0, 5, (2, 6, 3, 4))
    assert torch.equal(x.to(DEV).gather(2, gidx.to(DEV)).cpu(), x.gather(2, gidx))
    h = torch.randn(9, 16).half()
    assert torch.equal(h.to(DEV)[torch.tensor([8, 1, 1]).to(DEV)].cpu(), h[torch.tensor([8, 1, 1])])
    tokens = torch.tensor([[2, 0]])
    assert torch.equal(F.embedding(tokens.to(DEV), h.to(DEV)).cpu(), F.embedding(tokens, h))


def test_out_of_range_gather_gives_nan_and_scatter_skips():
    # The GPU cannot raise without a host sync per op: a gather outside the tensor reads NaN.
    x = torch.arange(6.0).to(DEV)
    got = x.index_select(0, torch.tensor([1, 9, -2]).to(DEV)).cpu()
    assert got[0] == 1 and torch.isnan(got[1]) and got[2] == 4
    y = torch.zeros(3).to(DEV)
    y.index_add_(0, torch.tensor([0, 7]).to(DEV), torch.ones(2).to(DEV))
    assert y.cpu().tolist() == [1.0, 0.0, 0.0]


def test_large_gather_and_masked_select():
    torch.manual_seed(5)
    x = torch.randn(400, 700)
    idx = torch.randint(0, 400, (900,))
    assert torch.equal(x.to(DEV).index_select(0, idx.to(DEV)).cpu(), x.index_select(0, idx))
    mask = torch.rand(400, 700) > 0.3
    assert torch.equal(x.to(DEV).masked_select(mask.to(DEV)).cpu(), x.masked_select(mask))
    assert torch.equal(mask.to(DEV).nonzero().cpu(), mask.nonzero())


def test_value_selecting_backwards_run_on_the_device():
    nw.reset_fallback_counts()
    x = torch.randn(4, 9, 3)
    for fn in (lambda t: t.max(1).values, lambda t: t.min(2, keepdim=True).values, lambda t: t.amax((0, 2)),
               lambda t: t.prod(1), lambda t: t.sort(1).values, lambda t: t.topk(2, 1).values):
        out_c, out_d, (gc,), (gd,) = _grad_pair(fn, x)
        torch.testing.assert_close(out_d.cpu(), out_c.detach())
        torch.testing.assert_close(gd.cpu(), gc, rtol=1e-5, atol=1e-5)
    assert nw.fallback_report()["total_fallback_calls"] == 0
