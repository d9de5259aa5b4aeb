"""aten::convolution and aten::convolution_backward built only from GEMMs (mm/bmm/addmm) and memory or
elementwise operations, with aten's semantics: same arguments, same results, outputs and gradients
in the memory format cuDNN would give them. Device-agnostic: the CPU runs (and tests) the same code
the nomiopen route registers for CUDA/HIP.

Workspace is bounded by NAVITRAIN_CONV_WORKSPACE_MB (chunks over the batch); the backward pass
recomputes im2col / Winograd transforms from the saved input instead of keeping them.
"""
from __future__ import annotations

import torch

from navitrain.ops import conv_params
from navitrain.ops.conv_plan import conv_forward, conv_input_grad, conv_weight_grad


def convolution(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride, padding, dilation,
                transposed: bool, output_padding, groups: int) -> torch.Tensor:
    args = conv_params.check(input, weight, bias, stride, padding, dilation, transposed, output_padding, groups)
    out = torch.empty(args.output_shape, dtype=input.dtype, device=input.device,
                      memory_format=conv_params.output_memory_format(input, weight))
    if out.numel() == 0:
        return out
    if input.shape[1] == 0 or (weight.numel() == 0):
        out.zero_()
        if bias is not None:
            out.add_(bias.view(1, -1, *([1] * (out.dim() - 2))))
        return out
    if not args.transposed:
        conv_forward(input, weight, bias, args.geometry, args.padding, out)
    else:
        conv_input_grad(input, weight, args.geometry, args.padding, out)
        if bias is not None:
            out.add_(bias.view(1, -1, *([1] * (out.dim() - 2))))
    return out


def convolution_backward(grad_output: torch.Tensor, input: torch.Tensor, weight: torch.Tensor, bias_sizes,
                         stride, padding, dilation, transposed: bool, output_padding, groups: int,
                         output_mask) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    args = conv_params.check(input, weight, None, stride, padding, dilation, transposed, output_padding, groups)
    if tuple(grad_output.shape) != args.output_shape:
        raise RuntimeError(f"convolution_backward: expected grad_output of size {list(args.output_shape)}, "
                           f"got {list(grad_output.shape)}")
    fmt = conv_params.output_memory_format(input, weight)
    geom, lo = args.geometry, args.padding
    empty = grad_output.numel() == 0 or input.numel() == 0 or weight.numel() == 0
    grad_input = grad_weight = grad_bias = None
    if output_mask[0]:
        grad_input = torch.empty(input.shape, dtype=input.dtype, device=input.device, memory_format=fmt)
        if empty:
            grad_input.zero_()
        elif not args.transposed:
            conv_input_grad(grad_output, weight, geom, lo, grad_input)
        else:
            conv_forward(grad_output, weight, None, geom, lo, grad_input)
    if output_mask[1]:
        grad_weight = torch.empty(weight.shape, dtype=weight.dtype, device=weight.device, memory_format=fmt)
        if empty:
            grad_weight.zero_()
        elif not args.transposed:
            grad_weight.copy_(conv_weight_grad(input, grad_output, geom, lo, weight.shape))
        else:
            # the transposed convolution is the adjoint of a regular one from its output to its input
            grad_weight.copy_(conv_weight_grad(grad_output, input, geom, lo, weight.shape))
    if output_mask[2]:
        dims = [0, *range(2, grad_output.dim())]
        grad_bias = grad_output.sum(dims) if grad_output.numel() else grad_output.new_zeros(grad_output.shape[1])
    return grad_input, grad_weight, grad_bias
