"""PyTorch's memory-format choices, ported: Tensor::suggest_memory_format() and the layout cuDNN/MIOpen
give a convolution's output, computed from sizes and strides without a tensor op."""
from __future__ import annotations

import functools
from typing import Sequence

import torch


def is_channels_last_strides(sizes: Sequence[int], strides: Sequence[int]) -> bool:
    """c10's is_channels_last_strides_2d_s4 / _3d_s5 (False for other ranks), including its tie-breaks
    for size-1 dimensions, so that ambiguous tensors get the same answer as in C++."""
    order = {4: (1, 3, 2, 0), 5: (1, 4, 3, 2, 0)}.get(len(sizes))
    if order is None or strides[1] == 0:
        return False
    smallest = 0
    for d in order:
        if sizes[d] == 0 or strides[d] < smallest:
            return False
        if d == 0 and smallest == strides[1]:
            return False
        smallest = strides[d] * (sizes[d] if sizes[d] > 1 else 1)
    return True


def suggest_memory_format(t: torch.Tensor) -> torch.memory_format:
    """Python twin of C++ Tensor::suggest_memory_format()."""
    return _suggest(t.shape, t.stride()) if t.layout == torch.strided else torch.contiguous_format


@functools.lru_cache(maxsize=4096)
def _suggest(shape, strides) -> torch.memory_format:
    if is_channels_last_strides(shape, strides):
        return torch.channels_last if len(shape) == 4 else torch.channels_last_3d
    return torch.contiguous_format


def output_memory_format(input: torch.Tensor, weight: torch.Tensor) -> torch.memory_format:
    """The layout cuDNN/MIOpen give the output and gradients (cudnn_conv_suggest_memory_format):
    channels-last when the input or the weight is channels-last (never for float64), else contiguous."""
    if input.dtype == torch.float64 or weight.dtype == torch.float64:
        return torch.contiguous_format
    for t in (input, weight):
        fmt = suggest_memory_format(t)
        if fmt is not torch.contiguous_format:
            return fmt
    return torch.contiguous_format
