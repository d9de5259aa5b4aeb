"""1x1 convolutions (no padding, one group) as plain matrix products.

A 1x1 convolution is a GEMM over channels: per image y[n] = W @ x[n] with x[n] seen as [C, H*W] (NCHW)
or, channels_last, Y = X @ W^T with X = [N*H*W, C]. Through the general implicit-GEMM kernels these
layers ran at 5-19% of cuBLAS on the H200 (run 7: every load of the gathered operand is a bounds-checked
scalar, K is only C long, and the weight gradient's output is too small to fill the GPU), while as
plain products they get 16-byte loads, tuned tiles and split-K. In NCHW the "product" runs over all
N*H*W positions at once through the implicit-GEMM passes with gather-free operands (ImagePositions,
GradOutRows), not one product per image: at 4x4 images a per-image product was 16 columns wide.
A stride s only subsamples the image: forward and weight gradient read x[:, :, ::s, ::s] in place
through its strides, and the input gradient's product is written straight into dx[:, :, ::s, ::s] with
the positions no tap reaches zero-filled, so dx is written once (a compact copy of x, or a compact
gradient scattered into a zeroed dx, moved the activation again). In NCHW at stride 2, aligned with
OW a multiple of 4, four positions are two 16-byte loads keeping every other element: the odd columns
share the even ones' memory sectors, so this moves no more DRAM traffic than 16-byte loads of a copy.
Channels_last strided layers take the same implicit-GEMM passes with positions read through their
strides and four channels per 16-byte load (a strided view is no plain matrix for gemm.gemm).
"""
from __future__ import annotations

import torch

from navitrain.wgpu.kernels import gemm
from navitrain.wgpu.kernels.conv.forward import implicit_forward
from navitrain.wgpu.kernels.conv.geometry import unit_stride_1x1
from navitrain.wgpu.kernels.conv.grad_input import implicit_grad_input
from navitrain.wgpu.kernels.conv.grad_weight import implicit_grad_weight
from navitrain.wgpu.kernels.copy import fill
from navitrain.wgpu.tensor import WgpuTensor, is_channels_last


def eligible(g) -> bool:
    return (g.KH == 1 and g.KW == 1 and tuple(g.padding) == (0, 0) and g.groups == 1
            and g.OH == (g.H - 1) // g.stride[0] + 1 and g.OW == (g.W - 1) // g.stride[1] + 1)


def _image_matrix(t: WgpuTensor, nhwc: bool):
    """t as [N, C, H*W] (NCHW) or [N*H*W, C] (channels_last) when its layout allows a plain view."""
    N, C, H, W = t.shape
    s0, s1, s2, s3 = t.stride()
    if nhwc and s1 == 1 and s3 == C and s2 == W * C and (N == 1 or s0 == H * W * C):
        return t.as_strided([N * H * W, C], [C, 1], t.storage_offset())
    if not nhwc and s3 == 1 and s2 == W and (C == 1 or s1 == H * W):
        return t.as_strided([N, C, H * W], [s0, s1, 1], t.storage_offset())
    return None


def _compact(t: WgpuTensor, nhwc: bool) -> WgpuTensor:
    """t as a plain matrix view (copying only when its layout allows none)."""
    m = _image_matrix(t, nhwc)
    if m is None:
        t = t.contiguous(memory_format=torch.channels_last if nhwc else torch.contiguous_format)
        m = _image_matrix(t, nhwc)
    return m


def _weight(w: WgpuTensor) -> WgpuTensor:
    """The [OC, C, 1, 1] weight as an [OC, C] matrix view, whatever its memory format."""
    return w.as_strided([w.shape[0], w.shape[1]], [w.stride(0), w.stride(1)], w.storage_offset())


def _subsampled(x: WgpuTensor, stride: tuple) -> WgpuTensor:
    """x[:, :, ::sh, ::sw] as a view (the kernels read it in place through its strides)."""
    if stride == (1, 1):
        return x
    return x.as_strided([x.shape[0], x.shape[1], -(-x.shape[2] // stride[0]), -(-x.shape[3] // stride[1])],
                        [x.stride(0), x.stride(1), x.stride(2) * stride[0], x.stride(3) * stride[1]],
                        x.storage_offset())


def _zero_untouched(dx: WgpuTensor, stride: tuple) -> None:
    """Zeros into the positions of dx a strided 1x1 layer never reads (rows or columns off the stride):
    with the product written into dx[:, :, ::sh, ::sw], every element of dx is written exactly once."""
    sh, sw = stride
    for a in range(1, min(sh, dx.shape[2])):        # whole rows between the strided ones
        fill(dx[:, :, a::sh, :], 0.0)
    for b in range(1, min(sw, dx.shape[3])):        # the other columns of the strided rows
        fill(dx[:, :, ::sh, b::sw], 0.0)


def forward(x: WgpuTensor, w: WgpuTensor, bias: WgpuTensor | None, g, out: WgpuTensor, stats=None) -> bool:
    """out = conv1x1(x, w) + bias; False (nothing done) when `out` cannot be written as a plain matrix.
    `stats`: as implicit_forward's (NCHW only; channels_last ignores it)."""
    nhwc = is_channels_last(out)
    stride = tuple(g.stride)
    if not nhwc or stride != (1, 1):   # NCHW: [OC, C] @ [C, N*P]; channels_last: [N*P, C] @ [C, OC]
        implicit_forward(_subsampled(x, stride), w, bias, unit_stride_1x1(g), out, stats=stats)
        return True
    o = _image_matrix(out, nhwc)
    if o is None:
        return False
    xm, wm = _compact(x, nhwc), _weight(w)
    # [P, C] @ [C, OC]; a bias is one value per column
    gemm.gemm(xm, wm.t(), o, beta=1.0 if bias is not None else 0.0, cin=bias, cin_strides=(0, 1, 0))
    return True


def grad_input(dy: WgpuTensor, w: WgpuTensor, g, dx: WgpuTensor) -> bool:
    nhwc = is_channels_last(dx)
    stride = tuple(g.stride)
    if not nhwc or stride != (1, 1):   # written in place into the strided positions of dx
        implicit_grad_input(dy, w, unit_stride_1x1(g), _subsampled(dx, stride))
        if stride != (1, 1):
            _zero_untouched(dx, stride)
        return True
    o = _image_matrix(dx, nhwc)     # [P, OC] @ [OC, C]
    if o is None:
        return False
    gemm.gemm(_compact(dy, nhwc), _weight(w), o)
    return True


def grad_weight(dy: WgpuTensor, x: WgpuTensor, g, dw: WgpuTensor) -> None:
    """dW[oc, c] = sum over images and positions of dy[n, oc, p] * x[n, c, p]: one product with
    K = N*OH*OW, long and thin, so it is split along K."""
    nhwc = is_channels_last(x)
    stride = tuple(g.stride)
    if nhwc and stride == (1, 1):   # dy^T [OC, P] @ x [P, C]
        gemm.gemm(_compact(dy, True).t(), _compact(x, True), _weight(dw))
        return
    # NCHW, or a strided view: K runs over (n, position), not one stride; the grad-weight kernel walks it
    # with carries (operands.GradOutRows) for both operands, so no channel-major copies are needed (run 8:
    # those copies were 15-36 us of 80-146 us).
    implicit_grad_weight(dy, _subsampled(x, stride), unit_stride_1x1(g), dw)
