"""A batch norm backward whose dy chain has other readers (a residual block's output gradient, read by
its last batch norm and passed on along the shortcut) runs the chain in its own passes and stores dy
for the others (fusion_norm.FusedBatchNormBackward keep_dy, kernels/shared_dy_batch_norm.py, issue 19):
against the same compiled graphs unfused, eager wgpu and the CPU, with NaN and +-inf; the module
against the aten ops, in place and for a layout its kernels do not read; NAVITRAIN_WGPU_FUSION=0."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import navitrain.wgpu.compile as wc
from navitrain.wgpu import fusion, fusion_norm
from navitrain.wgpu.kernels import batch_norm as bn_kernels

aten = torch.ops.aten


pytestmark = pytest.mark.usefixtures("fresh_compile_state")


class TwoBlocks(nn.Module):
    """Stem conv-BN-ReLU, an identity block and a projection block: each block's output gradient is
    read by its second batch norm and by the shortcut (the stem's chain, the projection's batch norm)."""

    def __init__(self, c=3):
        super().__init__()
        self.stem, self.bn0 = nn.Conv2d(c, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)
        self.c1, self.b1 = nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)
        self.c2, self.b2 = nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)
        self.c3, self.b3 = nn.Conv2d(4, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6)
        self.proj, self.bp = nn.Conv2d(4, 6, 1, bias=False), nn.BatchNorm2d(6)

    def forward(self, x):
        h = F.relu(self.bn0(self.stem(x)))
        h = F.relu(self.b2(self.c2(F.relu(self.b1(self.c1(h))))) + h)
        return F.relu(self.b3(self.c3(h)) + self.bp(self.proj(h)))


def _inputs(seed, special=False):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 3, 5, 5, generator=g) * 2 + 0.5
    if special:
        x[0, 1, 2, 2] = float("nan")
        x[1, 0, 0, 0] = float("inf")
        x[1, 2, 3, 1] = float("-inf")
    return x


def _kept_dy_modules(monkeypatch) -> list:
    seen = []
    original = fusion_norm.fuse

    def spy(gm):
        result = original(gm)
        seen.extend(m for m in gm.modules() if isinstance(m, fusion_norm.FusedBatchNormBackward) and m.keep_dy)
        return result
    monkeypatch.setattr(fusion_norm, "fuse", spy)
    return seen


def _train(model, x, device, compiled, fuse=True, steps=3):
    fusion.ENABLED = fuse
    net = copy.deepcopy(model).to(device)
    run = torch.compile(net, backend="wgpu") if compiled else net
    xd = x.detach().clone().to(device).requires_grad_()
    for _ in range(steps):
        net.zero_grad(set_to_none=True)
        xd.grad = None
        out = run(xd)
        (out * torch.linspace(-1, 2, out.numel(), device=device).view(out.shape)).sum().backward()
    fusion.ENABLED = True
    grads = {k: p.grad.cpu() for k, p in net.named_parameters()}
    grads["input"] = xd.grad.cpu()
    return out.detach().cpu(), grads, {k: v.detach().cpu() for k, v in net.state_dict().items()}


@pytest.mark.parametrize("special", [False, True])
def test_shared_dy_chains_match_unfused_eager_and_cpu(monkeypatch, special):
    kept = _kept_dy_modules(monkeypatch)
    torch.manual_seed(3)
    model = TwoBlocks()
    x = _inputs(7, special)
    out_cpu, grads_cpu, _ = _train(model, x, "cpu", compiled=False)
    out_eager, grads_eager, state_eager = _train(model, x, "wgpu", compiled=False)
    out, grads, state = _train(model, x, "wgpu", compiled=True)
    assert len(kept) >= 2 and wc.stats["backward_replays"] >= 1   # the identity block's b2, the projection's b3
    torch._dynamo.reset()
    kept.clear()
    out_unfused, grads_unfused, _ = _train(model, x, "wgpu", compiled=True, fuse=False)
    assert not kept   # NAVITRAIN_WGPU_FUSION=0: no rewrite
    close = dict(rtol=1e-5, atol=1e-5, equal_nan=True)
    torch.testing.assert_close(out, out_unfused, **close)
    torch.testing.assert_close(out, out_eager, **close)
    if special:
        assert torch.isnan(out).any() and torch.equal(torch.isnan(out), torch.isnan(out_cpu))
    else:
        torch.testing.assert_close(out, out_cpu, rtol=1e-4, atol=1e-4)
    for name in grads:
        torch.testing.assert_close(grads[name], grads_unfused[name], msg=name, **close)
        torch.testing.assert_close(grads[name], grads_eager[name], msg=name, **close)
        if special:
            assert torch.equal(torch.isnan(grads[name]), torch.isnan(grads_cpu[name])), name
        else:
            torch.testing.assert_close(grads[name], grads_cpu[name], rtol=1e-3, atol=1e-4, msg=name)
    for name in state:
        torch.testing.assert_close(state[name], state_eager[name], rtol=1e-5, atol=1e-6, equal_nan=True, msg=name)


@pytest.mark.parametrize("in_place", [True, False])
def test_kept_dy_module_equals_the_aten_ops(in_place):
    g = torch.Generator().manual_seed(6)
    shape = (3, 4, 2, 5)
    x = (torch.randn(shape, generator=g) * 3 + 1).to("wgpu")
    if not in_place:   # neither NCHW nor NHWC dense: the traced ops
        x = (torch.randn(3, 4, 5, 2, generator=g) * 3 + 1).to("wgpu").transpose(2, 3)
    w = torch.rand(4).to("wgpu") + 0.5
    mean, invstd = x.mean((0, 2, 3)), (x.var((0, 2, 3), unbiased=False) + 1e-5).rsqrt()
    rm, rv = torch.zeros(4).to("wgpu"), torch.ones(4).to("wgpu")

    def like_x(t):
        return torch.empty_strided(x.shape, x.stride(), device="wgpu").copy_(t.to("wgpu"))
    ga, gb, saved = (like_x(torch.randn(shape, generator=g)) for _ in range(3))
    ga[0, 0, 0, 0], gb[1, 1, 1, 1], saved[2, 2, 1, 3] = float("nan"), float("inf"), float("nan")
    prologue = bn_kernels.Prologue("  let v0 = in_a + in_b;", "select(v0, 0.0, in_c <= 0.0 && !is_nan(in_c))",
                                   ("in_a", "in_b", "in_c"), ("f32", "f32", "f32"), torch.float32)
    back = fusion_norm.FusedBatchNormBackward(prologue, 1e-5, (True, True, False), ("add", "threshold_backward"),
                                              keep_dy=True)
    gi, gw, gbias, dy = back(x, w, rm, rv, mean, invstd, ga, gb, saved)
    dy_want = aten.threshold_backward(ga + gb, saved, 0.0)
    want = aten.native_batch_norm_backward(dy_want, x, w, rm, rv, mean, invstd, True, 1e-5, [True, True, False])
    assert gbias is None and want[2] is None
    torch.testing.assert_close(dy.cpu(), dy_want.cpu(), rtol=0, atol=0, equal_nan=True)
    assert dy.stride() == x.stride()
    for got, expected in zip((gi, gw), want[:2]):
        torch.testing.assert_close(got.cpu(), expected.cpu(), rtol=1e-5, atol=1e-5, equal_nan=True)
