"""Batch norm statistics written by the convolution that makes the batch norm's input (issue 19:
kernels/conv/channel_stats.py, the StatsImageEpilogue of kernels/conv/epilogues.py, fusion_conv_stats.py).

The per-tile (mean, M2) the convolution forward writes, against float64 statistics of the output it
stored; the batch norm statistics combined from them against the CPU's batch norm of that output, with
channels whose mean is large next to their spread, and NaN and +-inf; a small compiled conv-BN-ReLU
net's outputs, gradients and running statistics against eager after three SGD steps; and the compiled
tiny ResNet-18 step, which no longer runs the batch norms' forward sums pass."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import navitrain.wgpu as nw
import navitrain.wgpu.compile as wc
from navitrain.bench import models
from navitrain.wgpu.kernels import batch_norm as bn_kernels
from navitrain.wgpu.kernels.conv import Geometry, channel_stats, implicit_forward
from navitrain.wgpu.kernels.gemm import TileConfig
from navitrain.wgpu.runtime import runtime
from navitrain.wgpu.tensor import empty

pytestmark = pytest.mark.usefixtures("fresh_compile_state")
INF, NAN = float("inf"), float("nan")


def _conv_with_stats(x, w, bias, stride, padding):
    N, C, H, W = x.shape
    OC, _, KH, KW = w.shape
    OH, OW = (H + 2 * padding - KH) // stride + 1, (W + 2 * padding - KW) // stride + 1
    g = Geometry(N, C, H, W, OC, OH, OW, KH, KW, (stride, stride), (padding, padding), (1, 1), 1)
    out = empty([N, OC, OH, OW], x.dtype)
    moments = channel_stats.forward_with_stats(x.to("wgpu"), w.to("wgpu"), bias.to("wgpu"), g, out)
    return out, moments


def _inputs(seed, N, C, H, W, OC, k, means):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, C, H, W, generator=g)
    w = torch.randn(OC, C, k, k, generator=g) / (C * k * k) ** 0.5
    bias = torch.tensor(means, dtype=torch.float32) + 0.1 * torch.randn(OC, generator=g)
    return x, w, bias


# (N, C, H, W, OC, kernel, stride, padding): a 3x3 implicit GEMM with partial tiles, a strided 3x3, and
# 1x1 layers (onebyone.py's NCHW product, unit stride and strided).
LAYERS = {
    "3x3": (2, 5, 9, 7, 6, 3, 1, 1),
    "3x3_stride2": (3, 4, 11, 10, 5, 3, 2, 1),
    "1x1": (2, 8, 6, 6, 12, 1, 1, 0),
    "1x1_stride2": (2, 8, 8, 8, 12, 1, 2, 0),
    # More column tiles than the batch norm's combining workgroup has threads (each thread takes several).
    "1x1_many_tiles": (3, 8, 64, 64, 4, 1, 1, 0),
}


@pytest.mark.parametrize("layer", sorted(set(LAYERS) - {"1x1_many_tiles"}))
def test_tile_moments_match_float64_statistics_of_the_stored_output(layer):
    N, C, H, W, OC, k, stride, padding = LAYERS[layer]
    # Channels with means 1e4 and -3e3 and a spread of about 1: a one-pass sum of squares would cancel.
    means = ([1e4, -3e3, 0.0, 5.0] * OC)[:OC]
    x, w, bias = _inputs(1, N, C, H, W, OC, k, means)
    out, m = _conv_with_stats(x, w, bias, stride, padding)
    assert m is not None
    ref = F.conv2d(x.double(), w.double(), bias.double(), stride, padding)
    torch.testing.assert_close(out.cpu().double(), ref, rtol=1e-5, atol=1e-3)
    values = out.cpu().double().transpose(0, 1).reshape(OC, -1)   # what the stored output holds
    parts = m.partials.cpu().double()
    assert parts.shape == (m.tiles, OC, 3) and m.tiles == -(-values.shape[1] // m.tile_cols)
    for t in range(m.tiles):
        tile = values[:, t * m.tile_cols:(t + 1) * m.tile_cols]
        hi = parts[t, :, 0]
        torch.testing.assert_close(hi, tile.mean(1), rtol=1e-6, atol=1e-6)
        dev = tile - hi[:, None]
        # S1 holds what rounding hi lost: the tile's mean is hi + S1 / count to near float64 precision.
        torch.testing.assert_close(hi + parts[t, :, 1] / tile.shape[1], tile.mean(1), rtol=1e-9, atol=1e-6)
        torch.testing.assert_close(parts[t, :, 1], dev.sum(1), rtol=1e-3, atol=1e-5)
        torch.testing.assert_close(parts[t, :, 2], (dev ** 2).sum(1), rtol=1e-5, atol=1e-5)


# Tiles the tuner may pick on other adapters (lavapipe's default is covered above): 8x8 thread blocks with
# single buffering, one thread column, the blocked (not interleaved) thread layout.
TILES = [TileConfig(64, 64, 16, 8, 8, buffers=1), TileConfig(128, 4, 8, 4, 4),
         TileConfig(64, 64, 8, 4, 4, interleave=False)]


@pytest.mark.parametrize("cfg", TILES, ids=lambda c: c.name)
def test_every_tile_layout_writes_the_same_statistics(cfg):
    N, C, H, W, OC, k, stride, padding = LAYERS["3x3_stride2"]
    x, w, bias = _inputs(7, N, C, H, W, OC, k, [2.0, -1.0, 0.0, 4.0, 1.0])
    OH, OW = (H + 2 * padding - k) // stride + 1, (W + 2 * padding - k) // stride + 1
    g = Geometry(N, C, H, W, OC, OH, OW, k, k, (stride, stride), (padding, padding), (1, 1), 1)
    out = empty([N, OC, OH, OW], torch.float32)
    request = channel_stats.StatsRequest()
    implicit_forward(x.to("wgpu"), w.to("wgpu"), bias.to("wgpu"), g, out, cfg=cfg, stats=request)
    torch.testing.assert_close(out.cpu().double(), F.conv2d(x.double(), w.double(), bias.double(), stride, padding),
                               rtol=1e-5, atol=1e-5)
    m = request.moments
    if m is None:    # the tile and its reduction array do not fit this adapter's workgroup memory
        assert cfg.shared_bytes + 4 * cfg.BM * (cfg.BN // cfg.TN) > runtime().limits[
            "max-compute-workgroup-storage-size"]
        return
    values = out.cpu().double().transpose(0, 1).reshape(OC, -1)
    parts = m.partials.cpu().double()
    assert m.tile_cols == cfg.BN and m.tiles == -(-values.shape[1] // cfg.BN)
    for t in range(m.tiles):
        tile = values[:, t * m.tile_cols:(t + 1) * m.tile_cols]
        hi, s1, s2 = parts[t, :, 0], parts[t, :, 1], parts[t, :, 2]
        torch.testing.assert_close(hi + s1 / tile.shape[1], tile.mean(1), rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(s2, ((tile - hi[:, None]) ** 2).sum(1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_outputs_give_the_statistics_of_their_rounded_values(dtype):
    N, C, H, W, OC, k, stride, padding = LAYERS["3x3"]
    x, w, bias = _inputs(6, N, C, H, W, OC, k, [3.0, -2.0, 0.0, 1.0, 0.5, 8.0])
    out, m = _conv_with_stats(x.to(dtype), w.to(dtype), bias.to(dtype), stride, padding)
    assert out.dtype == dtype and m is not None
    values = out.cpu().double().transpose(0, 1).reshape(OC, -1)   # the rounded values the output holds
    parts = m.partials.cpu().double()
    for t in range(m.tiles):
        tile = values[:, t * m.tile_cols:(t + 1) * m.tile_cols]
        hi, s1, s2 = parts[t, :, 0], parts[t, :, 1], parts[t, :, 2]
        torch.testing.assert_close(hi + s1 / tile.shape[1], tile.mean(1), rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(s2, ((tile - hi[:, None]) ** 2).sum(1), rtol=1e-5, atol=1e-5)


def _batch_norm_from_moments(out, m, momentum=0.1, eps=1e-5, seed=2):
    """(y, save_mean, save_invstd, new running mean, new running var) from the moments, from eager wgpu's
    batch norm (its own sums pass) of the same output, and from the CPU's in float64."""
    N, C, H, W = out.shape
    g = torch.Generator().manual_seed(seed)
    weight, bias = torch.rand(C, generator=g) + 0.5, torch.randn(C, generator=g)
    rmean, rvar = torch.randn(C, generator=g), torch.rand(C, generator=g) + 0.5
    dev = [t.to("wgpu") for t in (weight, bias, rmean, rvar)]
    save_mean, save_invstd = empty([C], torch.float32), empty([C], torch.float32)
    y = bn_kernels.forward(out, N, C, H * W, *dev, True, momentum, eps, save_mean, save_invstd, moments=m)
    got = [t.cpu().double() for t in (y, save_mean, save_invstd, dev[2], dev[3])]
    edev = [t.to("wgpu") for t in (weight, bias, rmean, rvar)]
    eager = torch.ops.aten._native_batch_norm_legit.default(out, *edev, True, momentum, eps)
    eager = [t.cpu().double() for t in (*eager, edev[2], edev[3])]
    rm64, rv64 = rmean.double(), rvar.double()
    cpu = torch.ops.aten._native_batch_norm_legit.default(out.cpu().double(), weight.double(), bias.double(), rm64,
                                                          rv64, True, momentum, eps)
    return got, eager, [*cpu, rm64, rv64]


NAMES = ("y", "save_mean", "save_invstd", "running_mean", "running_var")


def _compare(got, eager, cpu, equal_nan=False):
    for name, a, e, c in zip(NAMES, got, eager, cpu):
        # y of a channel with mean 1e4: x - mean in f32 is off by up to an ulp of 1e4 (1e-3) on any path.
        tol = 1e-3 if name == "y" else 2e-4
        torch.testing.assert_close(a, c, rtol=tol, atol=tol, equal_nan=equal_nan, msg=name)
        torch.testing.assert_close(a, e, rtol=1e-5, atol=2e-5, equal_nan=equal_nan, msg=name)


@pytest.mark.parametrize("layer", ["3x3", "1x1_stride2", "1x1_many_tiles"])
def test_batch_norm_statistics_from_the_moments_match_the_cpu(layer):
    N, C, H, W, OC, k, stride, padding = LAYERS[layer]
    x, w, bias = _inputs(3, N, C, H, W, OC, k, ([1e4, -3e3, 0.0, 5.0] * OC)[:OC])
    out, m = _conv_with_stats(x, w, bias, stride, padding)
    assert layer != "1x1_many_tiles" or m.tiles > 256
    _compare(*_batch_norm_from_moments(out, m))


def test_nan_reaches_the_statistics_as_on_the_cpu():
    N, C, H, W, OC, k, stride, padding = LAYERS["3x3"]
    x, w, bias = _inputs(4, N, C, H, W, OC, k, [0.0, 2.0, -1.0, 0.5, 0.0, 1.0])
    x[1, 2, 4, 3] = NAN          # NaN at the positions around it, in every channel
    out, m = _conv_with_stats(x, w, bias, stride, padding)
    got, eager, cpu = _batch_norm_from_moments(out, m)
    _compare(got, eager, cpu, equal_nan=True)
    assert got[1].isnan().all() and got[2].isnan().all()


def test_inf_reaches_the_statistics_as_on_the_cpu():
    N, C, H, W, OC, k, stride, padding = LAYERS["1x1"]
    x, w, bias = _inputs(5, N, C, H, W, OC, k, [0.0, 2.0, -1.0, 0.5] * 3)
    bias[1], bias[3] = INF, -INF     # channels of +inf and of -inf only
    x[1, 0, 4, 3] = INF              # one position of +-inf in every other channel (no weight is 0: no 0 * inf)
    w0 = w[:, 0].clone()
    w[:, 0] = torch.where(w0 >= 0, 1.0, -1.0) * (0.5 + w0.abs())
    out, m = _conv_with_stats(x, w, bias, stride, padding)
    got, eager, cpu = _batch_norm_from_moments(out, m)
    _compare(got, eager, cpu, equal_nan=True)
    mean, invstd = got[1], got[2]
    assert mean.isinf().all() and not mean.isnan().any() and invstd.isnan().all()
    assert mean[1] == INF and mean[3] == -INF


class ConvBatchNorms(nn.Module):
    """conv3x3-BN-ReLU (a fused BN), a strided 1x1 conv-BN into a pool (a plain BN), a 3x3 with a bias."""

    def __init__(self, c=4):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.c2, self.b2 = nn.Conv2d(c, 2 * c, 1, stride=2, bias=False), nn.BatchNorm2d(2 * c)
        self.c3, self.b3 = nn.Conv2d(2 * c, c, 3, padding=1), nn.BatchNorm2d(c)

    def forward(self, x):
        h = F.relu(self.b1(self.c1(x)))
        h = F.avg_pool2d(self.b2(self.c2(h)), 1)
        return F.relu(self.b3(self.c3(h))).mean((2, 3))


def _train(model, x, compiled, steps=3):
    net = copy.deepcopy(model).to("wgpu")
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    run = torch.compile(net, backend="wgpu") if compiled else net
    xd = x.to("wgpu")
    target = torch.linspace(-1, 1, 4 * x.shape[0]).view(x.shape[0], 4).to("wgpu")
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        out = run(xd)
        loss = ((out - target) ** 2).mean()
        loss.backward()
        grads = {k: p.grad.detach().cpu() for k, p in net.named_parameters()}
        opt.step()
    state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    return out.detach().cpu(), loss.detach().cpu(), grads, state


def test_compiled_conv_batch_norm_net_equals_eager_after_three_sgd_steps():
    torch.manual_seed(0)
    model = ConvBatchNorms()
    x = torch.randn(4, 3, 10, 10) * 2 + 3
    wc.reset_stats()
    out, loss, grads, state = _train(model, x, compiled=True)
    assert wc.stats["conv_bn_stats"] == 3
    out_e, loss_e, grads_e, state_e = _train(model, x, compiled=False)
    torch.testing.assert_close(out, out_e, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(loss, loss_e, rtol=1e-5, atol=1e-6)
    for name in grads:
        torch.testing.assert_close(grads[name], grads_e[name], rtol=1e-4, atol=1e-5, msg=name)
    for name in state:
        torch.testing.assert_close(state[name], state_e[name], rtol=1e-5, atol=1e-6, msg=name)


def test_compiled_resnet18_step_runs_no_batch_norm_sums_pass():
    torch.manual_seed(0)
    net = models.cifar_resnet18(num_classes=10, width=8).to("wgpu")
    x, y = models.cifar_batch(2, image_size=16, num_classes=10, device="wgpu")
    opt = torch.optim.SGD(net.parameters(), lr=0.01)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(net(x), y)
        loss.backward()
        return loss

    compiled = torch.compile(step, backend="wgpu")
    wc.reset_stats()
    with nw.profile() as table:   # the first call runs the compiled graphs' modules (later calls replay them)
        compiled().item()
    assert wc.stats["conv_bn_stats"] == 20
    names = list(table)
    assert not [n for n in names if n.startswith("norm_sums_bn_fwd")], names
    assert any(n.startswith("batch_norm_stats") for n in names)
