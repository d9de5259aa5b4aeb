"""The general GEMM convolution: im2col (forward, weight gradient) and col2im (input gradient of a
strided convolution), chunked over the batch under the workspace cap.

Any kernel, stride, dilation, padding and group count; 1d, 2d and 3d. Ungrouped 2-d convolutions,
the common case, have leaner plans in im2col2d.py; the other special cases (1x1, Winograd,
depthwise) live in their own modules.
"""
from __future__ import annotations

import torch

from navitrain.conv_args import Geometry
from navitrain.nomiopen_conv import gemm, policy
from navitrain.nomiopen_conv.layout import (
    batch_slice,
    channels_last,
    is_channels_last_dense,
    needed_end_padding,
    padded_channels_last,
    prod,
    rows,
    tap_slices,
    taps,
    windows,
)


def weight_rows(w: torch.Tensor, groups: int) -> torch.Tensor:
    """[K, C/g, *k] -> [g, K/g, prod(k) * C/g], columns in (tap, channel) order like our im2col rows."""
    k = w.shape[0]
    return channels_last(w).reshape(groups, k // groups, -1)


def _cols(x: torch.Tensor, lo, hi, out_spatial, kernel, geom: Geometry) -> torch.Tensor:
    """im2col rows of x: [n*P, prod(k)*C] (groups == 1) or [n*P, g, prod(k)*C/g]."""
    xp = padded_channels_last(x, lo, hi)
    win = windows(xp, out_spatial, kernel, geom.stride, geom.dilation)  # [n, *So, *k, C]
    m = x.shape[0] * prod(out_spatial)
    if geom.groups == 1:
        return win.reshape(m, -1)
    nd = geom.nd
    win = win.unflatten(-1, (geom.groups, -1)).movedim(-2, 1 + nd)  # [n, *So, g, *k, C/g]
    return win.reshape(m, geom.groups, -1)


def _per_image_bytes(x: torch.Tensor, lo, hi, out_spatial, kernel) -> int:
    padded = prod(s + a + b for s, a, b in zip(x.shape[2:], lo, hi)) * x.shape[1]
    return x.element_size() * (padded + prod(out_spatial) * prod(kernel) * x.shape[1])


def forward(x: torch.Tensor, w: torch.Tensor, bias, geom: Geometry, lo, out: torch.Tensor) -> None:
    kernel, out_spatial = w.shape[2:], out.shape[2:]
    hi = needed_end_padding(x.shape[2:], lo, out_spatial, kernel, geom.stride, geom.dilation)
    wm = weight_rows(w, geom.groups)
    for a, b in policy.batch_chunks(x.shape[0], _per_image_bytes(x, lo, hi, out_spatial, kernel)):
        gemm.rows_into(batch_slice(out, a, b), _cols(batch_slice(x, a, b), lo, hi, out_spatial, kernel, geom), wm, bias)


def weight_grad(x: torch.Tensor, gy: torch.Tensor, geom: Geometry, lo, weight_shape) -> torch.Tensor:
    """dL/dw as [K, C/g, *k] (a view; callers copy it into the layout they return)."""
    kernel, out_spatial = tuple(weight_shape[2:]), gy.shape[2:]
    hi = needed_end_padding(x.shape[2:], lo, out_spatial, kernel, geom.stride, geom.dilation)
    per_image = _per_image_bytes(x, lo, hi, out_spatial, kernel)
    if not is_channels_last_dense(gy):
        per_image += gy.element_size() * prod(gy.shape[1:])
    total = None
    for a, b in policy.batch_chunks(x.shape[0], per_image):
        cols = _cols(batch_slice(x, a, b), lo, hi, out_spatial, kernel, geom)
        part = gemm.rows_t_rows(rows(batch_slice(gy, a, b)), cols, geom.groups)
        total = _accumulate(total, part)
    return _as_weight(total, weight_shape)


def _accumulate(total, part):
    if total is None:
        # Half-precision partial sums are added in float32 so chunking does not cost accuracy
        return part.float() if part.dtype in (torch.float16, torch.bfloat16) else part
    return total.add_(part)


def _as_weight(total: torch.Tensor, weight_shape) -> torch.Tensor:
    k, cg, *kernel = weight_shape
    nd = len(kernel)
    return total.view(k, *kernel, cg).permute(0, nd + 1, *range(1, nd + 1))


def input_grad(gy: torch.Tensor, w: torch.Tensor, geom: Geometry, lo, out: torch.Tensor) -> None:
    """out[N, C, *S] = transposed convolution of gy (col2im): one GEMM to per-tap columns, then each
    tap's columns are added into a strided view of the result. Used for stride > 1, where the
    flipped-kernel formulation would waste stride^nd of its work on inserted zeros."""
    n_all, k = gy.shape[:2]
    g = geom.groups
    kernel, in_spatial, out_spatial = w.shape[2:], out.shape[2:], gy.shape[2:]
    nd, c = geom.nd, out.shape[1]
    wm = weight_rows(w, g)  # [g, K/g, kk*C/g]
    kk, p = prod(kernel), prod(out_spatial)
    nchw_gemm = (g == 1 and gy.is_contiguous() and not is_channels_last_dense(gy)
                 and p >= gemm.MIN_PIXELS_PER_IMAGE_GEMM)
    per_image = gy.element_size() * p * (kk * c + (0 if nchw_gemm or is_channels_last_dense(gy) else k))
    out.zero_()
    tap_list = [(t, tap_slices(t, geom.stride, geom.dilation, lo, in_spatial, out_spatial)) for t in taps(kernel)]
    for a, b in policy.batch_chunks(n_all, per_image):
        n = b - a
        dest = batch_slice(out, a, b).unflatten(1, (g, c // g))  # [n, g, C/g, *S]
        if nchw_gemm:
            # per image: [kk*C, K] @ [K, P]; columns come out as [n, *k, C, *So], NCHW-like
            cols = torch.bmm(wm[0].t().expand(n, kk * c, k), batch_slice(gy, a, b).reshape(n, k, p))
            cols = cols.view(n, *kernel, 1, c, *out_spatial)
            tap_view = lambda t: cols[(slice(None), *t)]  # noqa: E731  [n, 1, C, *So]
        else:
            gyr = rows(batch_slice(gy, a, b))  # [n*P, K]
            if g == 1:
                cols = (gyr @ wm[0]).view(n, *out_spatial, *kernel, 1, c)
            else:
                cols = torch.bmm(gyr.view(-1, g, k // g).transpose(0, 1), wm)  # [g, n*P, kk*C/g]
                cols = cols.view(g, n, *out_spatial, *kernel, c // g).movedim(0, -2)  # [n, *So, *k, g, C/g]
            spatial = (slice(None),) * nd
            tap_view = lambda t: cols[(slice(None), *spatial, *t)].movedim((-2, -1), (1, 2))  # noqa: E731
        for t, where in tap_list:
            if where is None:
                continue
            src, dst = where
            dest[(slice(None), slice(None), slice(None), *dst)].add_(tap_view(t)[(slice(None),) * 3 + tuple(src)])
