"""Backward ops of resampling and margin losses, on the device.

grid_sampler_2d_backward: bilinear and nearest run grid_sampler_3d_backward's kernel on a depth-1 view
(input [N, C, 1, H, W], grid with z = 0: that z lands on depth 0 with weight 1 for every padding mode and
corner rule, and its gradient is dropped). A non-finite grid or output gradient takes the counted CPU
fallback instead (one read-back decides): there the CPU's 2-d and 3-d kernels give different answers.

Bicubic grid sampling (2-d only) and upsample_bicubic2d_backward have no kernel of their own: the
gradient is taken by differentiating PyTorch's decomposition of the forward op on the device (`_vjp`),
so every piece runs on existing wgpu handlers (gathers forward, accumulating index_put backward).
Bicubic grid sampling of non-finite values falls back, counted (the decomposition multiplies the taps
the CPU skips by 0, and 0 * inf is NaN); same-size bicubic is a copy, as on the CPU.

upsample_trilinear3d_backward is separable: bilinear backward over (H, W) of every depth slice, then
linear backward along D, both existing gather kernels (NaN reaches the same 2 x 2 x 2 taps as the CPU's
scatter). The margin-loss backwards are the CPU kernels' formulas written with aten ops.

Why `_vjp` lifts the dispatch-key guard: a __torch_dispatch__ handler runs below autograd (PyTorch
excludes the autograd keys for everything it calls), so a decomposition called here would record no
graph. The guard re-admits autograd for the decomposition only; the gradient ops it then runs come back
through the op table like any other.
"""
from __future__ import annotations

import torch
from torch._decomp import decomposition_table

from navitrain.wgpu.dispatch import cpu_fallback, implements
from navitrain.wgpu.ops import grid_sample3d
from navitrain.wgpu.tensor import to_cpu

aten = torch.ops.aten
_AUTOGRAD_KEYS = (torch._C.DispatchKey.ADInplaceOrView, torch._C.DispatchKey.AutogradPrivateUse1,
                  torch._C.DispatchKey.AutogradOther)


def _vjp(forward_op, differentiable: dict[int, torch.Tensor], args: tuple, grad_output: torch.Tensor):
    """Gradients of forward_op(*args) with respect to args[i] for i in `differentiable` (which holds
    those arguments), given the output gradient, computed by autograd over PyTorch's decomposition."""
    included = torch._C._dispatch_tls_local_include_set()
    excluded = torch._C._dispatch_tls_local_exclude_set()
    for key in _AUTOGRAD_KEYS:
        excluded = excluded.remove(key)
    with torch._C._ForceDispatchKeyGuard(included, excluded), torch.enable_grad():
        leaves = {i: t.detach().requires_grad_() for i, t in differentiable.items()}
        call = [leaves.get(i, a) for i, a in enumerate(args)]
        out = decomposition_table[forward_op](*call)
        if isinstance(out, tuple):
            out = out[0]
        grads = torch.autograd.grad(out, list(leaves.values()), grad_output, allow_unused=True)
    return [g if g is not None else aten.zeros_like.default(leaves[i]) for i, g in zip(leaves, grads)]


def _all_finite(*tensors) -> bool:
    """One read-back: whether every value of every tensor is finite."""
    bad = None
    for t in tensors:
        count = aten.sum.default(aten.logical_not.default(aten.isfinite.default(t)))
        bad = count if bad is None else aten.add.Tensor(bad, count)
    return int(to_cpu(bad)) == 0


@implements(aten.grid_sampler_2d_backward.default)
def grid_sampler_2d_backward(grad_output, x, grid, interpolation_mode, padding_mode, align_corners, output_mask):
    args = (grad_output, x, grid, interpolation_mode, padding_mode, align_corners, output_mask)
    if interpolation_mode in (0, 1) and x.dtype == grid.dtype == grad_output.dtype == torch.float32:
        if not _all_finite(grid, grad_output):
            # the CPU's 2-d kernel (unlike its 3-d one) differences neighbouring taps before multiplying by
            # the output gradient, and gives a NaN coordinate a NaN gradient: non-finite grids and output
            # gradients take the counted fallback rather than the 3-d kernel's other answers
            return cpu_fallback(aten.grid_sampler_2d_backward.default, args, {})
        grid3 = aten.zeros.default([grid.shape[0], 1, *grid.shape[1:3], 3], dtype=grid.dtype, device=grid.device)
        aten.copy_.default(aten.slice.Tensor(aten.select.int(grid3, 1, 0), -1, 0, 2), grid)
        gi, gg = grid_sample3d.backward(aten.unsqueeze.default(grad_output, 2), aten.unsqueeze.default(x, 2), grid3,
                                        interpolation_mode, padding_mode, align_corners, output_mask,
                                        flat_depth=True)
        return (aten.squeeze.dim(gi, 2) if gi is not None else None,
                aten.squeeze.dim(gg, 1)[..., :2].contiguous() if gg is not None else None)
    wanted = {i: t for i, t, m in ((0, x, output_mask[0]), (1, grid, output_mask[1])) if m}
    if not wanted:
        return None, None
    if not _all_finite(x, grid, grad_output):
        # the decomposition reads clamped taps and multiplies out-of-range ones by 0, where the CPU skips
        # them: NaN / inf would reach gradients the CPU leaves finite
        return cpu_fallback(aten.grid_sampler_2d_backward.default, args, {})
    grads = dict(zip(wanted, _vjp(aten.grid_sampler_2d.default, wanted,
                                  (x, grid, interpolation_mode, padding_mode, align_corners), grad_output)))
    return grads.get(0), grads.get(1)


@implements(aten.upsample_bicubic2d_backward.default)
def upsample_bicubic2d_backward(grad_output, output_size, input_size, align_corners, scales_h=None, scales_w=None):
    if list(input_size[2:]) == list(output_size):  # the CPU copies (its taps would spread NaN by weight 0)
        return aten.clone.default(grad_output, memory_format=torch.contiguous_format)
    x = aten.empty.memory_format(list(input_size), dtype=grad_output.dtype, device=grad_output.device)
    (grad_input,) = _vjp(aten.upsample_bicubic2d.default, {0: x},
                         (x, output_size, align_corners, scales_h, scales_w), grad_output)
    return grad_input


@implements(aten.upsample_trilinear3d_backward.default)
def upsample_trilinear3d_backward(grad_output, output_size, input_size, align_corners, scales_d=None,
                                  scales_h=None, scales_w=None):
    n, c, d_in, h_in, w_in = input_size
    d_out, h_out, w_out = output_size
    planes = aten.reshape.default(grad_output, [n, c * d_out, h_out, w_out])
    over_hw = aten.upsample_bilinear2d_backward.default(planes, [h_out, w_out], [n, c * d_out, h_in, w_in],
                                                        align_corners, scales_h, scales_w)
    # depth last, as linear1d's length
    rows = aten.reshape.default(aten.permute.default(aten.reshape.default(over_hw, [n, c, d_out, h_in * w_in]),
                                                     [0, 1, 3, 2]), [n, c * h_in * w_in, d_out])
    over_d = aten.upsample_linear1d_backward.default(rows, [d_out], [n, c * h_in * w_in, d_in], align_corners,
                                                     scales_d)
    back = aten.permute.default(aten.reshape.default(over_d, [n, c, h_in * w_in, d_in]), [0, 1, 3, 2])
    return aten.reshape.default(aten.clone.default(back, memory_format=torch.contiguous_format), list(input_size))


def _per_row_scale(grad_output, reduction: int, rows: int, classes: int, like):
    """The CPU's g: 1 / classes (1 / (rows * classes) for mean) times the output gradient, per row."""
    if reduction == 0:  # none: one output gradient per row
        return aten.div.Scalar(aten.reshape.default(grad_output, [rows, 1]), classes)
    scale = 1.0 / (rows * classes) if reduction == 1 else 1.0 / classes
    return aten.mul.Scalar(aten.reshape.default(grad_output, [1, 1]), scale).expand(rows, 1).to(like.dtype)


@implements(aten.multi_margin_loss_backward.default)
def multi_margin_loss_backward(grad_output, x, target, p, margin, weight=None, reduction=1):
    """MultiMarginCriterion.cpp's backward: z = margin - x[t] + x[d] for every class d != t; where z > 0
    (false for NaN, so a NaN input gets gradient 0 as on the CPU) d gets g (p = 1) or 2 g z (p = 2), times
    weight[t], and the target class gets minus their sum."""
    x2 = aten.reshape.default(x, [-1, x.shape[-1]]) if x.dim() else aten.reshape.default(x, [1, 1])
    rows, classes = x2.shape
    t = aten.reshape.default(target, [rows, 1])
    z = aten.add.Tensor(aten.rsub.Scalar(aten.gather.default(x2, 1, t), margin), x2)
    other = aten.ne.Tensor(aten.arange.start_step(0, classes, 1, dtype=t.dtype, device=x.device), t)
    active = aten.logical_and.default(aten.gt.Scalar(z, 0), other)
    g = _per_row_scale(grad_output, reduction, rows, classes, x2)
    h = aten.mul.Tensor(g, aten.mul.Scalar(z, 2.0)) if p == 2 else g.expand(rows, classes)
    if weight is not None:
        h = aten.mul.Tensor(h, aten.reshape.default(aten.index_select.default(weight, 0, t.reshape(-1)), [rows, 1]))
    h = aten.where.self(active, h, aten.zeros_like.default(h))  # a select: 0 * NaN would be NaN
    grad = aten.scatter.src(h, 1, t, aten.neg.default(aten.sum.dim_IntList(h, [1], True)))
    return aten.reshape.default(grad, list(x.shape))


@implements(aten.multilabel_margin_loss_backward.default)
def multilabel_margin_loss_backward(grad_output, x, target, reduction, is_target):
    """MultiLabelMarginCriterion.cpp's backward: for each listed target j (the entries before the first
    -1, repeats counted) and each non-target class d with z = 1 - x[j] + x[d] > 0 (false for NaN), d gains
    g and j loses g."""
    x2 = aten.reshape.default(x, [-1, x.shape[-1]]) if x.dim() else aten.reshape.default(x, [1, 1])
    rows, classes = x2.shape
    t = aten.reshape.default(target, [rows, classes])
    listed = aten.eq.Scalar(aten.cumsum.default(aten.lt.Scalar(t, 0).to(torch.int32), 1), 0)  # before the first -1
    index = aten.clamp_min.default(t, 0)
    z = aten.add.Tensor(aten.rsub.Scalar(aten.unsqueeze.default(aten.gather.default(x2, 1, index), 2), 1),
                        aten.unsqueeze.default(x2, 1))  # [row, listed entry, class]
    not_target = aten.eq.Scalar(aten.reshape.default(is_target, [rows, 1, classes]), 0)
    active = aten.logical_and.default(aten.logical_and.default(aten.gt.Scalar(z, 0), not_target),
                                      aten.unsqueeze.default(listed, 2)).to(x.dtype)
    g = _per_row_scale(grad_output, reduction, rows, classes, x2)
    gains = aten.mul.Tensor(aten.sum.dim_IntList(active, [1]), g)
    losses = aten.mul.Tensor(aten.sum.dim_IntList(active, [2]), g)
    grad = aten.scatter_add.default(gains, 1, index, aten.neg.default(losses))
    return aten.reshape.default(grad, list(x.shape))
