"""Convolutions forward and backward: the MIOpen/cuDNN path that fails first on RDNA1."""
from __future__ import annotations

from navitrain.probe.cases import case
from navitrain.probe.catalogue._util import backward, leaf, module_grads
from navitrain.probe.inputs import module, nn, randn, torch


def _fwd_bwd(layer, x):
    """Forward, then backward with a random upstream gradient: output, input and parameter grads."""
    x = leaf(x)
    y = layer(x)
    (gx,) = backward(y, x)
    return {"output": y, "grad input": gx, **module_grads(layer)}


@case("conv2d-classic", dtype="float32", essential=True, group="conv")
def conv2d_classic(device, dtype):
    """Conv2d(3, 16, 3) on 1x3x32x32, forward then backward: the classic minimal RDNA1 crash reproducer."""
    return _fwd_bwd(module(nn.Conv2d(3, 16, 3), device, dtype), randn(1, 3, 32, 32, device=device, dtype=dtype))


@case("conv2d-stride-pad", dtype="float32", group="conv")
def conv2d_stride_pad(device, dtype):
    """Conv2d(8, 16, 3, stride 2, padding 1) on a batch of 4 (ResNet downsampling shape)."""
    layer = module(nn.Conv2d(8, 16, 3, stride=2, padding=1), device, dtype)
    return _fwd_bwd(layer, randn(4, 8, 17, 15, device=device, dtype=dtype))


@case("conv2d-1x1", dtype="float32", group="conv")
def conv2d_1x1(device, dtype):
    """Pointwise Conv2d(24, 40, 1) (bottleneck and projection shortcuts)."""
    return _fwd_bwd(module(nn.Conv2d(24, 40, 1), device, dtype), randn(2, 24, 9, 9, device=device, dtype=dtype))


@case("conv2d-5x5-dilated", dtype="float32", group="conv")
def conv2d_5x5_dilated(device, dtype):
    """Conv2d(6, 12, 5, padding 4, dilation 2, no bias): large and dilated filters."""
    layer = module(nn.Conv2d(6, 12, 5, padding=4, dilation=2, bias=False), device, dtype)
    return _fwd_bwd(layer, randn(2, 6, 14, 14, device=device, dtype=dtype))


@case("conv2d-depthwise-grouped", dtype="float32", group="conv")
def conv2d_depthwise_grouped(device, dtype):
    """Depthwise Conv2d(16, 16, 3, groups 16) then grouped Conv2d(16, 32, 3, groups 4) (MobileNet style)."""
    layer = module(nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.Conv2d(16, 32, 3, groups=4)),
                   device, dtype)
    return _fwd_bwd(layer, randn(2, 16, 12, 12, device=device, dtype=dtype))


@case("conv2d-channels-last", dtype="float32", group="conv")
def conv2d_channels_last(device, dtype):
    """Conv2d(16, 32, 3, padding 1) with input and weights in channels_last (NHWC) memory format."""
    layer = module(nn.Conv2d(16, 32, 3, padding=1), device, dtype).to(memory_format=torch.channels_last)
    x = randn(2, 16, 10, 10, device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)
    out = _fwd_bwd(layer, x)
    out["output"] = out["output"].contiguous()
    return out


@case("conv2d-fp16", dtype="float16", group="conv")
def conv2d_fp16(device, dtype):
    """Conv2d(8, 16, 3, padding 1) in half precision, forward and backward."""
    layer = module(nn.Conv2d(8, 16, 3, padding=1), device, dtype)
    return _fwd_bwd(layer, randn(2, 8, 12, 12, device=device, dtype=dtype))


@case("conv1d", dtype="float32", group="conv")
def conv1d(device, dtype):
    """Conv1d(4, 8, 5, padding 2) over sequences of 50 (audio and sequence models)."""
    return _fwd_bwd(module(nn.Conv1d(4, 8, 5, padding=2), device, dtype), randn(3, 4, 50, device=device, dtype=dtype))


@case("conv-transpose2d", dtype="float32", group="conv")
def conv_transpose2d(device, dtype):
    """ConvTranspose2d(8, 4, 3, stride 2, padding 1, output_padding 1): decoder upsampling."""
    layer = module(nn.ConvTranspose2d(8, 4, 3, stride=2, padding=1, output_padding=1), device, dtype)
    return _fwd_bwd(layer, randn(2, 8, 7, 9, device=device, dtype=dtype))
