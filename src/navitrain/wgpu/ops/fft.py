"""torch.fft on the wgpu device: aten's three FFT primitives, which every torch.fft function (fft, ifft,
rfft, irfft, hfft, ihfft and their 2-D / n-D forms) and their gradients reach.

A multi-dim transform is successive 1-D transforms (kernels/fft.py works on the last dim of a contiguous
tensor): each dim is moved last with one copy (none for the last dim of a contiguous tensor) and moved
back as a view. The normalization is one real factor on every component, applied by the last 1-D pass,
as the CPU scales (so inf stays inf rather than becoming inf * 0 = NaN in a complex product).
Real-to-complex runs the complex transform of the real input (imaginary parts 0) and keeps the first
n // 2 + 1 entries when onesided; complex-to-real runs the complex transforms over the other dims, then
the inverse DFT of the Hermitian-extended last dim and keeps its real part.
float64 / complex128 (and half types, which the CPU refuses too) take the counted CPU fallback.
"""
from __future__ import annotations

import math

import torch

from navitrain.wgpu.dims import wrap_dim
from navitrain.wgpu.dispatch import cpu_fallback, implements, implements_complex
from navitrain.wgpu.kernels import fft as engine
from navitrain.wgpu.tensor import empty

aten = torch.ops.aten
C64 = torch.complex64


def _scale(normalization: int, sizes) -> float:
    """aten's fft_norm_mode: 0 none, 1 by 1/sqrt(n), 2 by 1/n, n the product of the signal sizes."""
    n = math.prod(sizes)
    return {0: 1.0, 1: 1.0 / math.sqrt(n) if n else 1.0, 2: 1.0 / n if n else 1.0}[int(normalization)]


def _contiguous(x):
    return x if x.is_contiguous() else aten.clone.default(x, memory_format=torch.contiguous_format)


def _along_last(x, d: int, fn):
    """fn applied to x with dim d moved last (contiguous), its result moved back (a view)."""
    last = x.dim() - 1
    if d == last:
        return fn(_contiguous(x))
    perm = [i for i in range(x.dim()) if i != d] + [d]
    back = [perm.index(i) for i in range(x.dim())]
    y = fn(aten.clone.default(aten.permute.default(x, perm), memory_format=torch.contiguous_format))
    return aten.permute.default(y, back)


def _c2c(x, dims, inverse: bool, scale: float):
    """Complex transforms of complex64 `x` over `dims` (the last one scaled), contiguous; x not conj."""
    if not dims:
        return aten.clone.default(x, memory_format=torch.contiguous_format) if scale == 1.0 else \
            aten.view_as_complex.default(aten.mul.Tensor(aten.view_as_real.default(_contiguous(x)), scale))
    for i, d in enumerate(dims):
        s = scale if i == len(dims) - 1 else 1.0
        x = _along_last(x, d, lambda y, s=s: engine.fft_last_dim(y, inverse, s))
    return _contiguous(x)


def _order(dims, ndim: int) -> list[int]:
    # The last dim first: it needs no copy, and the result then ends up moved back only once.
    dims = [wrap_dim(d, ndim) for d in dims]
    return sorted(set(dims), key=lambda d: -d)


def _resolved(x):
    return aten._conj_physical.default(x) if x.is_conj() else x


@implements(aten._fft_c2c.default)
def fft_c2c(self, dim, normalization, forward):
    if self.dtype != C64:
        return cpu_fallback(aten._fft_c2c.default, (self, dim, normalization, forward), {})
    dims = _order(dim, self.dim())
    return _c2c(_resolved(self), dims, not forward, _scale(normalization, [self.shape[d] for d in dims]))


@implements(aten._fft_r2c.default)
def fft_r2c(self, dim, normalization, onesided):
    if self.dtype != torch.float32:
        return cpu_fallback(aten._fft_r2c.default, (self, dim, normalization, onesided), {})
    dims = _order(dim, self.dim())
    x = aten._to_copy.default(self, dtype=C64)
    out = _c2c(x, dims, False, _scale(normalization, [self.shape[d] for d in dims]))
    if onesided and dim:
        last = wrap_dim(dim[-1], self.dim())  # aten halves dim.back(), the last one named
        out = _contiguous(aten.slice.Tensor(out, last, 0, self.shape[last] // 2 + 1))
    return out


@implements(aten._fft_c2r.default)
def fft_c2r(self, dim, normalization, last_dim_size):
    if self.dtype != C64:
        return cpu_fallback(aten._fft_c2r.default, (self, dim, normalization, last_dim_size), {})
    last = wrap_dim(dim[-1], self.dim())
    others = [d for d in _order(dim, self.dim()) if d != last]
    sizes = [self.shape[d] for d in others] + [last_dim_size]
    scale = _scale(normalization, sizes)
    x = _c2c(_resolved(self), others, True, 1.0) if others else _resolved(self)

    def real_inverse(y):
        full = engine.hermitian_extend(y, last_dim_size)
        return aten.select.int(aten.view_as_real.default(engine.fft_last_dim(full, True, scale)), -1, 0)

    return _contiguous(_along_last(x, last, real_inverse))


# -- complex64 pieces torch.fft's front-ends and gradients use --------------------------------------
@implements_complex(aten.constant_pad_nd.default)
def constant_pad_nd(x, pad, value=0):
    """Zero padding (fft(x, n=...) with n past the size): the real padding of the float32 view, whose last
    dim (the two parts) is not padded. Another fill value would need different values for the two parts."""
    if x.dtype != C64 or complex(value) != 0:
        return NotImplemented
    real = aten.view_as_real.default(_resolved(x))
    padded = aten.constant_pad_nd.default(real, [0, 0, *pad], 0.0)
    return aten.view_as_complex.default(_contiguous(padded))


@implements_complex(aten.new_zeros.default)
def new_zeros(x, size, *, dtype=None, layout=None, device=None, pin_memory=None):
    """Zeros of complex64 (fft_r2c's gradient pads the onesided gradient with them)."""
    if (dtype or x.dtype) != C64 or (device is not None and torch.device(device).type != "wgpu"):
        return NotImplemented
    return aten.zero_.default(empty(size, C64))


@implements_complex(aten.slice_scatter.default)
def slice_scatter(x, src, dim=0, start=None, end=None, step=1):
    """A copy of x with src written into a slice of it (fft_r2c's gradient: the onesided gradient into zeros)."""
    if x.dtype != C64 or src.dtype != C64:
        return NotImplemented
    out = aten.clone.default(x, memory_format=torch.contiguous_format)
    aten.copy_.default(aten.slice.Tensor(out, dim, start, end, step), src)
    return out
