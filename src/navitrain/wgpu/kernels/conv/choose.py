"""Which formulation computes a convolution pass -- the one place that decides.

- 1x1 layers (no padding, one group): plain products (onebyone.py);
- depthwise layers: direct kernels (conv_depthwise.py), timed against the implicit GEMM where the tuner
  runs;
- other grouped layers (ResNeXt, RegNet): direct kernels (conv_grouped/), timed against the implicit
  GEMM where the tuner runs, by conv_grouped.prefer_direct's rule where it does not; the grad-input
  takes strides in one dispatch, before the output phases below;
- strided grad-input (no dilation): one stride-1 grad-input per output phase (grad_input.py), each
  phase decided here again;
- stride-1 3x3 layers: Winograd F(2x2,3x3) where it is faster here (`use_winograd`; the aten handler
  asks, as the transposed case reuses these passes without it);
- everything else: the implicit-GEMM kernels (forward.py, grad_input.py, grad_weight.py), whose tuner
  calls them again with each candidate tile.
"""
from __future__ import annotations

from navitrain import _env
from navitrain.wgpu.kernels import conv_depthwise, conv_grouped, gemm_tuning, pointwise, winograd
from navitrain.wgpu.kernels.conv import onebyone
from navitrain.wgpu.kernels.conv.forward import implicit_forward
from navitrain.wgpu.kernels.conv.geometry import Geometry
from navitrain.wgpu.kernels.conv.grad_input import (
    grad_input_by_phase,
    implicit_grad_input,
)
from navitrain.wgpu.kernels.conv.grad_weight import implicit_grad_weight
from navitrain.wgpu.tensor import WgpuTensor


def forward(x: WgpuTensor, w: WgpuTensor, bias: WgpuTensor | None, g: Geometry, out: WgpuTensor,
            relu: bool = False) -> WgpuTensor:
    """out = conv(x, w) + bias (then ReLU'd with `relu`: in the implicit GEMM's store where that is the
    formulation, else in one pass after the one chosen, which `relu` never changes)."""
    if not _forward_direct(x, w, bias, g, out):
        return implicit_forward(x, w, bias, g, out, relu)
    return _relu_in_place(out) if relu else out


def _forward_direct(x, w, bias, g, out) -> bool:
    """Runs the forward as a 1x1 product or a depthwise or grouped direct kernel where one is chosen;
    whether it did."""
    same = x.dtype == w.dtype == out.dtype and (bias is None or bias.dtype == x.dtype)
    if same and onebyone.eligible(g) and onebyone.forward(x, w, bias, g, out):
        return True
    if conv_depthwise.eligible(g, x, w, bias, out) and conv_depthwise.use_direct(
            "fwd", g, out, lambda: conv_depthwise.forward(x, w, bias, g, out),
            lambda: implicit_forward(x, w, bias, g, out)):
        conv_depthwise.forward(x, w, bias, g, out)
        return True
    if conv_grouped.eligible("fwd", g, x, w, bias, out) and conv_grouped.use_direct(
            "fwd", g, out, lambda: conv_grouped.forward(x, w, bias, g, out),
            lambda: implicit_forward(x, w, bias, g, out)):
        conv_grouped.forward(x, w, bias, g, out)
        return True
    return False


def _relu_in_place(out: WgpuTensor) -> WgpuTensor:
    return pointwise.run("relu", "relu_nan(a)", [out], out.dtype, "f32", out=out)


def forward_relu(x: WgpuTensor, w: WgpuTensor, bias: WgpuTensor | None, g: Geometry,
                 out: WgpuTensor) -> WgpuTensor:
    """out = relu(conv(x, w) + bias) for compiled graphs (fusion_conv_relu.py), Winograd taken where
    ops/conv.py takes it (then one ReLU pass), else forward(relu=True)."""
    stride, padding, dilation = tuple(g.stride), tuple(g.padding), tuple(g.dilation)
    if use_winograd("fwd", x, w, stride, padding, dilation, g.groups, lambda: forward(x, w, bias, g, out),
                    lambda: winograd.conv3x3(x, w, bias, padding[0], out)):
        return _relu_in_place(winograd.conv3x3(x, w, bias, padding[0], out))
    return forward(x, w, bias, g, out, relu=True)


def grad_input(dy: WgpuTensor, w: WgpuTensor, g: Geometry, dx: WgpuTensor) -> WgpuTensor:
    if dy.dtype == w.dtype == dx.dtype and onebyone.eligible(g) and onebyone.grad_input(dy, w, g, dx):
        return dx
    # Depthwise: any kernel size at stride 1 (the output phases below come here too), odd square at 2.
    if (conv_depthwise.eligible(g, dy, w, dx, any_kernel=tuple(g.stride) == (1, 1))
            and conv_depthwise.use_direct("dgrad", g, dx, lambda: conv_depthwise.grad_input(dy, w, g, dx),
                                          lambda: grad_input(dy, w, g, dx))):
        return conv_depthwise.grad_input(dy, w, g, dx)
    if conv_grouped.eligible("dgrad", g, dy, w, dx) and conv_grouped.use_direct(
            "dgrad", g, dx, lambda: conv_grouped.grad_input(dy, w, g, dx), lambda: grad_input(dy, w, g, dx)):
        return conv_grouped.grad_input(dy, w, g, dx)
    if tuple(g.stride) != (1, 1) and tuple(g.dilation) == (1, 1):
        return grad_input_by_phase(dy, w, g, dx, grad_input)
    return implicit_grad_input(dy, w, g, dx)


def grad_weight(dy: WgpuTensor, x: WgpuTensor, g: Geometry, dw: WgpuTensor) -> WgpuTensor:
    if dy.dtype == x.dtype == dw.dtype and onebyone.eligible(g):
        onebyone.grad_weight(dy, x, g, dw)
        return dw
    if conv_depthwise.eligible(g, dy, x, dw) and conv_depthwise.use_direct(
            "wgrad", g, x, lambda: conv_depthwise.grad_weight(dy, x, g, dw),
            lambda: implicit_grad_weight(dy, x, g, dw)):
        return conv_depthwise.grad_weight(dy, x, g, dw)
    if conv_grouped.eligible("wgrad", g, dy, x, dw) and conv_grouped.use_direct(
            "wgrad", g, x, lambda: conv_grouped.grad_weight(dy, x, g, dw),
            lambda: implicit_grad_weight(dy, x, g, dw)):
        return conv_grouped.grad_weight(dy, x, g, dw)
    return implicit_grad_weight(dy, x, g, dw)


def use_winograd(kind, x4, w4, stride, padding, dilation, groups, run_gemm, run_wino) -> bool:
    """Winograd F(2x2,3x3) for stride-1 3x3 layers when it is faster here (timed once per shape class,
    run_gemm and run_wino doing the pass each way), or when NAVITRAIN_WGPU_CONV forces it."""
    exact = ("winograd", kind, tuple(x4.shape), tuple(w4.shape), x4.dtype, w4.dtype, tuple(stride),
             tuple(padding), tuple(dilation), groups, _env.raw(_env.WGPU_CONV), _env.raw(_env.WGPU_TUNE))
    return gemm_tuning.remembered(
        exact, lambda: _use_winograd(kind, x4, w4, stride, padding, dilation, groups, run_gemm, run_wino))


def _use_winograd(kind, x4, w4, stride, padding, dilation, groups, run_gemm, run_wino) -> bool:
    mode = _env.value(_env.WGPU_CONV)
    if mode == "gemm" or not winograd.eligible(x4, w4, stride, dilation, groups, False):
        return False
    if padding[0] != padding[1] or not 0 <= padding[0] <= 2:
        return False
    N, C, H, W = x4.shape
    workspace = 16 * 4 * (C + w4.shape[0]) * N * ((H + 1) // 2) * ((W + 1) // 2)
    if workspace > (1 << 30):  # the transformed tiles would not be worth the memory
        return False
    if mode == "winograd":
        return True
    key = "conv_algo|" + gemm_tuning.shape_class(kind, w4.shape[0], N * H * W, C * 9, 1)
    return gemm_tuning.pick_choice(key, {"gemm": run_gemm, "winograd": run_wino}, "gemm") == "winograd"
