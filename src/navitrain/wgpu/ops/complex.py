"""complex64 on the wgpu device: views between complex64 and float32, the lazy conjugate, and elementwise
ops and sums computed on the float32 words.

A complex64 tensor is stored as interleaved float32 pairs (element i at words 2i, 2i+1), with strides and
offsets counted in complex elements as PyTorch counts them; view_as_real is a float32 view of the same
block (last dim 2, strides and offset doubled). Every kernel here is a pointwise kernel over float32
views: an operand's real and imaginary parts are two strided views `re`, `im` (`_Parts`), and a complex
result is written as two pointwise launches, one per part, into the real and imaginary views of the
output. PyTorch's conj bit (torch.conj is a view) is honoured by negating the imaginary part as it is
loaded. complex128 has no device storage: its ops take the counted CPU fallback (NotImplemented).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from navitrain.wgpu.dims import wrap_dim
from navitrain.wgpu.dispatch import implements, implements_complex
from navitrain.wgpu.kernels import pointwise
from navitrain.wgpu.ops.views import view_of
from navitrain.wgpu.promotion import result_type
from navitrain.wgpu.tensor import WgpuTensor, empty, storage_as, wrap

aten = torch.ops.aten
C64 = torch.complex64
NAN = "bitcast<f32>(0x7fc00000u)"


# -- views -----------------------------------------------------------------------------------------
@implements(aten.view_as_real.default)
def view_as_real(x):
    if not x.dtype.is_complex:
        raise RuntimeError("view_as_real is only supported for complex tensors")
    if x.is_conj():
        raise RuntimeError("view_as_real doesn't work on unresolved conjugated tensors.  To resolve the conjugate "
                           "tensor so you can view it as real, use self.resolve_conj(); however, be warned that "
                           "the resulting tensor will NOT alias the original.")
    return wrap(storage_as(x._ws, torch.float32), [*x.shape, 2], [2 * s for s in x.stride()] + [1],
                2 * x.storage_offset(), torch.float32)


@implements(aten.view_as_complex.default)
def view_as_complex(x):
    if x.dtype not in (torch.float32, torch.float64, torch.float16):
        raise RuntimeError("view_as_complex is only supported for half, float and double tensors, but got a tensor "
                           f"of scalar type: {_scalar_type_name(x.dtype)}")
    if x.dim() == 0:
        raise RuntimeError("Input tensor must have one or more dimensions")
    if x.shape[-1] != 2:
        raise RuntimeError("Tensor must have a last dimension of size 2")
    if x.stride(-1) != 1:
        raise RuntimeError("Tensor must have a last dimension with stride 1")
    if any(s % 2 for s in x.stride()[:-1]):
        raise RuntimeError("Tensor must have a stride divisible by 2 for all but last dimension")
    if x.storage_offset() % 2:
        raise RuntimeError("Tensor must have a storage_offset divisible by 2")
    if x.dtype != torch.float32:
        # complex128 / complex32 have no device storage, and a view cannot fall back to the CPU.
        raise NotImplementedError(f"navitrain wgpu: view_as_complex of {x.dtype} (only float32 -> complex64 "
                                  "lives on the wgpu device)")
    return wrap(storage_as(x._ws, C64), list(x.shape[:-1]), [s // 2 for s in x.stride()[:-1]],
                x.storage_offset() // 2, C64)


def _scalar_type_name(dtype: torch.dtype) -> str:
    return {torch.int32: "Int", torch.int64: "Long", torch.int16: "Short", torch.int8: "Char", torch.uint8: "Byte",
            torch.bool: "Bool", torch.bfloat16: "BFloat16", torch.complex64: "ComplexFloat"}.get(dtype, str(dtype))


@implements(aten._conj.default)
def _conj(x):
    v = view_of(x, x.shape, x.stride())
    torch._C._set_conj(v, not x.is_conj())
    return v


# -- operands as real and imaginary parts -------------------------------------------------------------
@dataclass
class _Parts:
    """One operand of a complex kernel: WGSL expressions for its real and imaginary parts, the tensors
    (float32 views or real tensors) those read, and float scalars."""
    re: str
    im: str
    tensors: list
    scalars: list


def _real_view(z: WgpuTensor) -> WgpuTensor:
    """view_as_real ignoring the conj bit (the caller negates the imaginary part)."""
    return wrap(storage_as(z._ws, torch.float32), [*z.shape, 2], [2 * s for s in z.stride()] + [1],
                2 * z.storage_offset(), torch.float32)


def _split(z: WgpuTensor) -> tuple[WgpuTensor, WgpuTensor]:
    r = _real_view(z)
    return aten.select.int(r, -1, 0), aten.select.int(r, -1, 1)


def _operands(values) -> tuple[list[_Parts], list, list] | None:
    """Each value (complex64 or real wgpu tensor, 0-d CPU tensor, Python number) as _Parts naming inputs
    a, b, c, d and scalars s0, s1, ...; None where it cannot be computed here (complex128, >4 inputs)."""
    tensors, scalars, parts = [], [], []

    def tensor_name(t):
        tensors.append(t)
        return pointwise.NAMES[len(tensors) - 1] if len(tensors) <= len(pointwise.NAMES) else None

    def scalar_name(v):
        scalars.append(float(np.float32(v)))  # as PyTorch casts a scalar to complex64: rounded to float32
        return f"s{len(scalars) - 1}"

    # The imaginary part of a real operand is a zero the compiler cannot see: lavapipe folds `x * 0.0` to 0,
    # where IEEE (and the CPU) gives NaN for x = inf or NaN.
    zero = None

    def zero_name():
        nonlocal zero
        if zero is None:
            zero = scalar_name(0.0)
        return zero

    for v in values:
        if isinstance(v, torch.Tensor) and not isinstance(v, WgpuTensor):
            if v.dim() != 0:
                return None
            v = v.item()
        if isinstance(v, WgpuTensor):
            if v.dtype.is_complex:
                if v.dtype != C64:
                    return None
                re, im = _split(v)
                a, b = tensor_name(re), tensor_name(im)
                if a is None or b is None:
                    return None
                parts.append(_Parts(a, f"(-{b})" if v.is_conj() else b, [re, im], []))
            else:
                if v.dtype == torch.float64:
                    return None
                a = tensor_name(v)  # loaded as f32, as PyTorch converts it to complex64
                if a is None:
                    return None
                parts.append(_Parts(a, zero_name(), [v], []))
        elif isinstance(v, complex):
            parts.append(_Parts(scalar_name(v.real), scalar_name(v.imag), [], []))
        else:
            parts.append(_Parts(scalar_name(v), zero_name(), [], []))
    return parts, tensors, scalars


def _complex_out(shape) -> tuple[WgpuTensor, WgpuTensor, WgpuTensor]:
    out = empty(shape, C64)
    re, im = _split(out)
    return out, re, im


def _launch(name: str, re_expr: str, im_expr: str, tensors, scalars, shape) -> WgpuTensor:
    """A complex64 result of `shape` whose parts are the two expressions (two pointwise launches)."""
    out, out_re, out_im = _complex_out(shape)
    if out.numel():
        kinds = "f" * len(scalars)
        pointwise.run(f"c_{name}_re", re_expr, tensors, torch.float32, "f32", scalars, kinds, out=out_re, shape=shape)
        pointwise.run(f"c_{name}_im", im_expr, tensors, torch.float32, "f32", scalars, kinds, out=out_im, shape=shape)
    return out


def _shape_of(*values) -> tuple:
    return pointwise.broadcast_shape(*(tuple(v.shape) for v in values if isinstance(v, WgpuTensor)))


def _complex_result(*values) -> bool:
    """True where PyTorch's result dtype is complex64 (complex128 and others go to the CPU)."""
    try:
        return result_type(*values) == C64
    except TypeError:
        return False


# -- elementwise arithmetic ------------------------------------------------------------------------
def _product(p: _Parts, q: _Parts) -> tuple[str, str]:
    # (a + bi)(c + di) = (ac - bd) + (ad + bc)i, as PyTorch's CPU kernel computes it (no rescaling).
    return f"(({p.re}) * ({q.re}) - ({p.im}) * ({q.im}))", f"(({p.re}) * ({q.im}) + ({p.im}) * ({q.re}))"


def _quotient(p: _Parts, q: _Parts) -> tuple[str, str]:
    """c10::complex's division (numpy's: Smith's scaling by the larger part of the divisor), branch-free."""
    a, b, c, d = p.re, p.im, q.re, q.im
    # NaN compares false in C: |c| >= |d| then takes the second branch (both give NaN there anyway).
    first = f"(abs({c}) >= abs({d}) && !is_nan({c}) && !is_nan({d}))"
    zero = f"({c} == 0.0 && {d} == 0.0 && !is_nan({c}) && !is_nan({d}))"
    r1, s1 = f"(({d}) / ({c}))", f"(1.0 / (({c}) + ({d}) * (({d}) / ({c}))))"
    r2, s2 = f"(({c}) / ({d}))", f"(1.0 / (({d}) + ({c}) * (({c}) / ({d}))))"
    re = (f"select(select((({a}) * {r2} + ({b})) * {s2}, (({a}) + ({b}) * {r1}) * {s1}, {first}), "
          f"({a}) / abs({c}), {zero})")
    im = (f"select(select((({b}) * {r2} - ({a})) * {s2}, (({b}) - ({a}) * {r1}) * {s1}, {first}), "
          f"({b}) / abs({d}), {zero})")
    return re, im


def _binary(name: str, x, y, alpha=1):
    if not _complex_result(x, y) or (alpha != 1 and not isinstance(alpha, (int, float))):
        return NotImplemented
    ops = _operands([x, y])
    if ops is None:
        return NotImplemented
    (p, q), tensors, scalars = ops
    if name in ("add", "sub"):
        # PyTorch's CPU kernel computes a + alpha * b (sub: alpha negated) even for alpha = 1, as a complex
        # product (alpha + 0i)(c + di): 0 * inf makes NaN there, and must here too.
        s, z = f"s{len(scalars)}", f"s{len(scalars) + 1}"
        scalars += [float(np.float32(alpha if name == "add" else -alpha)), 0.0]  # z: a zero not folded away
        q = _Parts(f"({s} * ({q.re}) - {z} * ({q.im}))", f"({s} * ({q.im}) + {z} * ({q.re}))", [], [])
        name = "add"
    if name == "add":
        re, im = f"({p.re}) + ({q.re})", f"({p.im}) + ({q.im})"
    elif name == "mul":
        re, im = _product(p, q)
    else:
        re, im = _quotient(p, q)
    return _launch(name, re, im, tensors, scalars, _shape_of(x, y))


@implements_complex(aten.add.Tensor, aten.add.Scalar)
def add(x, y, *, alpha=1):
    return _binary("add", x, y, alpha)


@implements_complex(aten.sub.Tensor, aten.sub.Scalar)
def sub(x, y, *, alpha=1):
    return _binary("sub", x, y, alpha)


@implements_complex(aten.mul.Tensor, aten.mul.Scalar)
def mul(x, y):
    return _binary("mul", x, y)


@implements_complex(aten.div.Tensor, aten.div.Scalar)
def div(x, y):
    return _binary("div", x, y)


def _in_place(fn):
    def run(x, y, **kwargs):
        if x.dtype != C64:
            return NotImplemented  # a real tensor cannot hold a complex result: PyTorch's error, from the CPU
        out = fn(x, y, **kwargs)
        return out if out is NotImplemented else copy_(x, out)
    return run


implements_complex(aten.add_.Tensor, aten.add_.Scalar)(_in_place(add))
implements_complex(aten.sub_.Tensor, aten.sub_.Scalar)(_in_place(sub))
implements_complex(aten.mul_.Tensor, aten.mul_.Scalar)(_in_place(mul))
implements_complex(aten.div_.Tensor, aten.div_.Scalar)(_in_place(div))


def _unary(name: str, x, re: str, im: str):
    ops = _operands([x])
    if ops is None:
        return NotImplemented
    (p,), tensors, scalars = ops
    return _launch(name, re.format(re=p.re, im=p.im), im.format(re=p.re, im=p.im), tensors, scalars, tuple(x.shape))


@implements_complex(aten.neg.default)
def neg(x):
    return _unary("neg", x, "-({re})", "-({im})")


@implements(aten._conj_physical.default)
def conj_physical(x):
    if not x.dtype.is_complex:
        return aten.clone.default(x)
    return _unary("conj", x, "{re}", "-({im})")


@implements(aten.conj_physical_.default)
def conj_physical_(x):
    return x if not x.dtype.is_complex else copy_(x, conj_physical(x))


def _real_result(name: str, x, expr: str):
    ops = _operands([x])
    if ops is None:
        return NotImplemented
    (p,), tensors, _ = ops
    out = empty(tuple(x.shape), torch.float32)
    if out.numel():
        pointwise.run(f"c_{name}", expr.format(re=p.re, im=p.im), tensors, torch.float32, "f32", out=out,
                      shape=tuple(x.shape))
    return out


@implements_complex(aten.abs.default)
def abs_(x):
    return _real_result("abs", x, "hypot_f({re}, {im})")


@implements(aten.angle.default)
def angle(x):
    if x.dtype.is_complex:
        return _real_result("angle", x, "atan2_f({im}, {re})")
    # A real x: pi where x < 0, NaN where NaN, else 0 (aten's angle_impl); integers give float32.
    out_dtype = x.dtype if x.dtype.is_floating_point else torch.float32
    if out_dtype == torch.float64:
        return _cpu(aten.angle.default, x)
    return pointwise.run("angle_real", "select(select(0.0, 3.141592653589793, a < 0.0), a, is_nan(a))", [x],
                         out_dtype, "f32", shape=tuple(x.shape))


def _float_operand(v, k: int):
    """Part k (0 real, 1 imaginary) of a where() operand as a float32 wgpu tensor."""
    if isinstance(v, torch.Tensor) and not isinstance(v, WgpuTensor):
        v = v.item()
    if isinstance(v, WgpuTensor):
        if v.dtype.is_complex:
            return _split(_resolved(v))[k]
        v = v if v.dtype == torch.float32 else aten._to_copy.default(v, dtype=torch.float32)
        return v if k == 0 else aten.zeros_like.default(v)
    value = complex(v)
    return aten.fill_.Scalar(empty((), torch.float32), value.imag if k else value.real)


@implements_complex(aten.where.self, aten.where.ScalarSelf, aten.where.ScalarOther, aten.where.Scalar)
def where(condition, x, y):
    if not _complex_result(x, y) or any(isinstance(v, WgpuTensor) and v.dtype in (torch.float64, torch.complex128)
                                        for v in (x, y)):
        return NotImplemented
    shape = _shape_of(condition, x, y)
    out, re, im = _complex_out(shape)
    for k, part in enumerate((re, im)):
        aten.copy_.default(part, aten.where.self(condition, _float_operand(x, k), _float_operand(y, k)))
    return out


@implements(aten.complex.default)
def complex_(real, imag):
    if real.dtype != torch.float32 or imag.dtype != torch.float32:
        return _cpu(aten.complex.default, real, imag)
    shape = _shape_of(real, imag)
    out, re, im = _complex_out(shape)
    aten.copy_.default(re, real)
    aten.copy_.default(im, imag)
    return out


@implements(aten.polar.default)
def polar(abs, angle):
    if abs.dtype != torch.float32 or angle.dtype != torch.float32:
        return _cpu(aten.polar.default, abs, angle)
    # cos_f/sin_f (kernels/wgsl_trig.py): full-range reduction (a driver's is far off), NaN for NaN and inf as C
    cos = "cos_f(b)"
    sin = "sin_f(b)"
    return _launch("polar", f"a * {cos}", f"a * {sin}", [abs, angle], [], _shape_of(abs, angle))


def _cpu(func, *args):
    from navitrain.wgpu.dispatch import cpu_fallback

    return cpu_fallback(func, args, {})


# -- copies and fills -------------------------------------------------------------------------------
@implements_complex(aten.copy_.default)
def copy_(dst, src, non_blocking=False):
    if not isinstance(dst, WgpuTensor) or not isinstance(src, WgpuTensor):
        return NotImplemented  # transfers between the CPU and the device: ops/copy.py (raw bytes)
    if not dst.dtype.is_complex:
        if src.dtype != C64:
            return NotImplemented
        # PyTorch warns and keeps the real part.
        return aten.copy_.default(dst, _split(src)[0])
    if dst.dtype != C64:
        return NotImplemented
    ops = _operands([src])
    if ops is None:
        return NotImplemented
    (p,), tensors, scalars = ops
    re, im = _split(dst)
    shape = tuple(dst.shape)
    im_expr = f"-({p.im})" if dst.is_conj() else p.im
    if dst.numel():
        # Through a temporary where src overlaps dst (x.copy_(x.conj())): the two launches would otherwise
        # read a part the first one already wrote.
        if any(t._ws.block is dst._ws.block for t in tensors):
            src = _launch("copy", p.re, p.im, tensors, scalars, tuple(src.shape))
            return copy_(dst, src)
        pointwise.run("c_copy_re", p.re, tensors, torch.float32, "f32", scalars, "f" * len(scalars), out=re,
                      shape=shape)
        pointwise.run("c_copy_im", im_expr, tensors, torch.float32, "f32", scalars, "f" * len(scalars), out=im,
                      shape=shape)
    return dst


@implements_complex(aten.clone.default)
def clone(x, *, memory_format=None):
    if x.dtype != C64 or memory_format not in (None, torch.preserve_format, torch.contiguous_format):
        return NotImplemented
    return copy_(empty(x.shape, C64), x)


@implements_complex(aten._to_copy.default)
def _to_copy(x, *, dtype=None, layout=None, device=None, pin_memory=None, non_blocking=False, memory_format=None):
    dtype = dtype or x.dtype
    on_device = device is None or torch.device(device).type == "wgpu"
    if not isinstance(x, WgpuTensor) or not on_device or memory_format not in (None, torch.preserve_format,
                                                                                 torch.contiguous_format):
        return _to_copy_elsewhere(x, dtype, device, memory_format)
    if dtype == C64:
        return copy_(empty(x.shape, C64), x)
    if x.dtype == C64 and not dtype.is_complex and dtype != torch.float64:
        return aten._to_copy.default(_split(x)[0], dtype=dtype)
    return NotImplemented


def _to_copy_elsewhere(x, dtype, device, memory_format):
    from navitrain.wgpu.ops import copy as real_copy

    return real_copy._to_copy(x, dtype=dtype, device=device, memory_format=memory_format)


@implements_complex(aten.fill_.Scalar, aten.fill_.Tensor)
def fill_(x, value):
    if isinstance(value, torch.Tensor):
        value = value.item()
    if x.dtype != C64:
        return NotImplemented
    value = complex(value)
    re, im = _split(x)
    aten.fill_.Scalar(re, value.real)
    aten.fill_.Scalar(im, -value.imag if x.is_conj() else value.imag)
    return x


@implements_complex(aten.zero_.default)
def zero_(x):
    return fill_(x, 0)


# -- sums -------------------------------------------------------------------------------------------
def _resolved(x: WgpuTensor) -> WgpuTensor:
    return conj_physical(x) if x.is_conj() else x


def _reduce(op, x, dim, keepdim, dtype):
    if x.dtype != C64 or dtype not in (None, C64):
        return NotImplemented
    dims = list(range(x.dim())) if dim is None or len(dim) == 0 else sorted({wrap_dim(d, max(x.dim(), 1)) for d in dim})
    r = view_as_real(_resolved(x))
    if x.dim() == 0:
        return view_as_complex(aten.clone.default(r))
    parts = op(r, dims, keepdim)
    if not parts.is_contiguous():
        parts = aten.clone.default(parts, memory_format=torch.contiguous_format)
    return view_as_complex(parts)


@implements_complex(aten.sum.default)
def sum_all(x, *, dtype=None):
    return _reduce(aten.sum.dim_IntList, x, None, False, dtype)


@implements_complex(aten.sum.dim_IntList)
def sum_dim(x, dim, keepdim=False, *, dtype=None):
    return _reduce(aten.sum.dim_IntList, x, dim, keepdim, dtype)


@implements_complex(aten.mean.default)
def mean_all(x, *, dtype=None):
    return _reduce(aten.mean.dim, x, None, False, dtype)


@implements_complex(aten.mean.dim)
def mean_dim(x, dim, keepdim=False, *, dtype=None):
    return _reduce(aten.mean.dim, x, dim, keepdim, dtype)


@implements(aten._neg_view.default)
def _neg_view(x):
    # The imaginary part of a lazily conjugated tensor (x.conj().imag). aten returns a view with the neg
    # bit, which the real kernels here would not honour; this returns the negated values in a new tensor,
    # so reads are right but a write into it does not reach x (PyTorch's view would).
    return aten.neg.default(x)
