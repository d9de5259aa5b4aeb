"""A convolution's ReLU in its own store in compiled graphs (navitrain.wgpu.fusion_conv_relu): the kernel
entry (kernels/conv/choose.forward_relu) for each formulation against the CPU with NaN and +-inf, a
compiled VGG-like network against the same graphs unfused, eager wgpu and the CPU, and the unfused ops
the fused module takes for operands it does not read."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import navitrain.wgpu.compile as wc
from navitrain import _env
from navitrain.wgpu import fusion_conv_relu
from navitrain.wgpu.kernels import conv
from tests.wgpu.fusion_checks import assert_matches_unfused_eager_and_cpu, train_steps


def _special(shape, seed):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * 2
    flat = x.view(-1)
    flat[1], flat[7], flat[-2] = float("nan"), float("inf"), float("-inf")
    return x


@pytest.mark.parametrize("kernel, stride, padding, groups, wino", [
    (3, 1, 1, 1, False),   # implicit GEMM with the ReLU in its epilogue (tuning off: no Winograd)
    (5, 2, 2, 1, False),   # strided large kernel, implicit GEMM
    (1, 1, 0, 1, False),   # 1x1 layer: the plain product, then one ReLU pass
    (3, 1, 1, 4, False),   # depthwise: the direct kernel, then one ReLU pass
    (3, 1, 1, 1, True),    # Winograd forced, then one ReLU pass
])
def test_forward_relu_matches_the_cpu_for_each_formulation(monkeypatch, kernel, stride, padding, groups, wino):
    if wino:
        monkeypatch.setenv(_env.WGPU_CONV, "winograd")
    x = _special((2, 4, 9, 9), 1)
    if wino:   # Winograd's transforms subtract and scale inputs: an infinity there becomes NaN (as in cuDNN's)
        x[torch.isinf(x)] = 3.0
    w = torch.randn(4, 4 // groups, kernel, kernel, generator=torch.Generator().manual_seed(2))
    bias = torch.randn(4, generator=torch.Generator().manual_seed(3))
    ref = F.relu(F.conv2d(x, w, bias, stride, padding, groups=groups))
    g = conv.Geometry(2, 4, 9, 9, 4, ref.shape[2], ref.shape[3], kernel, kernel, (stride, stride), (padding, padding),
                      (1, 1), groups)
    out = torch.empty(ref.shape, device="wgpu")
    got = conv.forward_relu(x.to("wgpu"), w.to("wgpu"), bias.to("wgpu"), g, out).cpu()
    assert ref.isnan().any() and (ref == 0).any()
    assert torch.equal(torch.isnan(got), torch.isnan(ref))
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4, equal_nan=True)


class Vgg(nn.Module):
    """Convolutions each followed by a ReLU (in place, as VGG writes it), pooling, a classifier."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(inplace=True),
                                      nn.Conv2d(8, 8, 5, stride=2, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(2),
                                      nn.Conv2d(8, 4, 1), nn.ReLU())
        self.head = nn.Linear(4 * 4 * 4, 5)

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


@pytest.mark.usefixtures("fresh_compile_state")
def test_compiled_convolutions_with_their_relus_match_unfused_eager_and_cpu():
    torch.manual_seed(4)
    model = Vgg()
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    x[0, 1, 4, 4] = float("nan")     # the first sample only: the others stay finite
    cpu = train_steps(model, x, "cpu", compiled=False)
    eager = train_steps(model, x, "wgpu", compiled=False)
    fused = train_steps(model, x, "wgpu", compiled=True)
    assert wc.stats["conv_relus"] == 3 and wc.stats["backward_replays"] >= 1
    torch._dynamo.reset()
    unfused = train_steps(model, x, "wgpu", compiled=True, fuse=False)
    assert fused[3] < unfused[3]
    assert torch.isnan(fused[0][0]).all() and not torch.isnan(fused[0][1:]).any()
    assert_matches_unfused_eager_and_cpu(fused, unfused, eager, cpu)


def test_conv_relu_takes_the_aten_ops_for_operands_it_does_not_read():
    x = _special((2, 3, 6, 6), 6).to("wgpu").contiguous(memory_format=torch.channels_last)
    w, bias = torch.randn(5, 3, 3, 3).to("wgpu"), torch.randn(5).to("wgpu")
    module = fusion_conv_relu.ConvReLU((1, 1), (1, 1), (1, 1), (0, 0))
    got = module(x, w, bias)
    ref = F.relu(F.conv2d(x.cpu(), w.cpu(), bias.cpu(), padding=1))
    torch.testing.assert_close(got.cpu(), ref, rtol=1e-4, atol=1e-4, equal_nan=True)
