"""1x1 convolutions (no padding, one group) as plain matrix products.

A 1x1 convolution is a GEMM over channels: per image y[n] = W @ x[n] with x[n] seen as [C, H*W] (NCHW)
or, channels_last, Y = X @ W^T with X = [N*H*W, C]. Through the general implicit-GEMM kernels these
layers ran at 5-19% of cuBLAS on the H200 (run 7: every load of the gathered operand is a bounds-checked
scalar, K is only C long, and the weight gradient's output is too small to fill the GPU), while as
plain products they get 16-byte loads, tuned tiles and split-K. In NCHW the "product" runs over all
N*H*W positions at once through the implicit-GEMM passes with gather-free operands (ImagePositions,
GradOutRows), not one product per image: at 4x4 images a per-image product was 16 columns wide.
A stride s only subsamples the image: forward and weight gradient read x[:, :, ::s, ::s] either in
place (scalar loads two elements apart) or from a compact copy (16-byte loads, plus the copy pass),
whichever the tuner timed faster on this adapter for the shape; the input gradient is the product
written into a compact buffer and scattered into a zeroed dx.
"""
from __future__ import annotations

import torch

from navitrain.wgpu.kernels import gemm, gemm_tuning
from navitrain.wgpu.kernels.conv.forward import implicit_forward
from navitrain.wgpu.kernels.conv.geometry import unit_stride_1x1
from navitrain.wgpu.kernels.conv.grad_input import implicit_grad_input
from navitrain.wgpu.kernels.conv.grad_weight import implicit_grad_weight
from navitrain.wgpu.kernels.copy import copy_into, fill
from navitrain.wgpu.tensor import WgpuTensor, empty, is_channels_last


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


def _compact(t: WgpuTensor, nhwc: bool, stride: tuple) -> WgpuTensor:
    """t subsampled by the stride, as a plain matrix view (copying only when needed)."""
    if stride != (1, 1):
        t = t[:, :, ::stride[0], ::stride[1]]
    m = _image_matrix(t, nhwc)
    if m is None:
        t = t.contiguous(memory_format=torch.channels_last if nhwc else torch.contiguous_format)
        m = _image_matrix(t, nhwc)
    return m


def _weight(w: WgpuTensor) -> WgpuTensor:
    """The [OC, C, 1, 1] weight as an [OC, C] matrix view, whatever its memory format."""
    return w.as_strided([w.shape[0], w.shape[1]], [w.stride(0), w.stride(1)], w.storage_offset())


def _on_subsampled(x: WgpuTensor, stride: tuple, pass_name: str, run) -> None:
    """run(image) with image = x subsampled by the stride, read in place when that is faster here."""
    view = x[:, :, ::stride[0], ::stride[1]] if stride != (1, 1) else x
    if _image_matrix(view, False) is not None:      # already a plain [N, C, H*W] view: nothing to choose
        run(view)
        return
    key = f"conv1x1_read|{pass_name}|{tuple(x.shape)}|{tuple(x.stride())}|{stride}"
    choice = gemm_tuning.pick_choice(
        key, {"in_place": lambda: run(view), "compact": lambda: run(view.contiguous())}, "compact")
    run(view if choice == "in_place" else view.contiguous())


def forward(x: WgpuTensor, w: WgpuTensor, bias: WgpuTensor | None, g, out: WgpuTensor, stats=None) -> bool:
    """out = conv1x1(x, w) + bias; False (nothing done) when `out` cannot be written as a plain matrix.
    `stats`: as implicit_forward's (NCHW only; channels_last ignores it)."""
    nhwc = is_channels_last(out)
    if not nhwc:    # [OC, C] @ [C, N*P], the positions of all images as one set of columns
        _on_subsampled(x, tuple(g.stride), "forward",
                       lambda image: implicit_forward(image, w, bias, unit_stride_1x1(g), out, stats=stats))
        return True
    o = _image_matrix(out, nhwc)
    if o is None:
        return False
    xm, wm = _compact(x, nhwc, g.stride), _weight(w)
    # [P, C] @ [C, OC]; a bias is one value per column
    gemm.gemm(xm, wm.t(), o, beta=1.0 if bias is not None else 0.0, cin=bias, cin_strides=(0, 1, 0))
    return True


def grad_input(dy: WgpuTensor, w: WgpuTensor, g, dx: WgpuTensor) -> bool:
    nhwc = is_channels_last(dx)
    wm = _weight(w)
    strided = tuple(g.stride) != (1, 1)
    target = dx
    if strided:     # the product goes to a compact buffer first
        shape = [g.N, g.C, g.OH, g.OW]
        strides = [g.OH * g.OW * g.C, 1, g.OW * g.C, g.C] if nhwc else None
        target = empty(shape, dx.dtype, strides)
    if nhwc:        # [P, OC] @ [OC, C]
        o = _image_matrix(target, nhwc)
        if o is None:
            return False
        gemm.gemm(_compact(dy, nhwc, (1, 1)), wm, o)
    else:           # [C, OC] @ [OC, N*P]
        implicit_grad_input(dy, w, unit_stride_1x1(g), target)
    if strided:     # only every s-th input position received a gradient
        fill(dx, 0.0)
        copy_into(dx[:, :, ::g.stride[0], ::g.stride[1]], target)
    return True


def grad_weight(dy: WgpuTensor, x: WgpuTensor, g, dw: WgpuTensor) -> None:
    """dW[oc, c] = sum over images and positions of dy[n, oc, p] * x[n, c, p]: one product with
    K = N*OH*OW, long and thin, so it is split along K."""
    nhwc = is_channels_last(x)
    if nhwc:        # dy^T [OC, P] @ x [P, C]
        dym = _compact(dy, True, (1, 1))
        xm = _compact(x, True, g.stride)
        gemm.gemm(dym.t(), xm, _weight(dw))
        return
    # NCHW: K runs over (n, position), not one stride; the grad-weight kernel walks it with carries
    # (operands.GradOutRows) for both operands, so no channel-major copies are needed (run 8: those copies
    # were 15-36 us of 80-146 us).
    _on_subsampled(x, tuple(g.stride), "grad_weight",
                   lambda image: implicit_grad_weight(dy, image, unit_stride_1x1(g), dw))
