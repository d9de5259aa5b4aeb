"""A downsample block's two batch norms as one call (fusion_norm_pair.py, kernels/batch_norm_pair.py,
issue 19): compiled with the pairs against the same graphs unfused (NAVITRAIN fusion off: the aten ops),
eager wgpu and a float64 CPU reference (outputs, running statistics, gradients of the input and of
both batch norms' weight and bias), NaN and +-inf in the shortcut branch only, channels_last; the pair
runs as one elementwise kernel each way; the tiny CIFAR ResNet-18 equal to eager after 3 SGD steps."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import navitrain.wgpu as nw
import navitrain.wgpu.compile as wc
from navitrain.bench import models
from navitrain.wgpu import fusion, fusion_norm_pair

pytestmark = pytest.mark.usefixtures("fresh_compile_state")
INF, NAN = float("inf"), float("nan")


class Downsample(nn.Module):
    """relu(bn2(conv2(relu(bn1(conv1(h))))) + bn_d(conv_d(x))): the main branch reads h, the shortcut x
    (one tensor in a ResNet; two here so a NaN can reach one branch only)."""

    def __init__(self, c=3, oc=6):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(c, oc, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(oc)
        self.c2, self.b2 = nn.Conv2d(oc, oc, 3, padding=1, bias=False), nn.BatchNorm2d(oc)
        self.cd, self.bd = nn.Conv2d(c, oc, 1, stride=2, bias=False), nn.BatchNorm2d(oc)
        for bn in (self.b1, self.b2, self.bd):   # parameters away from 1 and 0, statistics away from 0 and 1
            nn.init.uniform_(bn.weight, 0.5, 1.5)
            nn.init.uniform_(bn.bias, -0.5, 0.5)
            bn.running_mean.uniform_(-0.2, 0.2)
            bn.running_var.uniform_(0.8, 1.2)

    def forward(self, h, x):
        main = self.b2(self.c2(F.relu(self.b1(self.c1(h)))))
        return F.relu(main + self.bd(self.cd(x)))


def _inputs(seed, special=False, channels_last=False):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(2, 3, 8, 8, generator=g) * 2 + 0.5
    x = torch.randn(2, 3, 8, 8, generator=g) * 3 - 1
    if special:   # strided 1x1: (even, even) positions reach the shortcut's output
        x[0, 1, 2, 2], x[1, 0, 4, 6], x[1, 2, 0, 0] = NAN, INF, -INF
    if channels_last:
        h, x = h.contiguous(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    return h, x


def _train(model, h, x, device, compiled, fuse=True, steps=3, dtype=torch.float32, channels_last=False):
    fusion.ENABLED = fuse
    net = copy.deepcopy(model).to(device, dtype)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    run = torch.compile(net, backend="wgpu") if compiled else net
    hd, xd = (t.detach().clone().to(device, dtype).requires_grad_() for t in (h, x))
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        hd.grad = xd.grad = None
        out = run(hd, xd)
        (out * torch.linspace(-1, 2, out.numel(), device=device, dtype=dtype).view(out.shape)).sum().backward()
        grads = {k: p.grad.detach().cpu().float() for k, p in net.named_parameters()}
        grads["h"], grads["x"] = hd.grad.cpu().float(), xd.grad.cpu().float()
        opt.step()
    fusion.ENABLED = True
    state = {k: v.detach().cpu() for k, v in net.state_dict().items() if v.is_floating_point()}
    return out.detach().cpu().float(), grads, state


def _close(got, want, equal_nan=False, rtol=1e-4, atol=1e-4):
    torch.testing.assert_close(got[0], want[0], rtol=rtol, atol=atol, equal_nan=equal_nan)
    for part in (1, 2):
        assert got[part].keys() == want[part].keys()
        for k in got[part]:
            torch.testing.assert_close(got[part][k].float(), want[part][k].float(), rtol=rtol, atol=atol,
                                       equal_nan=equal_nan, msg=k)


@pytest.mark.parametrize("special,channels_last", [(False, False), (True, False), (False, True)])
def test_pair_matches_unfused_eager_and_cpu(special, channels_last):
    torch.manual_seed(1)
    model = Downsample()
    h, x = _inputs(2, special, channels_last)
    steps = 1 if special else 3   # NaN parameters after the first step teach nothing more
    wc.reset_stats()
    paired = _train(model, h, x, "wgpu", True, steps=steps, channels_last=channels_last)
    assert wc.stats["batch_norm_pairs"] == 2   # the forward pair and the backward pair
    unfused = _train(model, h, x, "wgpu", True, fuse=False, steps=steps, channels_last=channels_last)
    eager = _train(model, h, x, "wgpu", False, steps=steps, channels_last=channels_last)
    cpu = _train(model, h, x, "cpu", False, steps=steps, dtype=torch.float64)
    if special:   # the 1x1 shortcut mixes channels: NaN everywhere after the add, but bn2's statistics stay finite
        state = paired[2]
        assert paired[0].isnan().any() and state["bd.running_mean"].isnan().any()
        assert state["b2.running_mean"].isfinite().all() and state["b2.running_var"].isfinite().all()
    _close(paired, unfused, special)
    _close(paired, eager, special)
    _close(paired, cpu, special, rtol=2e-4, atol=2e-4)


def test_pair_is_one_elementwise_kernel_each_way():
    torch.manual_seed(3)
    net = Downsample().to("wgpu")
    run = torch.compile(net, backend="wgpu")
    h, x = (t.to("wgpu").requires_grad_() for t in _inputs(4))
    wc.reset_stats()
    with nw.profile() as table:   # the first call runs the graphs' modules (later calls replay them)
        run(h, x).sum().backward()
    names = list(table)
    assert wc.stats["batch_norm_pairs"] == 2 and wc.stats["conv_bn_stats"] == 3
    calls = {name: row[0] for name, row in table.items()}   # rows: [dispatches, seconds]
    assert calls.get("batch_norm_pair_apply") == 1 and calls.get("batch_norm_pair_apply_backward") == 1, calls
    # bn1's own elementwise passes remain, nothing else: the shortcut's result and dy are never stored
    assert "batch_norm_apply" not in calls and calls.get("batch_norm_apply_fused") == 2, calls
    assert not [n for n in names if "keep_dy" in n], names


def test_compiled_tiny_resnet18_equals_eager_after_three_sgd_steps(monkeypatch):
    torch.manual_seed(0)
    net = models.cifar_resnet18(num_classes=10, width=4)
    x, y = models.cifar_batch(4, image_size=16, num_classes=10, device="cpu")

    def train(compiled):
        torch._dynamo.reset()
        model = copy.deepcopy(net).to("wgpu")
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        xd, yd = x.to("wgpu"), y.to("wgpu")

        def step():
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(xd), yd)
            loss.backward()
            return loss

        run = torch.compile(step, backend="wgpu") if compiled else step
        losses = []
        for _ in range(3):
            losses.append(run().detach().cpu())
            opt.step()
        return torch.stack(losses), {k: v.detach().cpu() for k, v in model.state_dict().items()}

    wc.reset_stats()
    paired = train(True)
    assert wc.stats["batch_norm_pairs"] == 6   # 3 downsample blocks, forward and backward
    eager = train(False)
    monkeypatch.setattr(fusion_norm_pair, "fuse", lambda gm: 0)
    unpaired = train(True)
    # The same arithmetic as the graph without pairs; eager (other kernels: no conv statistics epilogue,
    # no fused chains) rounds differently, and tiny batch norms amplify that over three steps.
    for want, tol in ((unpaired, 1e-5), (eager, 2e-3)):
        torch.testing.assert_close(paired[0], want[0], rtol=tol, atol=tol)
        for k in paired[1]:
            torch.testing.assert_close(paired[1][k], want[1][k], rtol=tol, atol=tol, msg=k)


def _pair_modules(shape, stride):
    from navitrain.wgpu import fusion_norm
    from navitrain.wgpu.kernels import batch_norm as bn_kernels
    epilogue = bn_kernels.Epilogue("  let v0 = bn_y + in_b;", "relu_nan(v0 * in_c)", ("bn_y", "in_b", "in_c"),
                                   ("f32", "f32", "f32"), torch.float32)
    main = fusion_norm.FusedBatchNorm(epilogue, shape, stride, 0.1, 1e-5, ("add", "mul", "relu"))
    side = fusion_norm.FusedBatchNorm(None, shape, stride, 0.3, 1e-3, ())
    prologue = bn_kernels.Prologue("  let v0 = in_a + in_b;", "select(v0, 0.0, in_c <= 0.0 && !is_nan(in_c))",
                                   ("in_a", "in_b", "in_c"), ("f32", "f32", "f32"), torch.float32)
    first = fusion_norm.FusedBatchNormBackward(prologue, 1e-5, (True, True, True), ("add", "threshold_backward"),
                                               keep_dy=True)
    return (fusion_norm_pair.FusedBatchNormPair(main, side, 1),
            fusion_norm_pair.FusedBatchNormBackwardPair(first, 1e-3, (True, False, True)))


@pytest.mark.parametrize("layout", ["nchw", "channels_last", "strided"])
def test_pair_modules_match_the_aten_ops(layout):
    """The modules against the ops they replace, with NaN and +-inf in the shortcut's input; 'strided' is
    a layout the kernels do not read in place (the modules take the unfused calls)."""
    aten = torch.ops.aten
    g = torch.Generator().manual_seed(7)

    def tensor(scale=1.0, shift=0.0):
        t = torch.randn(3, 5, 4, 6, generator=g) * scale + shift
        if layout == "channels_last":
            return t.contiguous(memory_format=torch.channels_last).to("wgpu")
        if layout == "strided":
            return t.transpose(2, 3).contiguous().to("wgpu").transpose(2, 3)
        return t.to("wgpu")

    x1, x2, scale = tensor(2, 1), tensor(3, -2), tensor()
    x2_cpu = x2.cpu()
    x2_cpu[0, 1, 2, 3], x2_cpu[2, 4, 0, 0], x2_cpu[1, 3, 3, 5] = NAN, INF, -INF
    x2.copy_(x2_cpu)
    params = [(torch.rand(5, generator=g) + 0.5).to("wgpu"), torch.randn(5, generator=g).to("wgpu"),
              torch.randn(5, generator=g).to("wgpu"), (torch.rand(5, generator=g) + 0.5).to("wgpu")]
    w1, b1, rm1, rv1 = params
    w2, b2, rm2, rv2 = (p.flip(0).clone() for p in params)
    forward, backward = _pair_modules(tuple(x1.shape), tuple(x1.stride()))
    out, *stats = forward(x1, w1, b1, rm1, rv1, x2, w2, b2, rm2, rv2, scale)
    y1, *want1 = aten._native_batch_norm_legit_functional(x1, w1, b1, rm1, rv1, True, 0.1, 1e-5)
    y2, *want2 = aten._native_batch_norm_legit_functional(x2, w2, b2, rm2, rv2, True, 0.3, 1e-3)
    torch.testing.assert_close(out.cpu(), torch.relu((y1 + y2) * scale).cpu(), rtol=1e-5, atol=1e-5, equal_nan=True)
    for got, want in zip(stats, want1 + want2):
        torch.testing.assert_close(got.cpu(), want.cpu(), rtol=1e-5, atol=1e-6, equal_nan=True)
    assert not stats[0].isnan().any() and stats[4].isnan().any()   # NaN in the shortcut's statistics only

    ga, gb, saved = tensor(), tensor(), tensor()
    got = backward(x1, w1, rm1, rv1, stats[0], stats[1], x2, w2, rm2, rv2, stats[4], stats[5], ga, gb, saved)
    dy = aten.threshold_backward(ga + gb, saved, 0.0)
    want = (*aten.native_batch_norm_backward(dy, x1, w1, rm1, rv1, stats[0], stats[1], True, 1e-5, [True] * 3),
            *aten.native_batch_norm_backward(dy, x2, w2, rm2, rv2, stats[4], stats[5], True, 1e-3,
                                             [True, False, True]))
    assert got[4] is None and want[4] is None
    for k, (a, e) in enumerate(zip(got, want)):
        if e is not None:
            torch.testing.assert_close(a.cpu(), e.cpu(), rtol=1e-5, atol=1e-5, equal_nan=True, msg=str(k))
    assert got[0].isfinite().all() and got[3].isnan().any()


# What each pass of the compiled graphs reports in wc.stats when it changed something (Downsample above).
PASS_STATS = {"norm": "fused_batch_norms", "conv_stats": "conv_bn_stats", "norm_pair": "batch_norm_pairs"}


@pytest.mark.parametrize("left_out", sorted(PASS_STATS))
def test_one_pass_left_out_by_the_environment(monkeypatch, left_out):
    """NAVITRAIN_WGPU_FUSION_OFF leaves one pass out (to time or rule it out on a GPU): its counter stays at
    0, the other passes still run, and the results equal the graphs with every pass."""
    torch.manual_seed(5)
    model = Downsample()
    h, x = _inputs(6)
    wc.reset_stats()
    every = _train(model, h, x, "wgpu", True, steps=2)
    assert all(wc.stats[counter] > 0 for counter in PASS_STATS.values())
    torch._dynamo.reset()
    wc.reset_stats()
    monkeypatch.setenv("NAVITRAIN_WGPU_FUSION_OFF", left_out)
    without = _train(model, h, x, "wgpu", True, steps=2)
    assert wc.stats[PASS_STATS[left_out]] == 0
    builds_on = {"norm_pair": "norm"}   # pairs are made of the norm pass's fused batch norms
    assert all(wc.stats[c] > 0 for p, c in PASS_STATS.items() if left_out not in (p, builds_on.get(p)))
    _close(without, every)
