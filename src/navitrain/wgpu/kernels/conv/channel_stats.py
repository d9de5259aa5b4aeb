"""A convolution forward that also writes its output's per-channel batch statistics (issue 19).

A training batch norm right after a convolution reads the convolution's whole output once only to sum
it per channel, then again to normalize it. Here the implicit-GEMM forward computes those sums while
the output is still in registers (epilogues.StatsImageEpilogue): per output channel and column tile,
the tile's mean hi and the sums of (v - hi) and (v - hi)^2. batch_norm.forward takes them (`moments`)
and combines the tiles in a fixed order (Chan's formula around one shift) instead of running its own
sums pass.

Only what runs as the NCHW implicit GEMM (3x3 layers, and 1x1 layers through onebyone.py's NCHW
product) gets statistics; a Winograd, depthwise, grouped or channels_last forward returns None and
the batch norm computes its statistics as before.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from navitrain.wgpu.kernels import conv_depthwise, conv_grouped, loop_budget, winograd
from navitrain.wgpu.kernels.conv import onebyone
from navitrain.wgpu.kernels.conv.choose import forward, use_winograd
from navitrain.wgpu.kernels.conv.epilogues import StatsImageEpilogue
from navitrain.wgpu.kernels.conv.forward import implicit_forward
from navitrain.wgpu.kernels.conv.geometry import Geometry
from navitrain.wgpu.tensor import WgpuTensor, empty, is_channels_last


@dataclass(frozen=True)
class ConvMoments:
    """Per-tile statistics of a convolution output [N, C, H, W]: `partials` is [tiles, C, 3] (hi, S1, S2 of
    each channel over column tile t, which holds min(tile_cols, count - t * tile_cols) of the channel's
    `count` = N*H*W values: see epilogues.StatsImageEpilogue), followed in its buffer by 4*C spare floats
    (`spare_offset`, the batch norm's coefficients)."""
    partials: WgpuTensor
    tiles: int
    tile_cols: int
    channels: int

    @property
    def spare_offset(self) -> int:
        return self.partials.elem_offset + self.tiles * self.channels * StatsImageEpilogue.WORDS


class StatsRequest:
    """Handed to the forward kernels: they call allocate() once their tile is known."""

    def __init__(self):
        self.moments: ConvMoments | None = None

    def allocate(self, tiles: int, tile_cols: int, channels: int) -> WgpuTensor:
        words = StatsImageEpilogue.WORDS
        buf = empty([tiles * channels * words + 4 * channels], torch.float32)
        partials = buf[:tiles * channels * words].view(tiles, channels, words)
        self.moments = ConvMoments(partials, tiles, tile_cols, channels)
        return partials


def eligible(x: WgpuTensor, w: WgpuTensor, bias: WgpuTensor | None, g: Geometry, out: WgpuTensor) -> bool:
    """Whether the forward of this layer may run as the NCHW implicit GEMM with statistics."""
    return (g.groups == 1 and out.numel() > 0 and not is_channels_last(out)
            and x.dtype == w.dtype == out.dtype and (bias is None or bias.dtype == x.dtype)
            and not conv_depthwise.eligible(g, x, w, bias, out)
            and not conv_grouped.eligible("fwd", g, x, w, bias, out))


def forward_with_stats(x: WgpuTensor, w: WgpuTensor, bias: WgpuTensor | None, g: Geometry,
                       out: WgpuTensor) -> ConvMoments | None:
    """Writes out = conv(x, w) + bias (x and w 4-D, `out` laid out as the forward makes it), choosing the
    formulation as ops/conv.py does; returns the output's statistics where that formulation can take
    them, else None (the batch norm then computes them itself)."""
    stride, padding, dilation = tuple(g.stride), tuple(g.padding), tuple(g.dilation)
    if use_winograd("fwd", x, w, stride, padding, dilation, g.groups,
                    lambda: forward(x, w, bias, g, out),
                    lambda: winograd.conv3x3(x, w, bias, padding[0], out)):
        winograd.conv3x3(x, w, bias, padding[0], out)
        return None
    if not eligible(x, w, bias, g, out):
        forward(x, w, bias, g, out)
        return None
    request = StatsRequest()
    if onebyone.eligible(g):
        onebyone.forward(x, w, bias, g, out, stats=request)
    else:
        implicit_forward(x, w, bias, g, out, stats=request)
    moments = request.moments   # None where the kernel could not take them (bindings, workgroup memory)
    # The batch norm's statistics kernel walks the tiles in one thread per channel.
    if moments is not None and moments.tiles + 2 > loop_budget.PASS_BUDGET:
        return None
    return moments
