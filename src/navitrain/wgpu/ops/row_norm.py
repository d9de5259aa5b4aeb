"""Layer norm and group norm handlers, forward and backward: aten semantics, argument checks, empty
inputs, the outputs' shapes and dtypes. Both normalize contiguous rows (a sample's normalized slice, or
a (sample, group) pair): the kernels are in kernels/row_norm.py."""
from __future__ import annotations

import math

import torch

from navitrain.wgpu.dims import contiguous
from navitrain.wgpu.dispatch import implements
from navitrain.wgpu.kernels import row_norm as kernels
from navitrain.wgpu.kernels import row_norm_strided
from navitrain.wgpu.kernels.copy import fill
from navitrain.wgpu.ops.norm import stats_dtype
from navitrain.wgpu.ops.views import view_of
from navitrain.wgpu.tensor import WgpuTensor, empty

aten = torch.ops.aten
NAN = float("nan")


def _flat(t, n: int):
    """`t` (a parameter or statistic) as a 1-D vector of n elements (None stays None). A contiguous
    tensor of n elements is viewed directly: a reshape through the dispatcher cost ~25 us, five times
    per layer-norm backward. Any other size takes reshape, which raises PyTorch's error."""
    if t is None:
        return None
    t = contiguous(t)
    if type(t) is WgpuTensor and t.numel() == n:
        return view_of(t, [n], [1])
    return aten.reshape.default(t, [n])


def _fill_nan_or_empty(*ts):
    for t in ts:
        if t is not None and t.numel():
            fill(t, NAN)


def _zero(*ts):
    for t in ts:
        if t is not None:
            fill(t, 0)


# -- layer norm -------------------------------------------------------------------------------------
def _rows_in_place(nd: int, *ts):
    """The strided-row geometry when a layer norm over one dim can read `ts` where they are (a permuted
    view, such as ConvNeXt's channels-last LayerNorm over an NCHW activation), else None (contiguous
    tensors keep the contiguous kernels; other layouts are copied)."""
    if nd != 1 or all(t.is_contiguous() for t in ts):
        return None
    return row_norm_strided.RowGeometry.of(*ts)


@implements(aten.native_layer_norm.default)
def native_layer_norm(x, normalized_shape, weight, bias, eps):
    nd = len(normalized_shape)
    if tuple(x.shape[x.dim() - nd:]) != tuple(normalized_shape):
        raise RuntimeError(f"layer_norm: input of shape {tuple(x.shape)} does not end with normalized_shape "
                           f"{list(normalized_shape)}")
    axis = x.dim() - nd
    geo = _rows_in_place(nd, x)
    x = x if geo else contiguous(x)
    M, L = math.prod(x.shape[:axis]), math.prod(normalized_shape)
    weight = _flat(weight, L)
    bias = _flat(bias, L)
    stat_shape = list(x.shape[:axis]) + [1] * nd
    stat_dtype = stats_dtype(x, weight, bias)
    y = empty(x.shape, x.dtype)
    mean, rstd = empty(stat_shape, stat_dtype), empty(stat_shape, stat_dtype)
    if M == 0:
        return y, mean, rstd
    if L == 0:
        _fill_nan_or_empty(mean, rstd)
        return y, mean, rstd
    kernels.row_normalize(x, M, L, weight, bias, eps, y, mean, rstd, geo=geo)
    return y, mean, rstd


@implements(aten.native_layer_norm_backward.default)
def native_layer_norm_backward(grad_out, x, normalized_shape, mean, rstd, weight, bias, output_mask):
    nd = len(normalized_shape)
    axis = x.dim() - nd
    geo = _rows_in_place(nd, x, grad_out)
    if geo is None:
        x, grad_out = contiguous(x), contiguous(grad_out)
    mean, rstd = contiguous(mean), contiguous(rstd)
    M, L = math.prod(x.shape[:axis]), math.prod(normalized_shape)
    weight = _flat(weight, L)
    gi = empty(x.shape, x.dtype) if output_mask[0] else None
    gw = empty(list(normalized_shape), weight.dtype) if output_mask[1] and weight is not None else None
    gb_dtype = bias.dtype if bias is not None else (weight.dtype if weight is not None else x.dtype)
    gb = empty(list(normalized_shape), gb_dtype) if output_mask[2] and bias is not None else None
    if M == 0 or L == 0:
        _zero(gw, gb)
        return gi, gw, gb
    if gi is not None:
        kernels.layer_norm_backward_input(gi, grad_out, x, mean, rstd, weight, M, L, geo=geo)
    if geo is not None and (gw is not None or gb is not None):
        row_norm_strided.layer_norm_backward_params(grad_out, x, _flat(mean, M), _flat(rstd, M), M, L,
                                                    _flat(gw, L), _flat(gb, L))
    elif gw is not None or gb is not None:
        kernels.layer_norm_backward_params(grad_out, x, _flat(mean, M), _flat(rstd, M), M, L,
                                           _flat(gw, L), _flat(gb, L))
    return gi, gw, gb


# -- group norm -------------------------------------------------------------------------------------
@implements(aten.native_group_norm.default)
def native_group_norm(x, weight, bias, N, C, HxW, group, eps):
    x = contiguous(x)
    y = empty(x.shape, x.dtype)
    mean, rstd = empty([N, group], x.dtype), empty([N, group], x.dtype)
    M, L = N * group, (C // group) * HxW
    if M == 0:
        return y, mean, rstd
    if L == 0:
        _fill_nan_or_empty(mean, rstd)
        return y, mean, rstd
    kernels.row_normalize(x, M, L, weight, bias, eps, y, mean, rstd, gn_shape=(group, C // group, HxW))
    return y, mean, rstd


@implements(aten.native_group_norm_backward.default)
def native_group_norm_backward(grad_out, x, mean, rstd, weight, N, C, HxW, group, output_mask):
    x, grad_out = contiguous(x), contiguous(grad_out)
    mean, rstd = contiguous(mean), contiguous(rstd)
    pdt = weight.dtype if weight is not None else x.dtype
    gi = empty(x.shape, x.dtype) if output_mask[0] else None
    gw = empty([C], pdt) if output_mask[1] else None
    gb = empty([C], pdt) if output_mask[2] else None
    if N * C * HxW == 0:
        _zero(gw, gb)
        return gi, gw, gb
    kernels.group_norm_backward(grad_out, x, mean, rstd, weight, N, C, HxW, group, gi, gw, gb)
    return gi, gw, gb
