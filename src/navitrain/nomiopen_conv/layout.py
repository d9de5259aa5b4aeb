"""Views and copies that turn a convolution into GEMM operands.

The GEMM convolution works on channels-last data ([N, *spatial, C]): there a pixel's channels are one
contiguous row, so a 1x1 convolution is a GEMM on the tensor itself and an im2col row is a few
contiguous runs. Inputs in NCHW pay for this once, inside the padding copy that is needed anyway.
"""
from __future__ import annotations

import itertools
import math
from typing import Iterator, Sequence

import torch


def channels_last(t: torch.Tensor) -> torch.Tensor:
    """[N, C, *S] -> [N, *S, C] as a view (no copy)."""
    return t.permute(0, *range(2, t.dim()), 1)


def is_channels_last_dense(t: torch.Tensor) -> bool:
    """channels_last(t).is_contiguous(), computed from sizes and strides without a tensor op."""
    shape, strides = t.shape, t.stride()
    expected = 1
    for d in (1, *range(t.dim() - 1, 1, -1), 0):
        if shape[d] != 1:
            if strides[d] != expected:
                return False
            expected *= shape[d]
    return True


def padded_channels_last(x: torch.Tensor, lo: Sequence[int], hi: Sequence[int]) -> torch.Tensor:
    """x [N, C, *S] as a contiguous [N, *S', C] tensor, zero-padded by lo/hi per spatial dim (negative
    values crop). A view when x already is dense channels-last and nothing is padded."""
    xc = channels_last(x)
    if any(a < 0 for a in lo) or any(b < 0 for b in hi):
        # Crop first: constant_pad_nd refuses a crop that reaches past the data into the other side's
        # padding, which happens when a window lies entirely in the padding.
        keep = [slice(max(0, -a), max(max(0, -a), s + min(0, b))) for s, a, b in zip(x.shape[2:], lo, hi)]
        xc = xc[(slice(None), *keep)]
        if any(k.stop == k.start for k in keep):
            extent = [s + a + b for s, a, b in zip(x.shape[2:], lo, hi)]
            return xc.new_zeros([x.shape[0], *extent, x.shape[1]])
        lo, hi = [max(0, a) for a in lo], [max(0, b) for b in hi]
    if any(lo) or any(hi):
        pads = [0, 0]
        for a, b in zip(reversed(lo), reversed(hi)):
            pads += [a, b]
        xc = torch.constant_pad_nd(xc, pads)
    return xc if xc.is_contiguous() else xc.contiguous()


def batch_slice(t: torch.Tensor, a: int, b: int) -> torch.Tensor:
    """t[a:b] without a slicing op when the chunk is the whole batch (the common case)."""
    return t if a == 0 and b == t.shape[0] else t[a:b]


def rows(t: torch.Tensor) -> torch.Tensor:
    """[N, C, *S] -> [N*prod(S), C]: a view for dense channels-last tensors, else one copy."""
    return channels_last(t).reshape(-1, t.shape[1])


def windows(xp: torch.Tensor, out_spatial: Sequence[int], kernel: Sequence[int], stride: Sequence[int],
            dilation: Sequence[int]) -> torch.Tensor:
    """All kernel windows of a channels-last tensor xp [n, *Sp, C] as a strided view
    [n, *out_spatial, *kernel, C]. Copying it (reshape) is im2col."""
    s_n, *s_sp, s_c = xp.stride()
    size = [xp.shape[0], *out_spatial, *kernel, xp.shape[-1]]
    strides = [s_n, *(a * b for a, b in zip(s_sp, stride)), *(a * b for a, b in zip(s_sp, dilation)), s_c]
    return xp.as_strided(size, strides)


def needed_end_padding(in_spatial, lo, out_spatial, kernel, stride, dilation) -> list[int]:
    """End padding that makes the padded input exactly as long as the windows reach (may be negative)."""
    return [(o - 1) * s + d * (k - 1) + 1 - i - p
            for i, p, o, k, s, d in zip(in_spatial, lo, out_spatial, kernel, stride, dilation)]


def taps(kernel: Sequence[int]) -> Iterator[tuple[int, ...]]:
    return itertools.product(*(range(k) for k in kernel))


def tap_slices(tap, stride, dilation, lo, in_spatial, out_spatial):
    """For a transposed (scatter) convolution: which grad-output positions q of kernel tap `tap` land
    inside the result, and where. Position q of dim d goes to s*q + d*t - lo. Returns
    (source slices over q, destination slices) or None when the tap hits nothing."""
    src, dst = [], []
    for t, s, d, p, size_q, size_i in zip(tap, stride, dilation, lo, out_spatial, in_spatial):
        off = d * t - p
        q0 = max(0, -(off // s))  # ceil(-off / s): the first q with s*q + off >= 0
        q1 = min(size_q, (size_i - 1 - off) // s + 1)
        if q1 <= q0:
            return None
        start = s * q0 + off
        src.append(slice(q0, q1))
        dst.append(slice(start, start + s * (q1 - q0 - 1) + 1, s))
    return src, dst


def prod(values) -> int:
    return math.prod(values)
