"""The two GEMM shapes every convolution algorithm here ends in.

`rows_into`: pixel rows times a weight matrix, written straight into the output's memory whatever its
layout (channels-last output: one mm; NCHW output: one bmm per chunk, transposed by BLAS for free).
`rows_t_rows`: the weight-gradient reduction over all pixels, with explicit split-K.
"""
from __future__ import annotations

import torch

from navitrain.nomiopen_conv import policy
from navitrain.nomiopen_conv.layout import channels_last

# Per-image GEMMs write NCHW directly but their N dimension is the image's pixel count; below this
# a GEMM tile is mostly empty, and one big GEMM over all pixels plus a transposing copy is faster.
MIN_PIXELS_PER_IMAGE_GEMM = 64


def add_bias(out: torch.Tensor, bias: torch.Tensor | None) -> None:
    if bias is not None:
        out.add_(bias.view(1, -1, *([1] * (out.dim() - 2))))


def rows_into(out: torch.Tensor, cols: torch.Tensor, wm: torch.Tensor, bias: torch.Tensor | None) -> None:
    """out[n, K, *S] = cols @ wm^T (+ bias) for each group.

    cols: [M, D] (groups == 1) or [M, g, D], M = n * prod(S) pixel rows in channels-last order;
    wm: [g, K/g, D]."""
    g, kg, d = wm.shape
    n, k = out.shape[0], out.shape[1]
    m = cols.shape[0]
    out_cl = channels_last(out)
    if out_cl.is_contiguous():
        dest = out_cl.view(m, k)
        if g == 1:
            if bias is not None:
                torch.addmm(bias, cols, wm[0].t(), out=dest)  # cuBLASLt fuses the bias
                return
            torch.mm(cols, wm[0].t(), out=dest)
            return
        # group j's result goes to columns [j*kg, (j+1)*kg) of every row: a bmm whose output has ld = K
        torch.bmm(cols.transpose(0, 1), wm.transpose(1, 2), out=dest.view(m, g, kg).transpose(0, 1))
    elif g == 1 and out.is_contiguous() and m // n >= MIN_PIXELS_PER_IMAGE_GEMM:
        # NCHW output: out[i] = wm @ cols_i^T per image; the weight is broadcast with batch stride 0
        p = m // n
        torch.bmm(wm[0].expand(n, kg, d), cols.view(n, p, d).transpose(1, 2), out=out.view(n, k, p))
    else:
        result = cols @ wm[0].t() if g == 1 else torch.bmm(cols.transpose(0, 1), wm.transpose(1, 2)).transpose(0, 1)
        out_cl.copy_(result.reshape(out_cl.shape))
    add_bias(out, bias)


def rows_t_rows(a: torch.Tensor, b: torch.Tensor, groups: int) -> torch.Tensor:
    """sum over pixel rows of a^T b, per group: [g, A/g, B/g] from a [M, A] and b [M, B] (b may also
    be [M, g, B/g]). The reduction over M is split into slices computed as one bmm when the result
    alone would leave the GPU idle."""
    m = a.shape[0]
    if groups == 1:
        b2 = b.reshape(m, -1)
        split = policy.split_k(a.device, m, a.shape[1], b2.shape[1])
        if split > 1:
            part = torch.bmm(a.view(split, m // split, -1).transpose(1, 2), b2.view(split, m // split, -1))
            return part.sum(0, keepdim=True)
        return (a.t() @ b2).unsqueeze(0)
    ag = a.view(m, groups, -1).permute(1, 2, 0)  # [g, A/g, M], column-major per group: a valid operand
    bg = b.view(m, groups, -1).transpose(0, 1)  # [g, M, B/g]
    return torch.bmm(ag, bg)
