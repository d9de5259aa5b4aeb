"""Batch norm handlers (training with running-stat updates, evaluation, every aten overload, backward):
aten semantics, argument checks, the layout the kernels read and the outputs' dtypes. The kernels are
in kernels/batch_norm.py; layer norm and group norm are in ops/row_norm.py.

The layout the kernels read (the channel in the middle of [A, C, B]) is kernels/batch_norm_layout.py's.
"""
from __future__ import annotations

import torch

from navitrain.wgpu.dispatch import implements
from navitrain.wgpu.kernels import batch_norm as kernels
from navitrain.wgpu.kernels.batch_norm_layout import geometry as _bn_geometry
from navitrain.wgpu.kernels.batch_norm_layout import in_layout as _in_layout
from navitrain.wgpu.kernels.batch_norm_layout import stats_dtype
from navitrain.wgpu.kernels.copy import fill
from navitrain.wgpu.tensor import empty

aten = torch.ops.aten


# -- forward and backward -------------------------------------------------------------------------
def _batch_norm(x, weight, bias, running_mean, running_var, training, momentum, eps):
    x, mode, A, C, B = _bn_geometry(x)
    has_running = running_mean is not None and running_var is not None
    if not training and not has_running:
        raise RuntimeError("batch_norm: running_mean and running_var must be defined in evaluation mode")
    stat_dtype = stats_dtype(x, weight, bias, running_mean, running_var)
    if training:
        save_mean, save_invstd = empty([C], stat_dtype), empty([C], stat_dtype)
    else:
        save_mean, save_invstd = empty([0], stat_dtype), empty([0], stat_dtype)
    if x.numel() == 0:
        if A * B == 0 and C > 0:
            raise RuntimeError(f"input tensor must have at least one element, but got input_sizes = {list(x.shape)}")
        return empty(x.shape, x.dtype, x.stride()), save_mean, save_invstd
    if not has_running:
        running_mean = running_var = None
    y = kernels.forward(x, A, C, B, weight, bias, running_mean, running_var, training, momentum, eps, save_mean,
                        save_invstd)
    return y, save_mean, save_invstd


def _batch_norm_backward(grad_out, x, weight, running_mean, running_var, save_mean, save_invstd, train, eps,
                         output_mask):
    x, mode, A, C, B = _bn_geometry(x)
    grad_out = _in_layout(grad_out, mode)
    if train:
        mean_src, inv_src = save_mean, save_invstd
    else:
        if running_mean is None or running_var is None:
            raise RuntimeError("batch_norm_backward: running_mean and running_var are needed in evaluation mode")
        mean_src, inv_src = running_mean, running_var
    param_dtype = weight.dtype if weight is not None else x.dtype
    gw = empty([C], param_dtype) if output_mask[1] else None
    gb = empty([C], param_dtype) if output_mask[2] else None
    if x.numel() == 0:
        for t in (gw, gb):
            if t is not None:
                fill(t, 0)
        gi = empty(x.shape, x.dtype, x.stride()) if output_mask[0] else None
        return gi, gw, gb
    gi = kernels.backward(grad_out, x, A, C, B, weight, mean_src, inv_src, train, eps, gw, gb, output_mask[0])
    return gi, gw, gb


# -- the aten overloads ---------------------------------------------------------------------------
@implements(aten.native_batch_norm.default)
def native_batch_norm(x, weight, bias, running_mean, running_var, training, momentum, eps):
    return _batch_norm(x, weight, bias, running_mean, running_var, training, momentum, eps)


@implements(aten._native_batch_norm_legit.default)
def native_batch_norm_legit(x, weight, bias, running_mean, running_var, training, momentum, eps):
    return _batch_norm(x, weight, bias, running_mean, running_var, training, momentum, eps)


@implements(aten._native_batch_norm_legit.no_stats)
def native_batch_norm_legit_no_stats(x, weight, bias, training, momentum, eps):
    return _batch_norm(x, weight, bias, None, None, True, momentum, eps)


@implements(aten._native_batch_norm_legit_no_training.default)
def native_batch_norm_legit_no_training(x, weight, bias, running_mean, running_var, momentum, eps):
    return _batch_norm(x, weight, bias, running_mean, running_var, False, momentum, eps)


@implements(aten._native_batch_norm_legit_functional.default)
def native_batch_norm_legit_functional(x, weight, bias, running_mean, running_var, training, momentum, eps):
    # The functional form (torch.compile, export) returns updated copies instead of updating in place.
    new_mean = aten.clone.default(running_mean)
    new_var = aten.clone.default(running_var)
    return (*_batch_norm(x, weight, bias, new_mean, new_var, training, momentum, eps), new_mean, new_var)


def _reserve():
    return empty([0], torch.uint8)


@implements(aten._batch_norm_with_update.default)
def batch_norm_with_update(x, weight, bias, running_mean, running_var, momentum, eps):
    return (*_batch_norm(x, weight, bias, running_mean, running_var, True, momentum, eps), _reserve())


@implements(aten._batch_norm_no_update.default)
def batch_norm_no_update(x, weight, bias, running_mean, running_var, momentum, eps):
    training = running_mean is None or running_var is None
    return (*_batch_norm(x, weight, bias, running_mean, running_var, training, momentum, eps), _reserve())


@implements(aten.native_batch_norm_backward.default)
def native_batch_norm_backward(grad_out, x, weight, running_mean, running_var, save_mean, save_invstd, train, eps,
                               output_mask):
    return _batch_norm_backward(grad_out, x, weight, running_mean, running_var, save_mean, save_invstd, train,
                                eps, output_mask)


@implements(aten.batch_norm_backward.default)
def batch_norm_backward(grad_out, x, weight, running_mean, running_var, save_mean, save_var, update, eps,
                        output_mask, reserve):
    return _batch_norm_backward(grad_out, x, weight, running_mean, running_var, save_mean, save_var, update, eps,
                                output_mask)
