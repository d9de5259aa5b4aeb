"""1x1 convolutions (no padding, any stride): a plain GEMM on the pixels, no im2col.

Channels-last tensors are used in place (stride 1) or after one subsampling copy (stride > 1); NCHW
tensors go through a batched GEMM per image that reads and writes NCHW directly.
"""
from __future__ import annotations

import torch

from navitrain.conv_args import Geometry
from navitrain.nomiopen_conv import gemm, policy
from navitrain.nomiopen_conv.layout import is_channels_last_dense, prod, rows


def _subsampled(x: torch.Tensor, stride) -> torch.Tensor:
    if all(s == 1 for s in stride):
        return x
    return x[(slice(None), slice(None), *(slice(None, None, s) for s in stride))]


def _nchw(t: torch.Tensor) -> bool:
    return t.is_contiguous() and not is_channels_last_dense(t)


def forward(x: torch.Tensor, w: torch.Tensor, bias, geom: Geometry, out: torch.Tensor) -> None:
    xs = _subsampled(x, geom.stride)
    n, c = xs.shape[:2]
    k, g = w.shape[0], geom.groups
    wm = w.reshape(g, k // g, c // g)
    p = prod(xs.shape[2:])
    if g == 1 and _nchw(out) and not is_channels_last_dense(x) and p >= gemm.MIN_PIXELS_PER_IMAGE_GEMM:
        torch.bmm(wm[0].expand(n, k, c), xs.reshape(n, c, p), out=out.view(n, k, p))
        gemm.add_bias(out, bias)
        return
    a = rows(xs)
    gemm.rows_into(out, a if g == 1 else a.view(-1, g, c // g), wm, bias)


def weight_grad(x: torch.Tensor, gy: torch.Tensor, geom: Geometry, weight_shape) -> torch.Tensor:
    xs = _subsampled(x, geom.stride)
    n, c = xs.shape[:2]
    k, g = gy.shape[1], geom.groups
    p = prod(gy.shape[2:])
    partials = n * k * c * gy.element_size()
    if g == 1 and _nchw(gy) and not is_channels_last_dense(xs) and p >= 256 and partials <= policy.workspace_bytes():
        # Large images in NCHW: per-image GEMMs summed beat transposing both tensors to rows.
        total = torch.bmm(gy.view(n, k, p), xs.reshape(n, c, p).transpose(1, 2)).sum(0)
    else:
        total = gemm.rows_t_rows(rows(gy), rows(xs), g)
    return total.reshape(weight_shape)
