"""Per-shape plans for aten::convolution and aten::convolution_backward.

A training step makes the same convolution calls with the same shapes every step. Everything that
depends only on shapes, strides, dtypes and the policy -- the argument checks, the output memory
format, the algorithm of each problem, view geometry, workspace chunks -- is worked out on the
first call and kept as a closure. Later calls cost a dictionary lookup (gemm_conv.py) plus the
closure's tensor operations: host time, not GPU time, bounds small layers.

Ungrouped 2-d problems get the lean plans of im2col2d.py and winograd2d.py; everything else (1d, 3d,
groups, negative padding) runs the general functions of conv_plan.py.
"""
from __future__ import annotations

from typing import Callable

import torch

from navitrain import conv_args, memory_format
from navitrain.conv_args import Geometry
from navitrain.nomiopen_conv import conv_plan, im2col2d, winograd2d
from navitrain.nomiopen_conv.conv_plan import stats

forward_plans: dict = {}
backward_plans: dict = {}
MAX_PLANS = 4096  # a model with ever-changing shapes must not grow the cache without bound


def clear() -> None:
    forward_plans.clear()
    backward_plans.clear()


def remember(plans: dict, key, plan):
    if len(plans) >= MAX_PLANS:
        plans.clear()
    plans[key] = plan
    return plan


def _layout(t: torch.Tensor) -> str:
    return conv_plan._layout_tag(t)


def _fast(x: torch.Tensor, geom: Geometry, lo) -> bool:
    return x.dim() == 4 and geom.groups == 1 and all(p >= 0 for p in lo)


def _counted(label: str, run: Callable) -> Callable:
    def counted(*args):
        stats[label] += 1
        return run(*args)
    return counted


def _choose(problem: str, names, make: Callable[[str], Callable], sample_args, x, k, out_spatial, kernel, key,
            gy_rows_copy=False) -> tuple[str, Callable]:
    built: dict[str, Callable] = {}

    def plan(name):
        if name not in built:
            built[name] = make(name)
        return built[name]

    algo = conv_plan.pick(problem, names, x, k, out_spatial, kernel, key, lambda name: plan(name)(*sample_args),
                          gy_rows_copy)
    return algo, plan(algo)


def forward_problem(x, w, geom: Geometry, lo, out_shape, fmt) -> Callable:
    """run(x, w, bias) -> conv(x, w) + bias of shape out_shape in memory format fmt."""
    if not _fast(x, geom, lo):
        def general(xx, ww, bias):
            out = torch.empty(out_shape, dtype=xx.dtype, device=xx.device, memory_format=fmt)
            conv_plan.conv_forward(xx, ww, bias, geom, lo, out)
            return out
        return general
    names = conv_plan._candidates(w.shape, x.dtype, geom, lo, x.shape[2:], out_shape[2:])

    def make(name):
        if name.startswith("winograd"):
            return winograd2d.forward(x, w, lo, out_shape, fmt, m=int(name[-1]))
        return im2col2d.forward(x, w, geom, lo, out_shape, fmt)

    key = (tuple(x.shape), _layout(x), tuple(w.shape), _layout(w), geom, tuple(lo), tuple(out_shape), str(fmt),
           x.dtype, x.device)
    algo, run = _choose("forward", names, make, (x, w, None), x, w.shape[0], out_shape[2:], w.shape[2:], key)
    return _counted("forward:" + algo, run)


def input_grad_problem(gy, w, geom: Geometry, lo, out_shape, fmt) -> Callable:
    """run(gy, w) -> conv^T(gy, w) of shape out_shape in memory format fmt (the input gradient of
    conv(., w) with padding lo)."""
    if not (_fast(gy, geom, lo) and im2col2d.input_grad_applies(out_shape[2:], lo, gy.shape[2:], w.shape[2:], geom)):
        def general(g, ww):
            out = torch.empty(out_shape, dtype=g.dtype, device=g.device, memory_format=fmt)
            conv_plan.conv_input_grad(g, ww, geom, lo, out)
            return out
        return general
    names = conv_plan.input_grad_candidates(w.shape, gy.dtype, geom, lo)
    reach = [2 - p for p in lo]  # padding of the equivalent convolution with the flipped 3x3 kernel

    def make(name):
        if name.startswith("winograd"):
            return winograd2d.forward(gy, w, reach, out_shape, fmt, m=int(name[-1]), flipped=True)
        return im2col2d.input_grad(gy, w, geom, lo, out_shape, fmt)

    key = (tuple(gy.shape), _layout(gy), tuple(w.shape), _layout(w), geom, tuple(lo), tuple(out_shape), str(fmt),
           gy.dtype, gy.device)
    algo, run = _choose("input_grad", names, make, (gy, w), gy, out_shape[1], out_shape[2:], w.shape[2:], key)
    plain = tuple(w.shape[2:]) == (1, 1) and geom.stride == (1, 1) and not any(lo)
    return _counted("input_grad:" + ("gemm1x1" if plain and algo == "col2im" else algo), run)


def weight_grad_problem(x, gy, geom: Geometry, lo, weight_shape, fmt) -> Callable:
    """run(x, gy) -> dL/dw of conv(x, w) given gy, in memory format fmt."""
    if not _fast(x, geom, lo):
        def general(xx, g):
            out = torch.empty(weight_shape, dtype=xx.dtype, device=xx.device, memory_format=fmt)
            return out.copy_(conv_plan.conv_weight_grad(xx, g, geom, lo, weight_shape))
        return general
    names = conv_plan._candidates(weight_shape, x.dtype, geom, lo, x.shape[2:], gy.shape[2:])

    def make(name):
        if name.startswith("winograd"):
            return winograd2d.weight_grad(x, gy, lo, weight_shape, fmt, m=int(name[-1]))
        return im2col2d.weight_grad(x, gy, geom, lo, weight_shape, fmt)

    key = (tuple(x.shape), _layout(x), tuple(gy.shape), _layout(gy), tuple(weight_shape), geom, tuple(lo), str(fmt),
           x.dtype, x.device)
    algo, run = _choose("weight_grad", names, make, (x, gy), x, gy.shape[1], gy.shape[2:], weight_shape[2:], key,
                        gy_rows_copy=not gy.is_contiguous() and not conv_plan.is_channels_last_dense(gy))
    return _counted("weight_grad:" + algo, run)


def _bias_view(nd: int, out_channels: int) -> tuple:
    return (1, out_channels) + (1,) * nd


def build_forward(input, weight, bias, stride, padding, dilation, transposed, output_padding, groups) -> Callable:
    """run(input, weight, bias) -> aten::convolution's result for tensors shaped like these."""
    args = conv_args.check(input, weight, bias, stride, padding, dilation, transposed, output_padding, groups)
    fmt = memory_format.output_memory_format(input, weight)
    out_shape, geom, lo = args.output_shape, args.geometry, args.padding
    bias_shape = _bias_view(geom.nd, out_shape[1])
    if 0 in out_shape:
        return lambda x, w, b: torch.empty(out_shape, dtype=x.dtype, device=x.device, memory_format=fmt)
    if input.shape[1] == 0 or weight.numel() == 0:
        def nothing_to_sum(x, w, b):
            out = _zeros(out_shape, x, fmt)
            return out if b is None else out.add_(b.view(bias_shape))
        return nothing_to_sum
    if not args.transposed:
        return forward_problem(input, weight, geom, lo, out_shape, fmt)
    run = input_grad_problem(input, weight, geom, lo, out_shape, fmt)
    if bias is None:
        return lambda x, w, b: run(x, w)
    return lambda x, w, b: run(x, w).add_(b.view(bias_shape))


def build_backward(grad_output, input, weight, stride, padding, dilation, transposed, output_padding, groups,
                   output_mask) -> Callable:
    """run(grad_output, input, weight) -> aten::convolution_backward's (grad_input, grad_weight,
    grad_bias) for tensors shaped like these."""
    args = conv_args.check(input, weight, None, stride, padding, dilation, transposed, output_padding, groups)
    if tuple(grad_output.shape) != args.output_shape:
        raise RuntimeError(f"convolution_backward: expected grad_output of size {list(args.output_shape)}, "
                           f"got {list(grad_output.shape)}")
    fmt = memory_format.output_memory_format(input, weight)
    geom, lo = args.geometry, args.padding
    sum_dims = [0, *range(2, grad_output.dim())]
    empty = grad_output.numel() == 0 or input.numel() == 0 or weight.numel() == 0
    grad_input = grad_weight = grad_bias = None
    if output_mask[0]:
        if empty:
            grad_input = lambda g, x, w: _zeros(x.shape, x, fmt)  # noqa: E731
        elif not args.transposed:
            grad_input = _drop_x(input_grad_problem(grad_output, weight, geom, lo, tuple(input.shape), fmt))
        else:
            grad_input = _as_input_grad(forward_problem(grad_output, weight, geom, lo, tuple(input.shape), fmt))
    if output_mask[1]:
        if empty:
            grad_weight = lambda g, x, w: _zeros(w.shape, w, fmt)  # noqa: E731
        elif not args.transposed:
            grad_weight = _swap(weight_grad_problem(input, grad_output, geom, lo, tuple(weight.shape), fmt))
        else:
            # the transposed convolution is the adjoint of a regular one from its output to its input
            grad_weight = _first(weight_grad_problem(grad_output, input, geom, lo, tuple(weight.shape), fmt))
    if output_mask[2]:
        if grad_output.numel():
            grad_bias = lambda g, x, w: g.sum(sum_dims)  # noqa: E731
        else:
            grad_bias = lambda g, x, w: g.new_zeros(g.shape[1])  # noqa: E731
    return _backward_closure(grad_input, grad_weight, grad_bias)


def _zeros(shape, like: torch.Tensor, fmt) -> torch.Tensor:
    return torch.empty(shape, dtype=like.dtype, device=like.device, memory_format=fmt).zero_()


def _drop_x(run):
    return lambda g, x, w: run(g, w)


def _as_input_grad(run):
    return lambda g, x, w: run(g, w, None)


def _swap(run):
    return lambda g, x, w: run(x, g)


def _first(run):
    return lambda g, x, w: run(g, x)


def _backward_closure(gi, gw, gb):
    if gi is not None and gw is not None and gb is None:  # the usual case: no bias (BatchNorm follows)
        return lambda g, x, w: (gi(g, x, w), gw(g, x, w), None)
    return lambda g, x, w: (None if gi is None else gi(g, x, w), None if gw is None else gw(g, x, w),
                            None if gb is None else gb(g, x, w))
