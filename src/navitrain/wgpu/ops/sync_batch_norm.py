"""The batch-norm pieces torch.nn.SyncBatchNorm calls between its collectives (CUDA-only ops in
PyTorch: the CPU has no kernel for them, so without these a wgpu SyncBatchNorm has nowhere to fall
back to):

    forward:  batch_norm_stats -> all_gather -> batch_norm_gather_stats_with_counts -> batch_norm_elemt
    backward: batch_norm_backward_reduce -> all_reduce -> batch_norm_backward_elemt

Each is composed from ordinary wgpu ops (per-channel reductions and broadcasting elementwise ops), so
NaN and inf propagate as they do there and float64 falls back to the CPU piece by piece, counted. The
statistics are per-channel vectors of a few hundred elements at most: the costly parts are the two
passes over the activations, which are the reduction and pointwise engines' own. Statistics are kept in
float32 for float16/bfloat16 inputs, as CUDA's accumulate type is; the results follow CUDA's formulas
(Welford's merge of the per-rank mean and variance, unbiased running variance).
"""
from __future__ import annotations

import torch

from navitrain.wgpu.dispatch import implements

aten = torch.ops.aten
_REDUCED = (torch.float16, torch.bfloat16)


def _channel_dims(x) -> list[int]:
    """Every dim but the channel (dim 1): the statistics of channel c are over all of them."""
    return [0] + list(range(2, x.dim()))


def _as_channel(v, x):
    """A per-channel vector [C] shaped to broadcast against x [N, C, ...]."""
    return v.view([1, -1] + [1] * (x.dim() - 2))


def _accumulate(t):
    return t.float() if t.dtype in _REDUCED else t


@implements(aten.batch_norm_stats.default)
def batch_norm_stats(x, eps):
    """This rank's per-channel mean and 1 / sqrt(biased variance + eps). Two passes (mean, then the
    squares around it) rather than one sum of squares, which cancels when the mean is large."""
    if x.dim() < 2:
        raise RuntimeError(f"batch_norm_stats: expected an input with at least 2 dims, got {tuple(x.shape)}")
    acc = _accumulate(x)
    dims = _channel_dims(x)
    mean = acc.mean(dims)
    var = (acc - _as_channel(mean, x)).square().mean(dims)
    return mean, (var + eps).rsqrt()


def _merge(mean, invstd, counts, eps):
    """Welford's merge of W ranks' statistics [W, C] with their element counts [W]: the mean, the sum of
    squared deviations over all ranks, and the total count."""
    counts = counts.to(mean.dtype)
    total = counts.sum()
    weights = counts.view(-1, 1)
    avg = (weights * mean).sum(0) / total
    var_rank = invstd.reciprocal().square() - eps
    squares = (weights * (var_rank + (mean - avg).square())).sum(0)
    return avg, squares, total


@implements(aten.batch_norm_gather_stats_with_counts.default)
def batch_norm_gather_stats_with_counts(x, mean, invstd, running_mean, running_var, momentum, eps, counts):
    avg, squares, total = _merge(mean, invstd, counts, eps)
    if running_mean is not None:
        running_mean.copy_(running_mean * (1 - momentum) + avg * momentum)
    if running_var is not None:
        # Unbiased over all ranks' elements; a total of one element gives inf (0 / 0 on CUDA: NaN or inf
        # depending on the kernel), which PyTorch refuses earlier ("more than 1 value per channel").
        running_var.copy_(running_var * (1 - momentum) + squares / (total - 1) * momentum)
    return avg, (squares / total + eps).rsqrt()


@implements(aten.batch_norm_gather_stats.default)
def batch_norm_gather_stats(x, mean, invstd, running_mean, running_var, momentum, eps, count):
    counts = torch.full([mean.shape[0]], float(count), dtype=mean.dtype, device=mean.device)
    return batch_norm_gather_stats_with_counts(x, mean, invstd, running_mean, running_var, momentum, eps, counts)


@implements(aten.batch_norm_elemt.default)
def batch_norm_elemt(x, weight, bias, mean, invstd, eps):
    """y = (x - mean) * invstd * weight + bias, with the (global) statistics given."""
    scale = invstd if weight is None else invstd * weight.to(invstd.dtype)
    y = (_accumulate(x) - _as_channel(mean, x)) * _as_channel(scale, x)
    if bias is not None:
        y = y + _as_channel(bias.to(y.dtype), x)
    return y.to(x.dtype)


@implements(aten.batch_norm_backward_reduce.default)
def batch_norm_backward_reduce(grad_out, x, mean, invstd, weight, input_g, weight_g, bias_g):
    """This rank's sum(dy) and sum(dy * (x - mean)) per channel (summed over ranks by SyncBatchNorm
    before batch_norm_backward_elemt), and the weight and bias gradients from them. Outputs not asked
    for are undefined (None), as on CUDA."""
    dy, dims = _accumulate(grad_out), _channel_dims(x)
    sum_dy = dy.sum(dims)
    sum_dy_xmu = (dy * (_accumulate(x) - _as_channel(mean, x))).sum(dims)
    param_dtype = weight.dtype if weight is not None else mean.dtype
    grad_weight = (sum_dy_xmu * invstd).to(param_dtype) if weight_g else None
    grad_bias = sum_dy.to(param_dtype) if bias_g else None
    if not input_g:
        sum_dy = sum_dy_xmu = None
    return sum_dy, sum_dy_xmu, grad_weight, grad_bias


@implements(aten.batch_norm_backward_elemt.default)
def batch_norm_backward_elemt(grad_out, x, mean, invstd, weight, sum_dy, sum_dy_xmu, count):
    """dx = (dy - mean(dy) - (x - mean) * invstd^2 * mean(dy * (x - mean))) * invstd * weight, the means
    over every rank's elements (`count`: each rank's element count per channel)."""
    total = count.sum().to(mean.dtype)
    mean_dy = sum_dy / total
    projection = sum_dy_xmu / total * invstd.square()
    scale = invstd if weight is None else invstd * weight.to(invstd.dtype)
    xmu = _accumulate(x) - _as_channel(mean, x)
    dx = (_accumulate(grad_out) - _as_channel(mean_dy, x) - xmu * _as_channel(projection, x)) * _as_channel(scale, x)
    return dx.to(x.dtype)
