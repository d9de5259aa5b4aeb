"""im2col and col2im for 2-d convolutions on NCHW tensors, with PyTorch's own unfold/fold kernels.

For NCHW data these beat the channels-last route of im2col.py: unfold reads the input in place
(padding included, no padded copy, no transposition) and lays columns out as [n, C*kh*kw, pixels],
which a batched GEMM turns straight into NCHW output; fold sums the columns of a strided transposed
convolution back in one gather kernel instead of one strided add per kernel tap. Both are memory
kernels compiled into every PyTorch build, CUDA and HIP alike.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from navitrain.ops import gemm, policy
from navitrain.ops.conv_params import Geometry
from navitrain.ops.layout import batch_slice, is_channels_last_dense, prod


def _fits(in_spatial, lo, out_spatial, kernel, geom: Geometry) -> bool:
    # unfold/fold pad symmetrically: usable when `lo` padding at both ends yields exactly the
    # expected number of windows (any extra end padding would only add windows we do not want).
    return all(p >= 0 and (s + 2 * p - d * (k - 1) - 1) // st + 1 == o
               for s, p, o, k, st, d in zip(in_spatial, lo, out_spatial, kernel, geom.stride, geom.dilation))


def forward_applies(x: torch.Tensor, w: torch.Tensor, geom: Geometry, lo, out: torch.Tensor) -> bool:
    return (x.dim() == 4 and geom.groups == 1 and not is_channels_last_dense(x) and out.is_contiguous()
            and prod(out.shape[2:]) >= gemm.MIN_PIXELS_PER_IMAGE_GEMM
            and _fits(x.shape[2:], lo, out.shape[2:], w.shape[2:], geom))


def _unfold(x, kernel, geom: Geometry, lo):
    return F.unfold(x, tuple(kernel), dilation=geom.dilation, padding=tuple(lo), stride=geom.stride)


def forward(x: torch.Tensor, w: torch.Tensor, bias, geom: Geometry, lo, out: torch.Tensor) -> None:
    k = w.shape[0]
    kernel, pixels = w.shape[2:], prod(out.shape[2:])
    wm = w.reshape(k, -1)  # [K, C*kh*kw], the row order of unfold's columns
    per_image = x.element_size() * wm.shape[1] * pixels
    for a, b in policy.batch_chunks(x.shape[0], per_image):
        cols = _unfold(batch_slice(x, a, b), kernel, geom, lo)  # [n, C*kk, L]
        torch.bmm(wm.expand(b - a, *wm.shape), cols, out=batch_slice(out, a, b).view(b - a, k, pixels))
    if bias is not None:
        out.add_(bias.view(1, -1, 1, 1))


def weight_grad_applies(x: torch.Tensor, gy: torch.Tensor, geom: Geometry, lo, weight_shape) -> bool:
    # Per-image partial weight gradients are summed at the end; worth it while an image has more
    # pixels than output channels (else the partials outweigh the columns: use channels-last rows).
    return (x.dim() == 4 and geom.groups == 1 and not is_channels_last_dense(x) and gy.is_contiguous()
            and not is_channels_last_dense(gy) and prod(gy.shape[2:]) >= gy.shape[1]
            and _fits(x.shape[2:], lo, gy.shape[2:], weight_shape[2:], geom))


def weight_grad(x: torch.Tensor, gy: torch.Tensor, geom: Geometry, lo, weight_shape) -> torch.Tensor:
    k, pixels = gy.shape[1], prod(gy.shape[2:])
    ckk = prod(weight_shape[1:])
    per_image = x.element_size() * ckk * (pixels + k)
    total = None
    for a, b in policy.batch_chunks(x.shape[0], per_image):
        cols = _unfold(batch_slice(x, a, b), weight_shape[2:], geom, lo)  # [n, C*kk, L]
        part = torch.bmm(batch_slice(gy, a, b).view(b - a, k, pixels), cols.transpose(1, 2))  # [n, K, C*kk]
        part = part.sum(0, dtype=torch.float32 if part.dtype in (torch.float16, torch.bfloat16) else None)
        total = part if total is None else total.add_(part)
    return total.view(weight_shape)


def input_grad_applies(gy: torch.Tensor, w: torch.Tensor, geom: Geometry, lo, out: torch.Tensor) -> bool:
    return (gy.dim() == 4 and geom.groups == 1 and not is_channels_last_dense(gy)
            and prod(gy.shape[2:]) >= gemm.MIN_PIXELS_PER_IMAGE_GEMM
            and _fits(out.shape[2:], lo, gy.shape[2:], w.shape[2:], geom))


def input_grad(gy: torch.Tensor, w: torch.Tensor, geom: Geometry, lo, out: torch.Tensor) -> None:
    """Transposed convolution: columns [n, C*kk, L] = w^T gy per image, then fold sums them."""
    k, pixels = gy.shape[1], prod(gy.shape[2:])
    wt = w.reshape(k, -1).t()  # [C*kk, K]
    per_image = gy.element_size() * wt.shape[0] * pixels
    direct = out.is_contiguous()
    for a, b in policy.batch_chunks(gy.shape[0], per_image):
        cols = torch.bmm(wt.expand(b - a, *wt.shape), batch_slice(gy, a, b).reshape(b - a, k, pixels))
        args = (tuple(out.shape[2:]), tuple(w.shape[2:]), tuple(geom.dilation), tuple(lo), tuple(geom.stride))
        if direct:
            torch.ops.aten.col2im.out(cols, *args, out=batch_slice(out, a, b))
        else:
            batch_slice(out, a, b).copy_(torch.ops.aten.col2im(cols, *args))
