"""Plans for 2-d, ungrouped convolutions as one GEMM over im2col columns, and for their input
gradient as one batched GEMM plus aten's col2im.

A plan is built once per layer shape (sizes, strides, dtype, device) and is a closure that issues
only a handful of tensor operations per call: the columns are one strided copy of the padded input
(an `as_strided` window view copied by `reshape`), and every other operand is a view whose sizes
and strides were worked out when the plan was built.

Not F.unfold: PyTorch's CUDA im2col launches one kernel per image (128 launches for a batch of 128,
most of the time of a stride-2 layer and a large share of the host time). col2im is batched in one
kernel and serves the input gradient.

Column order: the taps are (C, kh, kw) -- the NCHW weight's order -- or (kh, kw, C) -- the
channels-last weight's order -- whichever lets the weight matrix be a view.
"""
from __future__ import annotations

from typing import Callable

import torch

from navitrain.conv_args import Geometry
from navitrain.nomiopen_conv import gemm, policy
from navitrain.nomiopen_conv.layout import batch_slice, is_channels_last_dense, needed_end_padding

CL = torch.channels_last


class Problem:
    """x [n, C, H, W] -> y [n, K, Ho, Wo] with a [kh, kw] kernel: sizes, padding, window geometry."""

    def __init__(self, x_shape, k: int, kernel, out_spatial, geom: Geometry, lo):
        self.n, self.c, self.h, self.w = x_shape
        self.k = k
        self.kh, self.kw = kernel
        self.ho, self.wo = out_spatial
        self.p = self.ho * self.wo
        self.d = self.c * self.kh * self.kw
        hi = needed_end_padding((self.h, self.w), lo, out_spatial, kernel, geom.stride, geom.dilation)
        # a negative end padding only leaves input rows that no window reaches: nothing to crop
        self.pads = [lo[1], max(0, hi[1]), lo[0], max(0, hi[0])]
        self.padded = any(self.pads)
        (self.sh, self.sw), (self.dh, self.dw) = geom.stride, geom.dilation

    def padded_bytes(self, elt: int) -> int:
        if not self.padded:
            return 0
        return elt * self.c * (self.h + self.pads[2] + self.pads[3]) * (self.w + self.pads[0] + self.pads[1])

    def columns(self, x: torch.Tensor, order: str, flat: tuple) -> Callable[[torch.Tensor], torch.Tensor]:
        """A function mapping tensors laid out like x to their im2col columns: the window view with
        dims in `order` (n, c, kernel rows h, kernel cols w, output rows y, output cols x), copied
        into a contiguous tensor of shape `flat` (a view when no copy is needed, e.g. 1x1 stride 1)."""
        probe = torch.constant_pad_nd(x, self.pads) if self.padded else x
        s_n, s_c, s_h, s_w = probe.stride()
        sizes = {"n": x.shape[0], "c": self.c, "h": self.kh, "w": self.kw, "y": self.ho, "x": self.wo}
        strides = {"n": s_n, "c": s_c, "h": self.dh * s_h, "w": self.dw * s_w, "y": self.sh * s_h, "x": self.sw * s_w}
        size, stride = [sizes[d] for d in order], [strides[d] for d in order]
        if self.padded:
            pads = self.pads
            return lambda t: torch.constant_pad_nd(t, pads).as_strided(size, stride).reshape(flat)
        return lambda t: t.as_strided(size, stride).reshape(flat)


def _taps(w: torch.Tensor) -> str | None:
    """Tap order of the weight matrix [K, taps] that w is a view of, or None (not dense)."""
    if w.is_contiguous():
        return "chw"
    if is_channels_last_dense(w):
        return "hwc"
    return None


def _matrix(w: torch.Tensor) -> torch.Tensor:
    """A dense weight (storage order: K, then its taps) as [K, taps]."""
    d = w.stride(0)
    return w.as_strided((w.shape[0], d), (d, 1))


def forward(x: torch.Tensor, w: torch.Tensor, geom: Geometry, lo, out_shape, fmt) -> Callable | None:
    """Plan for out = conv(x, w) + bias, x zero-padded by `lo` at the start (and as far as the windows
    reach at the end), out in memory format `fmt`. None when it does not apply."""
    if x.dim() != 4 or geom.groups != 1 or any(p < 0 for p in lo):
        return None
    s = Problem(tuple(x.shape), w.shape[0], w.shape[2:], out_shape[2:], geom, lo)
    n, k, p, d = s.n, s.k, s.p, s.d
    taps = _taps(w)
    copy_weight = taps is None
    taps = taps or "chw"
    if fmt == CL:
        mode = "rows"  # [n*P, taps] @ [taps, K] is the channels-last output itself
    elif p >= gemm.MIN_PIXELS_PER_IMAGE_GEMM:
        mode = "per_image"  # out[i] = W @ cols_i writes NCHW directly
    else:
        mode = "rows_t"  # images too small for per-image GEMMs: one GEMM, then a transposing copy
    elt = x.element_size()
    chunks = policy.batch_chunks(n, s.padded_bytes(elt) + elt * p * (d + (k if mode == "rows_t" else 0)))
    cl_strides = (p * k, 1, s.wo * k, k)

    def matrix(ww):
        return _matrix(ww.contiguous() if copy_weight else ww)

    def batched(ww, nb):  # the weight matrix for every image: one view with batch stride 0
        return (ww.contiguous() if copy_weight else ww).as_strided((nb, k, d), (0, d, 1))

    def columns(nb):
        sample = x[:nb]
        if mode == "per_image":
            return s.columns(sample, "n" + taps + "yx", (nb, d, p))
        return s.columns(sample, "nyx" + taps, (nb * p, d))

    if len(chunks) == 1:
        cols = columns(n)
        if mode == "per_image":
            def run(xx, ww, bias):
                wm = batched(ww, n)
                if bias is None:
                    return torch.bmm(wm, cols(xx)).view(out_shape)
                return torch.baddbmm(bias.view(1, k, 1), wm, cols(xx)).view(out_shape)
            return run

        def run(xx, ww, bias):
            wt = matrix(ww).t()
            y = torch.mm(cols(xx), wt) if bias is None else torch.addmm(bias, cols(xx), wt)
            y = y.as_strided(out_shape, cl_strides)
            return y if mode == "rows" else y.contiguous()
        return run

    col_fns = {b - a: columns(b - a) for a, b in chunks}

    def run_chunked(xx, ww, bias):
        out = torch.empty(out_shape, dtype=xx.dtype, device=xx.device, memory_format=fmt)
        wm = matrix(ww)
        for a, b in chunks:
            cols = col_fns[b - a](batch_slice(xx, a, b))
            if mode == "per_image":
                torch.bmm(batched(ww, b - a), cols, out=out[a:b].view(b - a, k, p))
            elif mode == "rows":
                torch.mm(cols, wm.t(), out=out.as_strided((n * p, k), (k, 1))[a * p:b * p])
            else:
                out[a:b].copy_(torch.mm(cols, wm.t()).as_strided((b - a, k, s.ho, s.wo), cl_strides))
        if bias is not None:
            out.add_(bias.view(1, k, 1, 1))
        return out
    return run_chunked


def input_grad_applies(out_spatial, lo, gy_spatial, kernel, geom: Geometry) -> bool:
    # col2im pads both ends by `lo`: usable when that yields exactly grad_output's number of windows
    return all(p >= 0 and (s + 2 * p - d * (k - 1) - 1) // st + 1 == o
               for s, p, o, k, st, d in zip(out_spatial, lo, gy_spatial, kernel, geom.stride, geom.dilation))


def input_grad(gy: torch.Tensor, w: torch.Tensor, geom: Geometry, lo, out_shape, fmt) -> Callable | None:
    """Plan for out = conv^T(gy, w), the input gradient of conv(., w) with padding `lo`: columns
    [n, C*kh*kw, P] = W^T gy_i for every image in one batched GEMM, then col2im sums them."""
    if gy.dim() != 4 or geom.groups != 1 or not input_grad_applies(out_shape[2:], lo, gy.shape[2:], w.shape[2:],
                                                                    geom):
        return None
    n, k, ho, wo = gy.shape
    c, h, wd = out_shape[1:]
    p, d = ho * wo, w[0].numel()
    if gy.is_contiguous() or not is_channels_last_dense(gy):
        gy_strides, copy_gy = (k * p, p, 1), not gy.is_contiguous()
    else:
        gy_strides, copy_gy = (p * k, 1, k), False
    copy_weight = not w.is_contiguous()  # col2im wants rows in (C, kh, kw) order: the NCHW weight's
    plain = (tuple(w.shape[2:]) == (1, 1) and all(st == 1 for st in geom.stride) and not any(lo)
             and (h, wd) == (ho, wo))  # a 1x1 stride-1 convolution: the columns are the gradient
    to_cl = fmt == CL
    fold_args = ([h, wd], list(w.shape[2:]), list(geom.dilation), list(lo), list(geom.stride))
    chunks = policy.batch_chunks(n, gy.element_size() * d * p)

    def columns(g, ww, nb):
        g = g.contiguous() if copy_gy else g
        wt = (ww.contiguous() if copy_weight else ww).as_strided((nb, d, k), (0, 1, d))  # W^T for every image
        return torch.bmm(wt, g.as_strided((nb, k, p), gy_strides))

    if len(chunks) == 1:
        def run(g, ww):
            cols = columns(g, ww, n)
            out = cols.view(out_shape) if plain else torch.ops.aten.col2im(cols, *fold_args)
            return out.contiguous(memory_format=CL) if to_cl else out
        return run

    def run_chunked(g, ww):
        out = torch.empty(out_shape, dtype=g.dtype, device=g.device)
        for a, b in chunks:
            cols = columns(batch_slice(g, a, b), ww, b - a)
            if plain:
                out[a:b].copy_(cols.view(b - a, c, h, wd))
            else:
                torch.ops.aten.col2im.out(cols, *fold_args, out=out[a:b])
        return out.contiguous(memory_format=CL) if to_cl else out
    return run_chunked


def weight_grad(x: torch.Tensor, gy: torch.Tensor, geom: Geometry, lo, weight_shape, fmt) -> Callable | None:
    """Plan for dL/dw [K, C, kh, kw] in memory format `fmt`: grad_output times the columns, reduced
    over every pixel of the batch by one GEMM, or by per-image GEMMs summed when those partial
    results are smaller than a transposed copy of an NCHW grad_output."""
    if x.dim() != 4 or geom.groups != 1 or any(p < 0 for p in lo):
        return None
    k = weight_shape[0]
    s = Problem(tuple(x.shape), k, weight_shape[2:], gy.shape[2:], geom, lo)
    n, p, d = s.n, s.p, s.d
    taps = "hwc" if fmt == CL else "chw"  # the result is then the weight in its memory format
    w_strides = (d, 1, s.kw * s.c, s.c) if taps == "hwc" else (d, s.kh * s.kw, s.kw, 1)
    if gy.is_contiguous() and d <= p:
        mode = "per_image"
    elif is_channels_last_dense(gy):
        mode = "rows"  # grad_output is [n*P, K] as it is
    else:
        mode = "copy"  # grad_output copied to [K, n*P]
    cols_rows = is_channels_last_dense(x) and not x.is_contiguous()  # gather along contiguous channels
    elt = x.element_size()
    extra = {"per_image": k * d, "rows": 0, "copy": k * p}[mode]
    chunks = policy.batch_chunks(n, s.padded_bytes(elt) + elt * (p * d + extra))

    def partial(nb):
        """(x chunk, gy chunk) -> their [K, taps] contribution."""
        rows = nb * p
        sample = x[:nb]
        if mode == "per_image":
            cols = s.columns(sample, "n" + taps + "yx", (nb, d, p))
            g3 = (nb, k, p)
            return lambda xc, gc: torch.bmm(gc.view(g3), cols(xc).transpose(1, 2)).sum(0)
        if cols_rows:
            cols = s.columns(sample, "nyx" + taps, (rows, d))
        else:
            cols = s.columns(sample, taps + "nyx", (d, rows))
        if mode == "rows":
            g_t = lambda gc: gc.as_strided((k, rows), (1, k))  # noqa: E731
        else:
            g_t = lambda gc: gc.transpose(0, 1).reshape(k, rows)  # noqa: E731
        split = policy.split_k(x.device, rows, k, d)
        while split > 1 and rows % split:
            split //= 2
        if split == 1:
            if cols_rows:
                return lambda xc, gc: torch.mm(g_t(gc), cols(xc))
            return lambda xc, gc: torch.mm(g_t(gc), cols(xc).t())
        # explicit split-K: the reduction over rows cut into `split` slices, one bmm, then a sum. The
        # strides come from samples: the columns can be a view of x itself (e.g. a 1x1 kernel).
        r = rows // split
        (g_k, g_r), c_st = g_t(gy[:nb]).stride(), cols(sample).stride()
        c_r, c_d = c_st if cols_rows else c_st[::-1]
        g_split = (split, k, r), (r * g_r, g_k, g_r)
        c_split = (split, r, d), (r * c_r, c_r, c_d)
        return lambda xc, gc: torch.bmm(g_t(gc).as_strided(*g_split), cols(xc).as_strided(*c_split)).sum(0)

    dtype = x.dtype  # closures keep shapes and dtypes, never the sample tensors (a batch of activations)

    def shape(total):
        if total.dtype != dtype:
            total = total.to(dtype)
        return total.as_strided(weight_shape, w_strides)

    if len(chunks) == 1:
        part = partial(n)
        return lambda xx, g: shape(part(xx, g))

    parts = {b - a: partial(b - a) for a, b in chunks}
    half = dtype in (torch.float16, torch.bfloat16)

    def run_chunked(xx, g):
        total = None
        for a, b in chunks:
            piece = parts[b - a](batch_slice(xx, a, b), batch_slice(g, a, b))
            if total is None:
                # half-precision partial sums are added in float32 so chunking does not cost accuracy
                total = piece.float() if half else piece
            else:
                total.add_(piece)
        return shape(total)
    return run_chunked
