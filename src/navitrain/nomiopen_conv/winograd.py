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
from typing import NamedTuple

import torch

from navitrain.nomiopen_conv import policy
from navitrain.nomiopen_conv.layout import channels_last, padded_channels_last, prod

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


def matrices_1d(m: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B^T, G, A^T) of F(m, 3) as float64 CPU tensors."""
    return tuple(torch.tensor(a, dtype=torch.float64) for a in _MATRICES[m])  # type: ignore[return-value]


@functools.lru_cache(maxsize=64)
def transforms(m: int, nd: int, dtype: torch.dtype, device: torch.device):
    """(kron B^T, kron G, kron A^T, its transpose, kron G transposed) over nd dims, as contiguous
    tensors of `dtype` on `device` (built in float64, then rounded once)."""
    mats = []
    for a in matrices_1d(m):
        k = a
        for _ in range(nd - 1):
            k = torch.kron(k, a)
        mats.append(k)
    bt, gk, at = mats
    return tuple(t.contiguous().to(device=device, dtype=dtype) for t in (bt, gk, at, at.t(), gk.t()))


class _Plan(NamedTuple):
    tiles: tuple  # tiles per spatial dim
    count: int  # tiles per image
    exact: bool  # the tiles cover the output exactly (no cropping)
    hi: tuple  # end padding of the input so that every tile is whole
    gy_hi: tuple  # end padding of grad_output to whole tiles
    forward_bytes: int  # workspace per image
    weight_grad_bytes: int


@functools.lru_cache(maxsize=4096)
def _plan(x_shape, k: int, lo, out_spatial, m: int, elt: int) -> _Plan:
    nd, c = len(x_shape) - 2, x_shape[1]
    tiles = tuple(math.ceil(o / m) for o in out_spatial)
    count = prod(tiles)
    exact = all(m * t == o for t, o in zip(tiles, out_spatial))
    a2, m2 = (m + 2) ** nd, m**nd
    padded = prod(m * t + 2 for t in tiles) * c
    peak = max(padded + a2 * count * c, 2 * a2 * count * c, a2 * count * (c + k), a2 * count * k + m2 * count * k)
    forward_bytes = elt * (peak + (0 if exact else k * m2 * count))
    weight_grad_bytes = elt * (peak + count * k * (m2 + a2))
    return _Plan(tiles, count, exact, tuple(m * t + 2 - s - p for t, s, p in zip(tiles, x_shape[2:], lo)),
                 tuple(m * t - o for t, o in zip(tiles, out_spatial)), forward_bytes, weight_grad_bytes)


def _tile_view(t_cl: torch.Tensor, size: int, step: int, tiles) -> torch.Tensor:
    """Overlapping (or not) tiles of a channels-last tensor [n, *S, C] as a view
    [size]*nd + [n, *tiles, C]: tile position first, so copying it lays the tiles out position-major."""
    s_n, *s_sp, s_c = t_cl.stride()
    return t_cl.as_strided([size] * len(s_sp) + [t_cl.shape[0], *tiles, t_cl.shape[-1]],
                           [*s_sp, s_n, *[step * s for s in s_sp], s_c])


def _input_transform(x: torch.Tensor, lo, hi, m: int, plan: _Plan, bt: torch.Tensor) -> torch.Tensor:
    """V = B^T d B for every tile and channel: [alpha^nd, n*T, C]."""
    alpha = m + 2
    xp = padded_channels_last(x, lo, hi)
    gathered = torch.empty([bt.shape[0], x.shape[0] * plan.count, x.shape[1]], dtype=x.dtype, device=x.device)
    gathered.view([alpha] * len(plan.tiles) + [x.shape[0], *plan.tiles, x.shape[1]]).copy_(
        _tile_view(xp, alpha, m, plan.tiles))
    del xp
    return torch.mm(bt, gathered.view(bt.shape[0], -1)).view(gathered.shape)


def _weight_transform(w: torch.Tensor, gk: torch.Tensor) -> torch.Tensor:
    """U = G g G^T: [alpha^nd, C, K]."""
    nd = w.dim() - 2
    k, c = w.shape[:2]
    taps_first = w.permute(*range(2, nd + 2), 1, 0).reshape(gk.shape[1], c * k)
    return torch.mm(gk, taps_first).view(-1, c, k)


def forward(x: torch.Tensor, w: torch.Tensor, bias, lo, out: torch.Tensor, m: int) -> None:
    nd, k, n_all = x.dim() - 2, w.shape[0], x.shape[0]
    out_spatial = out.shape[2:]
    plan = _plan(tuple(x.shape), k, tuple(lo), tuple(out_spatial), m, x.element_size())
    bt, gk, at, _, _ = transforms(m, nd, x.dtype, x.device)
    u = _weight_transform(w, gk)
    out_cl = channels_last(out)
    for a, b in policy.batch_chunks(n_all, plan.forward_bytes):
        n = b - a
        whole = n == n_all
        v = _input_transform(x if whole else x[a:b], lo, plan.hi, m, plan, bt)
        prods = torch.bmm(v, u)  # [alpha^nd, n*T, K]
        del v
        y = torch.mm(at, prods.view(prods.shape[0], -1)).view([m] * nd + [n, *plan.tiles, k])
        del prods
        dest = out_cl if whole else out_cl[a:b]
        if plan.exact:
            if bias is None:
                _tile_view(dest, m, m, plan.tiles).copy_(y)
            else:
                torch.add(y, bias, out=_tile_view(dest, m, m, plan.tiles))
            continue
        full = torch.empty([n, *(m * t for t in plan.tiles), k], dtype=out.dtype, device=out.device)
        _tile_view(full, m, m, plan.tiles).copy_(y)
        cropped = full[(slice(None), *(slice(0, o) for o in out_spatial))]
        if bias is None:
            dest.copy_(cropped)
        else:
            torch.add(cropped, bias, out=dest)


def weight_grad(x: torch.Tensor, gy: torch.Tensor, lo, m: int) -> torch.Tensor:
    """dL/dw as [K, C, 3, ...] (a view): dU = sum over tiles of V^T (A dY A^T), then dw = G^T dU G."""
    nd, n_all = x.dim() - 2, x.shape[0]
    k, c = gy.shape[1], x.shape[1]
    plan = _plan(tuple(x.shape), k, tuple(lo), tuple(gy.shape[2:]), m, x.element_size())
    bt, _, _, at_t, gk_t = transforms(m, nd, x.dtype, x.device)
    a2, m2 = bt.shape[0], m**nd
    zeros = (0,) * nd
    total = None
    for a, b in policy.batch_chunks(n_all, plan.weight_grad_bytes):
        n = b - a
        whole = n == n_all
        v = _input_transform(x if whole else x[a:b], lo, plan.hi, m, plan, bt)  # [a2, n*T, C]
        gy_part = gy if whole else gy[a:b]
        # whole tiles: gather straight from grad_output, whatever its layout; else pad it first
        gyp = channels_last(gy_part) if plan.exact else padded_channels_last(gy_part, zeros, plan.gy_hi)
        g_tiles = torch.empty([m2, n * plan.count, k], dtype=gy.dtype, device=gy.device)
        g_tiles.view([m] * nd + [n, *plan.tiles, k]).copy_(_tile_view(gyp, m, m, plan.tiles))
        del gyp
        dm = torch.mm(at_t, g_tiles.view(m2, -1)).view(a2, -1, k)  # [a2, n*T, K]
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
    if total.dtype != x.dtype:
        gk_t = transforms(m, nd, total.dtype, x.device)[4]
    gw = torch.mm(gk_t, total.view(a2, -1))  # [3^nd, C*K]
    return gw.view([3] * nd + [c, k]).permute(nd + 1, nd, *range(nd))
