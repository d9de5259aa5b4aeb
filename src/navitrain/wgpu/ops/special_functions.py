"""torch.special's Bessel, Airy, error-function, zeta, incomplete gamma and orthogonal polynomial ops
on the GPU (issue 17): before these handlers each call ran on the CPU (counted fallback).

PyTorch reaches some of them as aten.special_* and some, through its reference decompositions, as
prims (prims.bessel_j0, prims.erfcx, ...): both are registered. The WGSL lives in kernels/wgsl_bessel,
wgsl_polynomials, wgsl_error_functions and wgsl_gamma_functions and is launched by
kernels/special_launch (operands broadcast and made contiguous here first).

Dtypes: float32 on the GPU, integer and bool inputs promoted to float32 as on the CPU; float16 and
bfloat16 (computed in f32, rounded on store) only for the ops whose CPU kernels take them (i0, i0e, i1,
i1e, igamma, igammac); anything else (float64 above all) takes the counted CPU fallback, which also
gives the CPU's own error for dtypes it refuses.
"""
from __future__ import annotations

import torch

from navitrain.wgpu.dispatch import implements
from navitrain.wgpu.dtypes import NoKernelForDtype
from navitrain.wgpu.kernels import (
    special_launch,
    wgsl_bessel,
    wgsl_error_functions,
    wgsl_gamma_functions,
    wgsl_polynomials,
)
from navitrain.wgpu.ops.elementwise import _check_inplace, _float_result, _promote
from navitrain.wgpu.tensor import WgpuTensor, to_cpu

aten = torch.ops.aten
prims = torch.ops.prims

_FLOAT32_ONLY = (torch.float32,)
_REDUCED_TOO = (torch.float32, torch.float16, torch.bfloat16)


def _result_dtype(operands, dtypes) -> torch.dtype:
    dtype = _float_result(_promote(*operands) if len(operands) > 1 else operands[0].dtype)
    if dtype not in dtypes:
        raise NoKernelForDtype(f"no GPU kernel for this special function in {dtype}")
    return dtype


def _as_device_operands(operands, like: WgpuTensor) -> list[WgpuTensor]:
    """Tensors broadcast to one shape and contiguous; Python numbers and 0-d CPU tensors become 0-d
    device tensors first."""
    tensors = []
    for v in operands:
        if isinstance(v, WgpuTensor):
            tensors.append(v)
            continue
        value = v.item() if isinstance(v, torch.Tensor) else v
        dtype = torch.float32 if isinstance(value, float) else (torch.bool if isinstance(value, bool) else torch.int64)
        tensors.append(aten.new_full.default(like, [], value, dtype=dtype))
    shape = torch.broadcast_shapes(*(t.shape for t in tensors))
    out = []
    for t in tensors:
        if tuple(t.shape) != tuple(shape):
            t = aten.expand.default(t, list(shape))
        if not t.is_contiguous():
            t = aten.clone.default(t, memory_format=torch.contiguous_format)
        out.append(t)
    return out


def _launch(name, wgsl_fn, helpers, operands, dtypes):
    dtype = _result_dtype(operands, dtypes)
    like = next(v for v in operands if isinstance(v, WgpuTensor))
    tensors = _as_device_operands(operands, like)
    expr = f"{wgsl_fn}({', '.join(special_launch.OPERAND_NAMES[:len(tensors)])})"
    return special_launch.run(name, expr, helpers, tensors, dtype)


def _write_out(out, result):
    if tuple(out.shape) != tuple(result.shape):
        aten.resize_.default(out, list(result.shape))
    return aten.copy_.default(out, result)


def _register_unary(wgsl_fn, helpers, aten_name=None, prim=None, dtypes=_FLOAT32_ONLY, inplace=None):
    def functional(x):
        return _launch(wgsl_fn, wgsl_fn, helpers, [x], dtypes)

    def out_variant(x, *, out):
        return _write_out(out, functional(x))

    ops = [getattr(prims, prim).default] if prim else []
    if aten_name:
        ops.append(getattr(aten, aten_name).default)
        implements(getattr(aten, aten_name).out)(out_variant)
    implements(*ops)(functional)
    if inplace:
        def inplace_variant(x):
            result = functional(x)
            _check_inplace(x, result.dtype, inplace)  # i0_ of an integer tensor is refused, as on the CPU
            return aten.copy_.default(x, result)
        implements(getattr(aten, inplace).default)(inplace_variant)


_bessel = wgsl_bessel.helpers
for _fn, _aten, _prim in (
    ("bessel_j0_f", "special_bessel_j0", "bessel_j0"), ("bessel_j1_f", "special_bessel_j1", "bessel_j1"),
    ("bessel_y0_f", "special_bessel_y0", None), ("bessel_y1_f", "special_bessel_y1", None),
    ("bessel_i0_f", "special_modified_bessel_i0", None), ("bessel_i1_f", "special_modified_bessel_i1", None),
    ("bessel_k0_f", "special_modified_bessel_k0", None), ("bessel_k1_f", "special_modified_bessel_k1", None),
    ("bessel_k0e_f", "special_scaled_modified_bessel_k0", None),
    ("bessel_k1e_f", "special_scaled_modified_bessel_k1", None),
    ("spherical_bessel_j0_f", "special_spherical_bessel_j0", "spherical_bessel_j0"),
    ("airy_ai_f", "special_airy_ai", None),
):
    _register_unary(_fn, _bessel, _aten, _prim)
# i0, i0e, i1, i1e: the CPU has float16/bfloat16 kernels too (and autograd's i0/i1 gradients use them)
_register_unary("bessel_i0_f", _bessel, "i0", "bessel_i0", _REDUCED_TOO, inplace="i0_")
_register_unary("bessel_i0e_f", _bessel, "special_i0e", "bessel_i0e", _REDUCED_TOO)
_register_unary("bessel_i1_f", _bessel, "special_i1", "bessel_i1", _REDUCED_TOO)
_register_unary("bessel_i1e_f", _bessel, "special_i1e", "bessel_i1e", _REDUCED_TOO)
_register_unary("erfcx_f", wgsl_error_functions.helpers, "special_erfcx", "erfcx")
_register_unary("ndtri_f", wgsl_error_functions.helpers, "special_ndtri", "ndtri")


# -- binary: zeta, incomplete gamma ------------------------------------------------------------------
def _register_binary(wgsl_fn, helpers, aten_name, prim, dtypes, inplace=None, scalar_overloads=()):
    def functional(a, b):
        return _launch(wgsl_fn, wgsl_fn, helpers, [a, b], dtypes)

    def out_variant(a, b, *, out):
        return _write_out(out, functional(a, b))

    packet = getattr(aten, aten_name)
    implements(packet.default, getattr(prims, prim).default,
               *(getattr(packet, o) for o in scalar_overloads))(functional)
    implements(packet.out, *(getattr(packet, o + "_out") for o in scalar_overloads))(out_variant)
    if inplace:
        def inplace_variant(a, b):
            result = functional(a, b)
            _check_inplace(a, result.dtype, inplace)
            return aten.copy_.default(a, result)
        implements(getattr(aten, inplace).default)(inplace_variant)


_register_binary("zeta_f", wgsl_gamma_functions.helpers, "special_zeta", "zeta", _FLOAT32_ONLY,
                 scalar_overloads=("self_scalar", "other_scalar"))
_register_binary("igamma_f", wgsl_gamma_functions.helpers, "igamma", "igamma", _REDUCED_TOO, inplace="igamma_")
_register_binary("igammac_f", wgsl_gamma_functions.helpers, "igammac", "igammac", _REDUCED_TOO, inplace="igammac_")


# -- orthogonal polynomials (x, n) -----------------------------------------------------------------------
def _order_too_large(n) -> bool:
    """Whether an order needs more recurrence steps than one GPU thread should run (the CPU loops n times)."""
    if isinstance(n, WgpuTensor):
        if n.numel() == 0:
            return False
        return bool(to_cpu(aten.max.default(n)).item() > wgsl_polynomials.MAX_RECURRENCE_ORDER)
    value = n.item() if isinstance(n, torch.Tensor) else n
    return value > wgsl_polynomials.MAX_RECURRENCE_ORDER


def _register_polynomial(wgsl_fn, aten_name, loops_n_times):
    def functional(x, n):
        if loops_n_times and _order_too_large(n):
            raise NoKernelForDtype(f"{aten_name}: orders above {wgsl_polynomials.MAX_RECURRENCE_ORDER} run on the CPU")
        return _launch(wgsl_fn, wgsl_fn, wgsl_polynomials.helpers, [x, n], _FLOAT32_ONLY)

    def out_variant(x, n, *, out):
        return _write_out(out, functional(x, n))

    packet = getattr(aten, aten_name)
    implements(packet.default, packet.x_scalar, packet.n_scalar)(functional)
    implements(packet.out, packet.x_scalar_out, packet.n_scalar_out)(out_variant)


# Laguerre, Legendre and the shifted Chebyshev kinds (at x ~ 0, where 2x - 1 rounds to -1) can recur n
# times without overflowing; the others stop on overflow or have closed forms.
for _fn, _aten, _loops in (
    ("chebyshev_t_f", "special_chebyshev_polynomial_t", False),
    ("chebyshev_u_f", "special_chebyshev_polynomial_u", False),
    ("chebyshev_v_f", "special_chebyshev_polynomial_v", False),
    ("chebyshev_w_f", "special_chebyshev_polynomial_w", False),
    ("shifted_chebyshev_t_f", "special_shifted_chebyshev_polynomial_t", True),
    ("shifted_chebyshev_u_f", "special_shifted_chebyshev_polynomial_u", True),
    ("shifted_chebyshev_v_f", "special_shifted_chebyshev_polynomial_v", True),
    ("shifted_chebyshev_w_f", "special_shifted_chebyshev_polynomial_w", True),
    ("hermite_h_f", "special_hermite_polynomial_h", False), ("hermite_he_f", "special_hermite_polynomial_he", False),
    ("laguerre_l_f", "special_laguerre_polynomial_l", True), ("legendre_p_f", "special_legendre_polynomial_p", True),
):
    _register_polynomial(_fn, _aten, _loops)
