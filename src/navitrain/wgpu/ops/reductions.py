"""Reductions: sum, mean, prod, max/min (values and indices), amax/amin, argmax/argmin, any/all,
var/std, vector norms."""
from __future__ import annotations

import torch

from navitrain.wgpu.dispatch import implements
from navitrain.wgpu.kernels import pointwise
from navitrain.wgpu.kernels.copy import copy_into
from navitrain.wgpu.kernels.reduction import normalize_dims, reduce

aten = torch.ops.aten


def _sum_dtype(x, dtype):
    if dtype is not None:
        return dtype
    return x.dtype if x.dtype.is_floating_point else torch.int64


def _cast_input(x, dtype):
    # sum(x, dtype=...) converts the input first, as aten does.
    if dtype is not None and dtype != x.dtype:
        return aten._to_copy.default(x, dtype=dtype)
    return x


@implements(aten.sum.default)
def sum_all(x, *, dtype=None):
    return reduce(_cast_input(x, dtype), None, False, "sum", _sum_dtype(x, dtype))


@implements(aten.sum.dim_IntList)
def sum_dim(x, dim, keepdim=False, *, dtype=None):
    return reduce(_cast_input(x, dtype), dim, keepdim, "sum", _sum_dtype(x, dtype))


@implements(aten.sum.IntList_out)
def sum_out(x, dim, keepdim=False, *, dtype=None, out):
    return copy_into(out, sum_dim(x, dim, keepdim, dtype=dtype))


@implements(aten.mean.default)
def mean_all(x, *, dtype=None):
    return mean_dim(x, None, False, dtype=dtype)


@implements(aten.mean.dim)
def mean_dim(x, dim, keepdim=False, *, dtype=None):
    out_dtype = dtype or x.dtype
    if not out_dtype.is_floating_point:
        raise RuntimeError(f"mean(): could not infer output dtype. Input dtype must be either a floating point "
                           f"or complex dtype. Got: {str(x.dtype).replace('torch.', '').capitalize()}")
    return reduce(_cast_input(x, dtype), dim, keepdim, "mean", out_dtype)


@implements(aten.prod.default)
def prod_all(x, *, dtype=None):
    return reduce(_cast_input(x, dtype), None, False, "prod", _sum_dtype(x, dtype))


@implements(aten.prod.dim_int)
def prod_dim(x, dim, keepdim=False, *, dtype=None):
    return reduce(_cast_input(x, dtype), [dim], keepdim, "prod", _sum_dtype(x, dtype))


@implements(aten.amax.default)
def amax(x, dim=(), keepdim=False):
    return reduce(x, dim, keepdim, "max", x.dtype)


@implements(aten.amin.default)
def amin(x, dim=(), keepdim=False):
    return reduce(x, dim, keepdim, "min", x.dtype)


@implements(aten.max.default)
def max_all(x):
    return reduce(x, None, False, "max", x.dtype)


@implements(aten.min.default)
def min_all(x):
    return reduce(x, None, False, "min", x.dtype)


@implements(aten.max.dim)
def max_dim(x, dim, keepdim=False):
    return reduce(x, [dim], keepdim, "argmax", x.dtype)


@implements(aten.min.dim)
def min_dim(x, dim, keepdim=False):
    return reduce(x, [dim], keepdim, "argmin", x.dtype)


def _arg(x, dim, keepdim, op):
    if dim is None:
        flat = aten.reshape.default(x, [-1])
        _, idx = reduce(flat, [0], False, op, x.dtype)
        return aten.reshape.default(idx, [1] * x.dim()) if keepdim else idx
    return reduce(x, [dim], keepdim, op, x.dtype)[1]


@implements(aten.argmax.default)
def argmax(x, dim=None, keepdim=False):
    return _arg(x, dim, keepdim, "argmax")


@implements(aten.argmin.default)
def argmin(x, dim=None, keepdim=False):
    return _arg(x, dim, keepdim, "argmin")


# (torch.distributions validates every sample and parameter with _is_all_true / _is_any_true: validate_args,
# on by default)
@implements(aten.any.default, aten._is_any_true.default)
def any_all(x):
    return reduce(x, None, False, "any", torch.bool)


@implements(aten.any.dim, aten.any.dims)
def any_dim(x, dim=None, keepdim=False):
    return reduce(x, dim, keepdim, "any", torch.bool)


@implements(aten.all.default, aten._is_all_true.default)
def all_all(x):
    return reduce(x, None, False, "all", torch.bool)


@implements(aten.all.dim, aten.all.dims)
def all_dim(x, dim=None, keepdim=False):
    return reduce(x, dim, keepdim, "all", torch.bool)


def _count(x, dims) -> int:
    n = 1
    for d in normalize_dims(x, dims):
        n *= x.shape[d]
    return n


@implements(aten.var.correction)
def var(x, dim=None, *, correction=None, keepdim=False):
    correction = 1 if correction is None else correction
    mean = reduce(x, dim, True, "mean", x.dtype)
    sq = pointwise.run("centered_sq", "(a - b) * (a - b)", [x, mean], torch.float32, "f32")
    n = _count(x, dim)
    total = reduce(sq, dim, keepdim, "sum", torch.float32)
    denom = max(n - correction, 0)
    return pointwise.run("div_scalar", "a / s0", [total], x.dtype, "f32", [float(denom)])


@implements(aten.std.correction)
def std(x, dim=None, *, correction=None, keepdim=False):
    v = var(x, dim, correction=correction, keepdim=keepdim)
    return pointwise.run("sqrt", "sqrt(a)", [v], x.dtype, "f32")


@implements(aten.var_mean.correction)
def var_mean(x, dim=None, *, correction=None, keepdim=False):
    return var(x, dim, correction=correction, keepdim=keepdim), reduce(x, dim, keepdim, "mean", x.dtype)


@implements(aten.linalg_vector_norm.default)
def vector_norm(x, ord=2, dim=None, keepdim=False, *, dtype=None):
    out_dtype = dtype or x.dtype
    ord = float(ord)
    if ord == float("inf"):
        a = pointwise.run("abs", "abs(a)", [x], torch.float32, "f32")
        return _cast(reduce(a, dim, keepdim, "max", torch.float32), out_dtype)
    if ord == float("-inf"):
        a = pointwise.run("abs", "abs(a)", [x], torch.float32, "f32")
        return _cast(reduce(a, dim, keepdim, "min", torch.float32), out_dtype)
    if ord == 0:
        # NaN counts as non-zero (as on the CPU); lavapipe evaluates != as ordered, false for NaN.
        nz = pointwise.run("nonzero", "select(0.0, 1.0, a != 0.0 || is_nan(a))", [x], torch.float32, "f32")
        return _cast(reduce(nz, dim, keepdim, "sum", torch.float32), out_dtype)
    if ord == 1:
        a = pointwise.run("abs", "abs(a)", [x], torch.float32, "f32")
        return _cast(reduce(a, dim, keepdim, "sum", torch.float32), out_dtype)
    if ord == 2:
        sq = pointwise.run("square", "a * a", [x], torch.float32, "f32")
        s = reduce(sq, dim, keepdim, "sum", torch.float32)
        return pointwise.run("sqrt", "sqrt(a)", [s], out_dtype, "f32")
    p = pointwise.run("abs_pow", "pow_f(abs(a), s0)", [x], torch.float32, "f32", [ord])
    s = reduce(p, dim, keepdim, "sum", torch.float32)
    return pointwise.run("root", "pow_f(a, s0)", [s], out_dtype, "f32", [1.0 / ord])


def _cast(t, dtype):
    return t if t.dtype == dtype else aten._to_copy.default(t, dtype=dtype)
