"""Depthwise convolutions (one input channel per group): a multiply-accumulate per kernel tap over
strided views, no GEMM and no im2col.

As GEMMs these would be [pixels, taps] x [taps, multiplier] per channel: a reduction of 9 or so,
which BLAS runs at a tiny fraction of its speed. Elementwise kernels on the strided windows move
the same bytes without the im2col buffer.
"""
from __future__ import annotations

import torch

from navitrain.conv_args import Geometry
from navitrain.nomiopen_conv import policy
from navitrain.nomiopen_conv.layout import (
    batch_slice,
    channels_last,
    needed_end_padding,
    padded_channels_last,
    prod,
    tap_slices,
    taps,
    windows,
)


def _accumulator_dtype(dtype: torch.dtype) -> torch.dtype:
    # Summing taps in half precision loses a bit per tap; accumulate in float32 instead.
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def forward(x: torch.Tensor, w: torch.Tensor, bias, geom: Geometry, lo, out: torch.Tensor) -> None:
    """groups == C, weight [C*mult, 1, *k]."""
    c, k = x.shape[1], w.shape[0]
    mult = k // c
    kernel, out_spatial = w.shape[2:], out.shape[2:]
    hi = needed_end_padding(x.shape[2:], lo, out_spatial, kernel, geom.stride, geom.dilation)
    acc_dtype = _accumulator_dtype(out.dtype)
    wt = w.reshape(c, mult, -1).to(acc_dtype)
    nd = geom.nd
    per_image = x.element_size() * prod(s + a + b for s, a, b in zip(x.shape[2:], lo, hi)) * c
    if acc_dtype != out.dtype:
        per_image += 4 * prod(out_spatial) * k
    for a, b in policy.batch_chunks(x.shape[0], per_image):
        xp = padded_channels_last(batch_slice(x, a, b), lo, hi)
        win = windows(xp, out_spatial, kernel, geom.stride, geom.dilation)  # [n, *So, *k, C]
        dest = channels_last(batch_slice(out, a, b)).unflatten(-1, (c, mult))  # [n, *So, C, mult]
        acc = dest if acc_dtype == out.dtype else torch.empty(dest.shape, dtype=acc_dtype, device=out.device)
        for i, t in enumerate(taps(kernel)):
            src = win[(slice(None),) * (nd + 1) + t].unsqueeze(-1)  # [n, *So, C, 1]
            if i == 0:
                torch.mul(src, wt[:, :, 0], out=acc)
            else:
                acc.addcmul_(src, wt[:, :, i])
        if acc is not dest:
            dest.copy_(acc)
    if bias is not None:
        out.add_(bias.view(1, -1, *([1] * nd)))


def weight_grad(x: torch.Tensor, gy: torch.Tensor, geom: Geometry, lo, weight_shape) -> torch.Tensor:
    c, k = x.shape[1], gy.shape[1]
    mult = k // c
    kernel, out_spatial = tuple(weight_shape[2:]), gy.shape[2:]
    nd = geom.nd
    hi = needed_end_padding(x.shape[2:], lo, out_spatial, kernel, geom.stride, geom.dilation)
    acc_dtype = _accumulator_dtype(gy.dtype)
    grad = torch.zeros([c, mult, prod(kernel)], dtype=acc_dtype, device=gy.device)
    padded = prod(s + a + b for s, a, b in zip(x.shape[2:], lo, hi)) * c
    per_image = x.element_size() * (padded + 2 * prod(gy.shape[1:]))
    dims = list(range(nd + 1))
    for a, b in policy.batch_chunks(x.shape[0], per_image):
        xp = padded_channels_last(batch_slice(x, a, b), lo, hi)
        win = windows(xp, out_spatial, kernel, geom.stride, geom.dilation)
        g = channels_last(batch_slice(gy, a, b)).unflatten(-1, (c, mult))  # [n, *So, C, mult]
        for i, t in enumerate(taps(kernel)):
            src = win[(slice(None),) * (nd + 1) + t].unsqueeze(-1)
            grad[:, :, i] += (g * src).sum(dims, dtype=acc_dtype)
    return grad.view(weight_shape)


def input_grad(gy: torch.Tensor, w: torch.Tensor, geom: Geometry, lo, out: torch.Tensor) -> None:
    """Transposed depthwise convolution with one output channel per group (weight [C, 1, *k]): each
    tap scatters gy * w[tap] into a strided view of the result."""
    kernel, in_spatial, out_spatial = w.shape[2:], out.shape[2:], gy.shape[2:]
    nd = geom.nd
    acc_dtype = _accumulator_dtype(out.dtype)
    acc = out if acc_dtype == out.dtype else torch.zeros(out.shape, dtype=acc_dtype, device=out.device)
    if acc is out:
        out.zero_()
    wt = w.reshape(w.shape[0], -1).to(acc_dtype)
    shape = [1, -1] + [1] * nd
    for i, t in enumerate(taps(kernel)):
        where = tap_slices(t, geom.stride, geom.dilation, lo, in_spatial, out_spatial)
        if where is None:
            continue
        src, dst = where
        acc[(slice(None), slice(None), *dst)].addcmul_(gy[(slice(None), slice(None), *src)], wt[:, i].view(shape))
    if acc is not out:
        out.copy_(acc)
