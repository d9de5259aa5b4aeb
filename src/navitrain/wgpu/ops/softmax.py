"""softmax, log_softmax and their backwards (row kernels along `dim`)."""
from __future__ import annotations

import torch

from navitrain.wgpu.dims import contiguous, wrap_dim
from navitrain.wgpu.dispatch import implements
from navitrain.wgpu.kernels import rows
from navitrain.wgpu.tensor import empty

aten = torch.ops.aten

_MAX = ("bitcast<f32>(0xff800000u)", "acc = fmax_nan(acc, X0(j));", "fmax_nan(A, B)")
# exp(-inf - -inf) is NaN: a row that is all -inf keeps a zero maximum so it gives NaN like the CPU.
_SUMEXP = ("0.0", "acc = acc + exp(X0(j) - r0);", "A + B")


@implements(aten._softmax.default)
def softmax(x, dim, half_to_float):
    x = contiguous(x)
    out = empty(x.shape, torch.float32 if half_to_float else x.dtype)
    rows.launch("softmax", None, [x], [out], [_MAX, _SUMEXP], "Y0(j, exp(X0(j) - r0) / r1);",
                wrap_dim(dim, x.dim()))
    return out


@implements(aten._log_softmax.default)
def log_softmax(x, dim, half_to_float):
    x = contiguous(x)
    out = empty(x.shape, torch.float32 if half_to_float else x.dtype)
    rows.launch("log_softmax", None, [x], [out], [_MAX, _SUMEXP], "Y0(j, X0(j) - r0 - log(r1));",
                wrap_dim(dim, x.dim()))
    return out


@implements(aten._softmax_backward_data.default)
def softmax_backward(grad, y, dim, input_dtype):
    grad, y = contiguous(grad), contiguous(y)
    out = empty(y.shape, input_dtype)
    dot = ("0.0", "acc = acc + X0(j) * X1(j);", "A + B")
    rows.launch("softmax_bwd", None, [grad, y], [out], [dot], "Y0(j, X1(j) * (X0(j) - r0));",
                wrap_dim(dim, y.dim()))
    return out


@implements(aten._log_softmax_backward_data.default)
def log_softmax_backward(grad, y, dim, input_dtype):
    grad, y = contiguous(grad), contiguous(y)
    out = empty(y.shape, input_dtype)
    total = ("0.0", "acc = acc + X0(j);", "A + B")
    rows.launch("log_softmax_bwd", None, [grad, y], [out], [total], "Y0(j, X0(j) - exp(X1(j)) * r0);",
                wrap_dim(dim, y.dim()))
    return out


@implements(aten._safe_softmax.default)
def safe_softmax(x, dim, dtype=None):
    """softmax in which a row of only -inf (a fully masked attention row) gives zeros, not NaN: what
    scaled_dot_product_attention's math path uses. One row kernel instead of a decomposition into five."""
    if dtype is not None and dtype != x.dtype:
        x = aten._to_copy.default(x, dtype=dtype)
    x = contiguous(x)
    out = empty(x.shape, x.dtype)
    write = "Y0(j, select(exp(X0(j) - r0) / r1, 0.0, is_inf(r0) && r0 < 0.0));"
    rows.launch("safe_softmax", None, [x], [out], [_MAX, _SUMEXP], write, wrap_dim(dim, x.dim()))
    return out
