"""Scan handlers: cumsum, cumprod (in place and out= too) and logcumsumexp, inclusive along a dim, on the
scan engine (navitrain.wgpu.kernels.scan, which says how the kernels work and how close results are)."""
from __future__ import annotations

import torch

from navitrain.wgpu.dims import wrap_dim
from navitrain.wgpu.dispatch import implements
from navitrain.wgpu.kernels.scan import scan_into
from navitrain.wgpu.tensor import WgpuTensor, empty

aten = torch.ops.aten


def scan(op: str, x: WgpuTensor, dim: int, out_dtype: torch.dtype) -> WgpuTensor:
    dim = wrap_dim(dim, x.dim())
    return scan_into(op, x, empty(x.shape, out_dtype), dim)


def _int_promoted(x, dtype):
    if dtype is not None:
        return dtype
    return x.dtype if x.dtype.is_floating_point else torch.int64


@implements(aten.cumsum.default)
def cumsum(x, dim, *, dtype=None):
    return scan("sum", x, dim, _int_promoted(x, dtype))


@implements(aten.cumsum_.default)
def cumsum_(x, dim, *, dtype=None):
    from navitrain.wgpu.kernels.copy import copy_into

    return copy_into(x, cumsum(x, dim, dtype=dtype))


@implements(aten.cumsum.out)
def cumsum_out(x, dim, *, dtype=None, out):
    from navitrain.wgpu.kernels.copy import copy_into

    return copy_into(out, cumsum(x, dim, dtype=dtype))


@implements(aten.cumprod.default)
def cumprod(x, dim, *, dtype=None):
    return scan("prod", x, dim, _int_promoted(x, dtype))


@implements(aten.cumprod_.default)
def cumprod_(x, dim, *, dtype=None):
    from navitrain.wgpu.kernels.copy import copy_into

    return copy_into(x, cumprod(x, dim, dtype=dtype))


@implements(aten.logcumsumexp.default)
def logcumsumexp(x, dim):
    if not x.dtype.is_floating_point:
        raise RuntimeError(f"logcumsumexp(): expected a floating point input, got {x.dtype}")
    if x.dim() == 0 or x.numel() == 0:
        return scan("logsumexp", x, dim, x.dtype)
    # The CPU accumulates in double; an f32 scan rounds every step to the ulp of the running result,
    # which is coarse far from 0 (the gradient scans log|grad| - result, about -1e4 when an input is 1e4).
    # A second scan of x - max(x) along the dim keeps results near the max fine-grained; each element
    # takes whichever scan ran closer to 0.
    wide = x if x.dtype == torch.float32 else aten._to_copy.default(x, dtype=torch.float32)
    top = aten.amax.default(wide, [dim], True)
    shift = aten.where.ScalarOther(aten.isfinite.default(top), top, 0.0)
    plain = scan("logsumexp", wide, dim, torch.float32)
    shifted = aten.add_.Tensor(scan("logsumexp", aten.sub.Tensor(wide, shift), dim, torch.float32), shift)
    nearer = aten.lt.Tensor(aten.abs.default(aten.sub.Tensor(plain, shift)), aten.abs.default(plain))
    out = aten.where.self(nearer, shifted, plain)
    return out if x.dtype == torch.float32 else aten._to_copy.default(out, dtype=x.dtype)
