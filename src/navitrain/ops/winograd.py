"""Winograd F(m x m, 3 x 3) convolution for stride-1, undilated, ungrouped 3x3 (and 3 / 3x3x3) kernels,
built from GEMMs only.

A tile of (m+2)^nd input pixels becomes, per channel, (m+2)^nd transformed values (B^T d B); the
convolution turns into (m+2)^nd independent GEMMs [tiles, C] x [C, K] (one bmm); A^T M A turns the
products back into m^nd output pixels. F(2x2, 3x3) does 16 multiplies where direct convolution does
36 per output pair; F(4x4, 3x3) 36 where direct does 144. The transforms are GEMMs too: with the
tile positions as the leading axis, applying kron(B^T, B^T) to every tile and channel at once is one
[alpha^2, alpha^2] x [alpha^2, tiles*C] product.

Matrices: Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks" (2015), with the usual
interpolation points 0, +-1 (m=2) and 0, +-1, +-2 (m=4). F(4x4) loses a few bits in fp32 and is
only used for fp32/fp64.
"""
from __future__ import annotations

import functools
import math

import numpy as np
import torch

from navitrain.ops import policy
from navitrain.ops.layout import channels_last, padded_channels_last, prod

_MATRICES = {
    2: (
        [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]],  # B^T
        [[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]],  # G
        [[1, 1, 1, 0], [0, 1, -1, -1]],  # A^T
    ),
    4: (
        [[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
         [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]],
        [[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
         [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]],
        [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]],
    ),
}
TILES = tuple(_MATRICES)


def matrices_1d(m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(B^T, G, A^T) of F(m, 3) in float64."""
    return tuple(np.array(a, dtype=np.float64) for a in _MATRICES[m])  # type: ignore[return-value]


@functools.lru_cache(maxsize=64)
def transforms(m: int, nd: int, dtype: torch.dtype, device: torch.device):
    """(kron B^T, kron G, kron A^T) over nd dims, as tensors of `dtype` on `device`."""
    mats = []
    for a in matrices_1d(m):
        k = a
        for _ in range(nd - 1):
            k = np.kron(k, a)
        mats.append(torch.from_numpy(k).to(device=device, dtype=dtype))
    return tuple(mats)


def _tiles(out_spatial, m):
    return [math.ceil(o / m) for o in out_spatial]


def _tile_view(t_cl: torch.Tensor, size: int, step: int, tiles) -> torch.Tensor:
    """Overlapping (or not) tiles of a channels-last tensor [n, *S, C] as a view
    [size]*nd + [n, *tiles, C]: tile position first, so copying it lays the tiles out position-major."""
    s_n, *s_sp, s_c = t_cl.stride()
    nd = len(s_sp)
    return t_cl.as_strided([size] * nd + [t_cl.shape[0], *tiles, t_cl.shape[-1]],
                           [*s_sp, s_n, *(step * s for s in s_sp), s_c])


def _input_transform(x: torch.Tensor, lo, m: int, tiles, bt: torch.Tensor) -> torch.Tensor:
    """V = B^T d B for every tile and channel: [alpha^nd, n*T, C]."""
    nd = x.dim() - 2
    alpha = m + 2
    hi = [m * t + 2 - s - p for t, s, p in zip(tiles, x.shape[2:], lo)]
    xp = padded_channels_last(x, lo, hi)
    gathered = torch.empty([alpha**nd, x.shape[0] * prod(tiles), x.shape[1]], dtype=x.dtype, device=x.device)
    gathered.view([alpha] * nd + [x.shape[0], *tiles, x.shape[1]]).copy_(_tile_view(xp, alpha, m, tiles))
    del xp
    return torch.mm(bt, gathered.view(alpha**nd, -1)).view(gathered.shape)


def _weight_transform(w: torch.Tensor, gk: torch.Tensor) -> torch.Tensor:
    """U = G g G^T: [alpha^nd, C, K]."""
    nd = w.dim() - 2
    k, c = w.shape[:2]
    taps_first = w.permute(*range(2, nd + 2), 1, 0).reshape(3**nd, c * k)
    return torch.mm(gk, taps_first).view(-1, c, k)


def _bytes_per_image(x, k, m, out_spatial) -> int:
    nd = x.dim() - 2
    t = prod(_tiles(out_spatial, m))
    a2, c = (m + 2) ** nd, x.shape[1]
    padded = prod(m * ti + 2 for ti in _tiles(out_spatial, m)) * c
    peak = max(padded + a2 * t * c, 2 * a2 * t * c, a2 * t * (c + k), a2 * t * k + m**nd * t * k)
    return x.element_size() * peak


def forward(x: torch.Tensor, w: torch.Tensor, bias, lo, out: torch.Tensor, m: int) -> None:
    nd = x.dim() - 2
    k = w.shape[0]
    out_spatial = out.shape[2:]
    tiles = _tiles(out_spatial, m)
    exact = all(m * t == o for t, o in zip(tiles, out_spatial))
    bt, gk, at = transforms(m, nd, x.dtype, x.device)
    u = _weight_transform(w, gk)
    out_cl = channels_last(out)
    per_image = _bytes_per_image(x, k, m, out_spatial) + (0 if exact else x.element_size() * k * prod(m * t for t in tiles))
    for a, b in policy.batch_chunks(x.shape[0], per_image):
        n = b - a
        v = _input_transform(x[a:b], lo, m, tiles, bt)
        prods = torch.bmm(v, u)  # [alpha^nd, n*T, K]
        del v
        y = torch.mm(at, prods.view(prods.shape[0], -1)).view([m] * nd + [n, *tiles, k])
        del prods
        if exact:
            dest = out_cl[a:b]
        else:
            dest = torch.empty([n, *(m * t for t in tiles), k], dtype=out.dtype, device=out.device)
        dest_tiles = _tile_view(dest, m, m, tiles)
        if bias is not None and exact:
            torch.add(y, bias, out=dest_tiles)
        else:
            dest_tiles.copy_(y)
        if not exact:
            cropped = dest[(slice(None), *(slice(0, o) for o in out_spatial))]
            if bias is not None:
                torch.add(cropped, bias, out=out_cl[a:b])
            else:
                out_cl[a:b].copy_(cropped)


def weight_grad(x: torch.Tensor, gy: torch.Tensor, lo, m: int) -> torch.Tensor:
    """dL/dw as [K, C, 3, ...] (a view): dU = sum over tiles of V^T (A dY A^T), then dw = G^T dU G."""
    nd = x.dim() - 2
    k, c = gy.shape[1], x.shape[1]
    out_spatial = gy.shape[2:]
    tiles = _tiles(out_spatial, m)
    a2, m2 = (m + 2) ** nd, m**nd
    bt, gk, at = transforms(m, nd, x.dtype, x.device)
    per_image = _bytes_per_image(x, k, m, out_spatial) + gy.element_size() * prod(tiles) * k * (m2 + a2)
    total = None
    for a, b in policy.batch_chunks(x.shape[0], per_image):
        n = b - a
        v = _input_transform(x[a:b], lo, m, tiles, bt)  # [a2, n*T, C]
        gyp = padded_channels_last(gy[a:b], [0] * nd, [m * t - o for t, o in zip(tiles, out_spatial)])
        g_tiles = torch.empty([m2, n * prod(tiles), k], dtype=gy.dtype, device=gy.device)
        g_tiles.view([m] * nd + [n, *tiles, k]).copy_(_tile_view(gyp, m, m, tiles))
        del gyp
        dm = torch.mm(at.t(), g_tiles.view(m2, -1)).view(a2, -1, k)  # [a2, n*T, K]
        del g_tiles
        rows = v.shape[1]
        split = policy.split_k(x.device, rows, c * a2, k)
        if split > 1:
            part = torch.bmm(v.view(a2 * split, rows // split, c).transpose(1, 2),
                             dm.view(a2 * split, rows // split, k)).view(a2, split, c, k).sum(1)
        else:
            part = torch.bmm(v.transpose(1, 2), dm)  # [a2, C, K]
        del v, dm
        if total is None:
            total = part.float() if part.dtype in (torch.float16, torch.bfloat16) else part
        else:
            total.add_(part)
    gw = torch.mm(gk.t().to(total.dtype), total.view(a2, -1))  # [3^nd, C*K]
    return gw.view([3] * nd + [c, k]).permute(nd + 1, nd, *range(nd))
