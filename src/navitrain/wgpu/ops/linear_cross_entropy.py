"""F.linear_cross_entropy's chunked path (options=LinearCrossEntropyOptions(...)) on the device.

PyTorch implements it as two custom ops (torch_nn::_linear_cross_entropy_batch_chunked and its
reduction='none' twin) whose one kernel is Python written with ordinary torch ops, registered for every
backend. A wgpu tensor reaches __torch_dispatch__ with the custom op itself, which has no decomposition,
so it ran on the CPU. Here the handler runs that same Python body on the wgpu tensors: its matmuls,
log-softmax and gathers come back through the op table one by one. The ops' autograd formulas (the
reduction='none' backward recomputes the chunks) stay PyTorch's; they call the same body at the
autograd level, which already ran on the device.
"""
from __future__ import annotations

import torch
from torch.nn.modules import linear_cross_entropy as _lce  # PyTorch >= 2.12; older ones: ops.SKIPPED says so

from navitrain.wgpu.dispatch import implements

_REDUCED = _lce._linear_cross_entropy_batch_chunked
_UNREDUCED = _lce._linear_cross_entropy_batch_chunked_no_reduction


@implements(torch.ops.torch_nn._linear_cross_entropy_batch_chunked.default)
def linear_cross_entropy_batch_chunked(*args):
    return _REDUCED._init_fn(*args)


@implements(torch.ops.torch_nn._linear_cross_entropy_batch_chunked_no_reduction.default)
def linear_cross_entropy_batch_chunked_no_reduction(*args):
    return _UNREDUCED._init_fn(*args)
