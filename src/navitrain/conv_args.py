"""aten::convolution's arguments: normalisation, the checks aten makes, the output shape.

Shared by the convolutions navitrain implements itself (the nomiopen route's engine in
navitrain.nomiopen_conv and the wgpu handler in navitrain.wgpu.ops.conv), so both refuse bad arguments
as PyTorch does. Everything here is shape arithmetic on sizes and dtypes; no tensor data is touched and
torch is not imported. Error messages follow aten's wording closely enough that a user who knows the
native message recognises the problem.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Geometry:
    """How a (regular, not transposed) convolution slides its kernel; padding travels separately."""

    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    groups: int

    @property
    def nd(self) -> int:
        return len(self.stride)


@dataclass(frozen=True)
class ConvArgs:
    geometry: Geometry
    padding: tuple[int, ...]
    output_padding: tuple[int, ...]
    transposed: bool
    output_shape: tuple[int, ...]


def _expand(values: Sequence[int], nd: int, name: str) -> tuple[int, ...]:
    values = tuple(int(v) for v in values)
    if len(values) == 1 and nd > 1:
        return values * nd
    if len(values) != nd:
        raise RuntimeError(f"expected {name} to be a single integer value or a list of {nd} values to match "
                           f"the convolution dimensions, but got {name}={list(values)}")
    return values


def check(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride, padding, dilation,
          transposed: bool, output_padding, groups: int) -> ConvArgs:
    """Validate aten::convolution arguments and compute the output shape."""
    return _check(input.shape, weight.shape, None if bias is None else bias.shape, input.dtype, weight.dtype,
                  None if bias is None else bias.dtype, tuple(stride), tuple(padding), tuple(dilation),
                  bool(transposed), tuple(output_padding), int(groups))


@functools.lru_cache(maxsize=4096)  # the same layers come back every step; errors are not cached
def _check(in_shape, w_shape, b_shape, in_dtype, w_dtype, b_dtype, stride, padding, dilation, transposed,
           output_padding, groups) -> ConvArgs:
    nd = len(w_shape) - 2
    if nd < 1 or nd > 3:
        raise RuntimeError(f"convolution supports 1d, 2d and 3d weights, got weight of size {list(w_shape)}")
    if len(in_shape) != len(w_shape):
        raise RuntimeError(f"Expected {nd + 2}-dimensional input for {nd + 2}-dimensional weight "
                           f"{list(w_shape)}, but got {len(in_shape)}-dimensional input of size "
                           f"{list(in_shape)} instead")
    if in_dtype != w_dtype:
        raise RuntimeError(f"Input type ({in_dtype}) and weight type ({w_dtype}) should be the same")
    if b_dtype is not None and b_dtype != in_dtype:
        raise RuntimeError(f"Input type ({in_dtype}) and bias type ({b_dtype}) should be the same")
    stride = _expand(stride, nd, "stride")
    padding = _expand(padding, nd, "padding")
    dilation = _expand(dilation, nd, "dilation")
    output_padding = _expand(output_padding, nd, "output_padding")
    if groups <= 0:
        raise RuntimeError("non-positive groups is not supported")
    if any(s <= 0 for s in stride):
        raise RuntimeError("non-positive stride is not supported")
    if any(p < 0 for p in padding):
        raise RuntimeError("negative padding is not supported")
    if any(d <= 0 for d in dilation):
        raise RuntimeError("dilation should be greater than zero")
    if any(op < 0 for op in output_padding):
        raise RuntimeError("negative output_padding is not supported")
    kernel = tuple(w_shape[2:])
    n, c = in_shape[0], in_shape[1]
    spatial = tuple(in_shape[2:])
    if not transposed:
        k = w_shape[0]
        if c != w_shape[1] * groups:
            raise RuntimeError(f"Given groups={groups}, weight of size {list(w_shape)}, expected "
                               f"input{list(in_shape)} to have {w_shape[1] * groups} channels, but got "
                               f"{c} channels instead")
        if k % groups:
            raise RuntimeError(f"Given groups={groups}, expected weight to be divisible by {groups} at dimension "
                               f"0, but got weight of size {list(w_shape)} instead")
        padded = [s + 2 * p for s, p in zip(spatial, padding)]
        reach = [d * (kk - 1) + 1 for d, kk in zip(dilation, kernel)]
        if any(pd < r for pd, r in zip(padded, reach)):
            raise RuntimeError(f"Calculated padded input size per channel: {padded}. Kernel size: {reach}. "
                               "Kernel size can't be greater than actual input size")
        out_spatial = tuple((pd - r) // s + 1 for pd, r, s in zip(padded, reach, stride))
        out_channels = k
    else:
        if c != w_shape[0]:
            raise RuntimeError(f"Given transposed=1, weight of size {list(w_shape)}, expected "
                               f"input{list(in_shape)} to have {w_shape[0]} channels, but got {c} "
                               "channels instead")
        if w_shape[0] % groups:
            raise RuntimeError(f"Given groups={groups}, expected weight to be divisible by {groups} at dimension "
                               f"0, but got weight of size {list(w_shape)} instead")
        if any(op >= max(s, d) for op, s, d in zip(output_padding, stride, dilation)):
            raise RuntimeError("output padding must be smaller than either stride or dilation, but got "
                               f"output_padding={list(output_padding)}, stride={list(stride)}, "
                               f"dilation={list(dilation)}")
        out_spatial = tuple((s - 1) * st - 2 * p + d * (kk - 1) + op + 1 for s, st, p, d, kk, op
                            in zip(spatial, stride, padding, dilation, kernel, output_padding))
        if any(o <= 0 for o in out_spatial):
            raise RuntimeError(f"Given input size per channel: {list(spatial)}. Calculated output size per "
                               f"channel: {list(out_spatial)}. Output size is too small")
        out_channels = w_shape[1] * groups
    if b_shape is not None and (len(b_shape) != 1 or b_shape[0] != out_channels):
        raise RuntimeError(f"Given weight of size {list(w_shape)}, expected bias to be 1-dimensional with "
                           f"{out_channels} elements, but got bias of size {list(b_shape)} instead")
    return ConvArgs(Geometry(stride, dilation, groups), padding, output_padding, bool(transposed),
                    (n, out_channels, *out_spatial))
