"""Plans for 2-d Winograd F(m x m, 3 x 3) convolutions (stride 1, undilated, ungrouped): forward,
input gradient and weight gradient, each a fixed sequence of about a dozen tensor operations built
once per layer shape (see winograd.py for the algorithm and its matrices).

Layouts: channels-last problems keep the channels innermost ("rows": tiles x channels operands);
NCHW problems keep the tile positions innermost ("cols": channels x tiles), so the gathers read
along image rows and no operand needs a transposing copy. The input gradient uses the transform of
the flipped kernel, G with its 9 taps reversed, applied to the weight as it is: no flipped copy.
"""
from __future__ import annotations

import functools
import math
from typing import Callable

import torch

from navitrain.nomiopen_conv import policy, winograd
from navitrain.nomiopen_conv.layout import batch_slice, is_channels_last_dense

CL = torch.channels_last


@functools.lru_cache(maxsize=32)
def _matrices(m: int, dtype: torch.dtype, device: torch.device):
    """(B^T, G, G with reversed taps, A^T, A) of F(m x m, 3 x 3) as contiguous tensors."""
    bt, gk, at, at_t, _ = winograd.transforms(m, 2, dtype, device)
    return bt, gk, gk.flip(1).contiguous(), at, at_t


def applies(x_shape, w_shape, lo, geom, dtype: torch.dtype) -> bool:
    return (len(x_shape) == 4 and geom.groups == 1 and tuple(w_shape[2:]) == (3, 3) and geom.stride == (1, 1)
            and geom.dilation == (1, 1) and dtype.is_floating_point and all(p >= 0 for p in lo))


class _Tiles:
    """Tiling of an [n, Cin, H, W] input producing [n, Cout, Ho, Wo] in m x m output tiles."""

    def __init__(self, x_shape, out_spatial, lo, m: int):
        self.m, self.a = m, m + 2
        self.n, self.cin, self.h, self.w = x_shape
        self.ho, self.wo = out_spatial
        self.th, self.tw = math.ceil(self.ho / m), math.ceil(self.wo / m)
        self.exact = self.th * m == self.ho and self.tw * m == self.wo
        # input padding so that every tile's (m+2) x (m+2) patch exists
        self.pads = [lo[1], m * self.tw + 2 - self.w - lo[1], lo[0], m * self.th + 2 - self.h - lo[0]]
        self.tiles = self.n * self.th * self.tw

    def gather(self, x: torch.Tensor, order: str, size: int, step: int, nb: int, pads=None, split: int = 1):
        """A function t -> the (size x size) patches of t every `step` pixels, copied into a
        [size*size, rest] matrix whose column dims follow `order` (n, c, tile rows y, tile cols x;
        s and b split n into split x n/split)."""
        pads = self.pads if pads is None else pads
        padded = any(pads)
        probe = torch.constant_pad_nd(x, pads) if padded else x
        s_n, s_c, s_h, s_w = probe.stride()
        sizes = {"n": nb, "c": x.shape[1], "y": self.th, "x": self.tw}
        strides = {"n": s_n, "c": s_c, "y": step * s_h, "x": step * s_w}
        if "s" in order:
            sizes.update(s=split, b=nb // split)
            strides.update(s=s_n * (nb // split), b=s_n)
        view_size = [size, size] + [sizes[d] for d in order]
        view_stride = [s_h, s_w] + [strides[d] for d in order]
        flat = (size * size, -1)
        if padded:
            return lambda t: torch.constant_pad_nd(t, pads).as_strided(view_size, view_stride).reshape(flat)
        return lambda t: t.as_strided(view_size, view_stride).reshape(flat)


def _weight_transform(w: torch.Tensor, gk: torch.Tensor):
    """(function w -> U, strides of U as (t, k, c)): U[t, k, c] = sum_j gk[t, j] w[k, c, j]."""
    k, c = w.shape[:2]
    a2 = gk.shape[0]
    if w.is_contiguous():
        return (lambda ww: torch.mm(gk, ww.as_strided((9, k * c), (1, 9)))), (k * c, c, 1)
    if is_channels_last_dense(w):
        g3 = gk.expand(k, a2, 9)
        return (lambda ww: torch.bmm(g3, ww.as_strided((k, 9, c), (9 * c, c, 1)))), (c, a2 * c, 1)
    return (lambda ww: torch.mm(gk, ww.contiguous().as_strided((9, k * c), (1, 9)))), (k * c, c, 1)


def forward(x: torch.Tensor, w: torch.Tensor, lo, out_shape, fmt, m: int, flipped: bool = False) -> Callable:
    """Plan for out = conv(x, w) + bias (flipped=False; x [n, C, H, W], w [K, C, 3, 3]) or for the
    input gradient out = conv^T(x, w) of a stride-1 convolution (flipped=True; x is grad_output
    [n, K, Ho, Wo] and `lo` the padding of the equivalent convolution with the flipped kernel)."""
    t = _Tiles(tuple(x.shape), out_shape[2:], lo, m)
    a, a2, m2 = t.a, t.a**2, m * m
    k, c = w.shape[:2]
    cin, cout = (k, c) if flipped else (c, k)
    bt, gk, gk_flipped, at, _ = _matrices(m, x.dtype, x.device)
    transform, (u_t, u_k, u_c) = _weight_transform(w, gk_flipped if flipped else gk)
    rows = fmt == CL
    elt = x.element_size()
    per_image = elt * (t.th * t.tw) * (4 * a2 * max(cin, cout) + m2 * cout) + elt * (t.h + 4) * (t.w + 4) * cin
    chunks = policy.batch_chunks(t.n, per_image)
    # the GEMM operand U[t] as [Cin, Cout] (rows) or [Cout, Cin] (cols)
    u_in, u_out = (u_k, u_c) if flipped else (u_c, u_k)
    if rows:
        u_view = (a2, cin, cout), (u_t, u_in, u_out)
    else:
        u_view = (a2, cout, cin), (u_t, u_out, u_in)
    full_shape = out_shape if t.exact else (t.n, cout, m * t.th, m * t.tw)

    def steps(nb):
        gather = t.gather(x[:nb], "nyxc" if rows else "cnyx", a, m, nb)
        tiles = nb * t.th * t.tw
        v3 = (a2, tiles, cin) if rows else (a2, cin, tiles)
        y_dims = (nb, t.th, t.tw, cout) if rows else (cout, nb, t.th, t.tw)
        probe = torch.empty((nb, *full_shape[1:]), dtype=x.dtype, device="meta", memory_format=fmt)
        o_n, o_c, o_h, o_w = probe.stride()
        o_dim = {"n": o_n, "c": o_c, "y": m * o_h, "x": m * o_w}
        tile_view = ((m, m, *y_dims), (o_h, o_w, *(o_dim[d] for d in ("nyxc" if rows else "cnyx"))))
        y6 = (m, m, *y_dims)
        b6 = (1, 1, 1, 1, 1, cout) if rows else (1, 1, cout, 1, 1, 1)

        def run(xc, u, bias, dest):
            v = torch.mm(bt, gather(xc)).view(v3)
            prods = torch.bmm(v, u) if rows else torch.bmm(u, v)
            y = torch.mm(at, prods.view(a2, -1)).view(y6)
            tiles_out = dest.as_strided(*tile_view)
            if bias is None:
                tiles_out.copy_(y)
            else:
                torch.add(y, bias.view(b6), out=tiles_out)
        return run

    run_chunk = {b - a_: steps(b - a_) for a_, b in chunks}
    whole = len(chunks) == 1
    crop = (slice(None), slice(None), slice(0, out_shape[2]), slice(0, out_shape[3]))

    def run(xx, ww, bias=None):
        u = transform(ww).as_strided(*u_view)
        full = torch.empty(full_shape, dtype=xx.dtype, device=xx.device, memory_format=fmt)
        for a_, b in chunks:
            run_chunk[b - a_](xx if whole else xx[a_:b], u, bias, full if whole else full[a_:b])
        return full if t.exact else full[crop].contiguous(memory_format=fmt)
    return run


def weight_grad(x: torch.Tensor, gy: torch.Tensor, lo, weight_shape, fmt, m: int) -> Callable:
    """Plan for dL/dw [K, C, 3, 3] in memory format `fmt`: dU[t] = sum over tiles of (A dY A^T)
    times the input tiles V, then dw = G^T dU G."""
    k, c = weight_shape[:2]
    t = _Tiles(tuple(x.shape), gy.shape[2:], lo, m)
    a2, m2 = t.a**2, m * m
    bt, gk, _, _, at_t = _matrices(m, x.dtype, x.device)
    rows = is_channels_last_dense(x) and not x.is_contiguous()
    elt = x.element_size()
    per_image = elt * (t.th * t.tw) * (2 * a2 * c + (a2 + m2) * k) + elt * (t.h + 4) * (t.w + 4) * c
    chunks = policy.batch_chunks(t.n, per_image)
    gy_pads = [0, m * t.tw - t.wo, 0, m * t.th - t.ho]
    if fmt == CL:
        g3 = gk.t().expand(k, 9, a2)

        def finish(du):  # [K, 9, C] is the channels-last weight
            return torch.bmm(g3, du.as_strided((k, a2, c), (c, k * c, 1))).as_strided(
                weight_shape, (9 * c, 1, 3 * c, c))
    else:
        def finish(du):  # [K*C, 9] is the NCHW weight
            return torch.mm(du.as_strided((k * c, a2), (1, k * c)), gk).view(weight_shape)

    def steps(nb):
        tiles = nb * t.th * t.tw
        split = policy.split_k(x.device, tiles, c * a2, k)
        while split > 1 and nb % split:
            split //= 2
        order = "sbyxc" if rows else "scbyx"
        gather_x = t.gather(x[:nb], order, t.a, m, nb, split=split)
        gather_gy = t.gather(gy[:nb], order, m, m, nb, pads=gy_pads, split=split)
        r = tiles // split
        b = a2 * split
        if rows:  # per (t, slice): dM [r, K]^T @ V [r, C]; dm and v are fresh contiguous products
            lhs, rhs = ((b, k, r), (r * k, 1, k)), ((b, r, c), (r * c, c, 1))
        else:  # per (t, slice): dM [K, r] @ V [C, r]^T
            lhs, rhs = ((b, k, r), (k * r, r, 1)), ((b, r, c), (c * r, 1, r))
        pair = lambda dm, v: torch.bmm(dm.as_strided(*lhs), v.as_strided(*rhs))  # noqa: E731
        if split == 1:
            reduce = lambda p: p  # noqa: E731
        else:
            reduce = lambda p: p.view(a2, split, k, c).sum(1)  # noqa: E731

        def run(xc, gc):
            v = torch.mm(bt, gather_x(xc))
            dm = torch.mm(at_t, gather_gy(gc))
            return reduce(pair(dm, v))  # [a2, K, C]
        return run

    run_chunk = {b - a_: steps(b - a_) for a_, b in chunks}
    dtype = x.dtype  # closures keep shapes and dtypes, never the sample tensors (a batch of activations)
    half = dtype in (torch.float16, torch.bfloat16)

    if len(chunks) == 1:
        only = run_chunk[t.n]
        return lambda xx, g: finish(only(xx, g))

    def run_chunked(xx, g):
        total = None
        for a_, b in chunks:
            part = run_chunk[b - a_](batch_slice(xx, a_, b), batch_slice(g, a_, b))
            if total is None:
                total = part.float() if half else part
            else:
                total.add_(part)
        if total.dtype != dtype:
            total = total.to(dtype)
        return finish(total)
    return run_chunked
