"""aten::convolution and aten::convolution_backward built only from GEMMs (mm/bmm/addmm) and memory or
elementwise operations, with aten's semantics: same arguments, same results, outputs and gradients
in the memory format cuDNN would give them. Device-agnostic: the CPU runs (and tests) the same code
the nomiopen route registers for CUDA/HIP.

Each call looks up a plan made for its exact shapes, strides, dtypes and the current policy
(plan_cache.py); the first call of a shape builds it. Workspace is bounded by
NAVITRAIN_CONV_WORKSPACE_MB (chunks over the batch); the backward pass recomputes im2col / Winograd
transforms from the saved input instead of keeping them.
"""
from __future__ import annotations

import torch

from navitrain.nomiopen_conv import plan_cache, policy

_forward_plans = plan_cache.forward_plans
_backward_plans = plan_cache.backward_plans
_state = policy.state


def convolution(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride, padding, dilation,
                transposed: bool, output_padding, groups: int) -> torch.Tensor:
    key = (input.shape, input.stride(), weight.shape, weight.stride(),
           None if bias is None else (bias.shape, bias.dtype), input.dtype, weight.dtype, input.device,
           tuple(stride), tuple(padding), tuple(dilation), transposed, tuple(output_padding), groups, _state())
    plan = _forward_plans.get(key)
    if plan is None:  # first call of this shape; invalid arguments raise here and are never cached
        plan = plan_cache.remember(_forward_plans, key, plan_cache.build_forward(
            input, weight, bias, stride, padding, dilation, transposed, output_padding, groups))
    return plan(input, weight, bias)


def convolution_backward(grad_output: torch.Tensor, input: torch.Tensor, weight: torch.Tensor, bias_sizes,
                         stride, padding, dilation, transposed: bool, output_padding, groups: int,
                         output_mask) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    key = (grad_output.shape, grad_output.stride(), input.shape, input.stride(), weight.shape, weight.stride(),
           grad_output.dtype, input.dtype, weight.dtype, input.device, tuple(stride), tuple(padding),
           tuple(dilation), transposed, tuple(output_padding), groups, tuple(output_mask), _state())
    plan = _backward_plans.get(key)
    if plan is None:
        plan = plan_cache.remember(_backward_plans, key, plan_cache.build_backward(
            grad_output, input, weight, stride, padding, dilation, transposed, output_padding, groups,
            output_mask))
    return plan(grad_output, input, weight)
