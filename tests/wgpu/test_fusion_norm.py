"""Batch norm fused with the elementwise ops around it in compiled graphs (navitrain.wgpu.fusion_norm,
issue 19): the ReLU / residual add after a training batch norm run in its elementwise pass, ReLU's
gradient (and the adds before it) where the batch norm backward reads dy. Each fused form against the
same compiled graphs unfused (NAVITRAIN_WGPU_FUSION off), eager wgpu and the CPU, with NaN and +-inf in
the inputs; ten training steps of a small ResNet against eager; the unfused path the fused modules take
for layouts their kernels do not read in place."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import navitrain.wgpu.compile as wc
from navitrain.bench import models
from navitrain.wgpu import fusion_norm
from navitrain.wgpu.kernels import batch_norm as bn_kernels
from tests.wgpu.fusion_checks import train_steps

aten = torch.ops.aten


pytestmark = pytest.mark.usefixtures("fresh_compile_state")


class BatchNormReLU(nn.Module):
    def __init__(self, c=3):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(c, c, 1), nn.BatchNorm2d(c)

    def forward(self, x):
        return torch.relu(self.bn(self.conv(x)))


class Residual(nn.Module):
    """conv-BN-ReLU-conv-BN, + shortcut, ReLU: a BN + ReLU, a BN + add + ReLU, dy chains in backward."""

    def __init__(self, c=3):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.c2, self.b2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.head = nn.Conv2d(c, c, 1)

    def forward(self, x):
        h = F.relu(self.b1(self.c1(x)))
        return self.head(F.relu(self.b2(self.c2(h)) + x))


def _special(shape, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g) * 2 + 0.5
    return x


@pytest.mark.parametrize("make_model, channels_last", [(BatchNormReLU, False), (Residual, False), (Residual, True)])
def test_fused_batch_norm_chains_match_unfused_eager_and_cpu(make_model, channels_last):
    torch.manual_seed(3)
    model = make_model()
    x = _special((2, 3, 5, 5), 7)
    out_cpu, grads_cpu, state_cpu, _ = train_steps(model, x, "cpu", compiled=False)
    out_eager, grads_eager, state_eager, _ = train_steps(model, x, "wgpu", compiled=False, channels_last=channels_last)
    out, grads, state, fused = train_steps(model, x, "wgpu", compiled=True, channels_last=channels_last)
    expected_bn = 1 if make_model is BatchNormReLU else 3    # Residual: two forward chains, b1's dy chain
    assert wc.stats["fused_batch_norms"] >= expected_bn and wc.stats["backward_replays"] >= 1
    torch._dynamo.reset()
    out_unfused, grads_unfused, _, unfused = train_steps(model, x, "wgpu", compiled=True, fuse=False,
                                                    channels_last=channels_last)
    assert fused < unfused
    torch.testing.assert_close(out, out_unfused, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out, out_eager, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out, out_cpu, rtol=1e-4, atol=1e-4)
    for name in grads:
        torch.testing.assert_close(grads[name], grads_unfused[name], rtol=1e-5, atol=1e-5, msg=name)
        torch.testing.assert_close(grads[name], grads_eager[name], rtol=1e-5, atol=1e-5, msg=name)
        torch.testing.assert_close(grads[name], grads_cpu[name], rtol=1e-3, atol=1e-4, msg=name)
    for name in state:   # running statistics and num_batches_tracked updated as eagerly
        torch.testing.assert_close(state[name], state_eager[name], rtol=1e-5, atol=1e-6, msg=name)
        torch.testing.assert_close(state[name], state_cpu[name], rtol=1e-4, atol=1e-5, msg=name)


def test_nan_and_inf_propagate_through_the_fused_passes_as_eagerly():
    torch.manual_seed(4)
    model = Residual()
    x = _special((2, 3, 4, 4), 9)
    x[0, 1, 2, 2] = float("nan")      # channel 1 of every BN downstream: NaN
    x[1, 0, 0, 0] = float("inf")
    x[1, 2, 3, 1] = float("-inf")
    out_eager, grads_eager, state_eager, _ = train_steps(model, x, "wgpu", compiled=False, steps=3)
    out_cpu, grads_cpu, _, _ = train_steps(model, x, "cpu", compiled=False, steps=3)
    out, grads, state, _ = train_steps(model, x, "wgpu", compiled=True, steps=3)
    assert wc.stats["fused_batch_norms"] >= 3
    assert torch.isnan(out).any() and torch.isnan(out_eager).any()
    torch.testing.assert_close(out, out_eager, rtol=1e-5, atol=1e-5, equal_nan=True)
    assert torch.equal(torch.isnan(out), torch.isnan(out_cpu))
    for name in grads:
        torch.testing.assert_close(grads[name], grads_eager[name], rtol=1e-5, atol=1e-5, equal_nan=True, msg=name)
    for name in state:
        torch.testing.assert_close(state[name], state_eager[name], rtol=1e-5, atol=1e-6, equal_nan=True, msg=name)


def test_ten_compiled_resnet_steps_with_fused_batch_norms_equal_ten_eager_steps():
    torch.manual_seed(5)
    base = models.cifar_resnet18(num_classes=5, width=4, blocks=(1, 1))
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(4, 3, 8, 8, generator=g), torch.randint(0, 5, (4,), generator=g)) for _ in range(10)]

    def run(compiled):
        model = copy.deepcopy(base).to("wgpu")
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        step = models.train_step(torch.compile(model, backend="wgpu") if compiled else model, opt,
                                 nn.functional.cross_entropy)
        return [step(x.to("wgpu"), y.to("wgpu")).item() for x, y in batches], model

    eager_losses, eager_model = run(False)
    losses, model = run(True)
    # Stem BN + ReLU, two blocks' BN + ReLU and BN + add + ReLU, the projection's BN; dy chains backward.
    assert wc.stats["fused_batch_norms"] >= 6 and wc.stats["forward_replays"] == 9
    assert losses == pytest.approx(eager_losses, rel=1e-5, abs=1e-6)
    for (name, a), b in zip(model.state_dict().items(), eager_model.state_dict().values()):
        torch.testing.assert_close(a.cpu(), b.cpu(), rtol=1e-4, atol=1e-5, msg=name)


def test_fused_modules_take_the_unfused_ops_for_a_layout_the_kernels_do_not_read_in_place():
    g = torch.Generator().manual_seed(6)
    x = (torch.randn(3, 4, 2, 5, generator=g) * 3).to("wgpu").transpose(2, 3)   # neither NCHW nor NHWC dense
    res = torch.randn(3, 4, 5, 2, generator=g).to("wgpu")
    w, b = torch.rand(4).to("wgpu") + 0.5, torch.randn(4).to("wgpu")
    rm, rv = torch.randn(4).to("wgpu"), torch.rand(4).to("wgpu") + 0.5
    epilogue = bn_kernels.Epilogue("  let v0 = bn_y + in_b;", "relu_nan(v0)", ("bn_y", "in_b"), ("f32", "f32"),
                                   torch.float32)
    module = fusion_norm.FusedBatchNorm(epilogue, tuple(x.shape), tuple(res.stride()), 0.1, 1e-5, ("add", "relu"))
    out, mean, invstd, new_rm, new_rv = module(x, w, b, rm, rv, res)
    y, mean_e, invstd_e, rm_e, rv_e = aten._native_batch_norm_legit_functional(x, w, b, rm, rv, True, 0.1, 1e-5)
    torch.testing.assert_close(out.cpu(), torch.relu(y + res).cpu(), rtol=1e-6, atol=1e-6)
    for got, want in ((mean, mean_e), (invstd, invstd_e), (new_rm, rm_e), (new_rv, rv_e)):
        torch.testing.assert_close(got.cpu(), want.cpu(), rtol=1e-6, atol=1e-6)

    grad, saved = torch.randn(3, 4, 5, 2, generator=g).to("wgpu"), torch.randn(3, 4, 5, 2, generator=g).to("wgpu")
    prologue = bn_kernels.Prologue("", "select(in_a, 0.0, in_b <= 0.0 && !is_nan(in_b))", ("in_a", "in_b"),
                                   ("f32", "f32"), torch.float32)
    back = fusion_norm.FusedBatchNormBackward(prologue, 1e-5, (True, True, True), ("threshold_backward",))
    got = back(x, w, new_rm, new_rv, mean, invstd, grad, saved)
    dy = aten.threshold_backward(grad, saved, 0.0)
    want = aten.native_batch_norm_backward(dy, x, w, new_rm, new_rv, mean, invstd, True, 1e-5, [True, True, True])
    for a, e in zip(got, want):
        torch.testing.assert_close(a.cpu(), e.cpu(), rtol=1e-5, atol=1e-5)
