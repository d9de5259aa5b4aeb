"""Eigen-, singular value and QR decompositions on the wgpu device (issue 17): aten._linalg_eigh (linalg.eigh,
eigvalsh), aten._linalg_svd (svd, linalg.svd, svdvals and what PyTorch builds on them: cond, matrix_norm
'nuc'/2, ...), linalg_qr, geqrf, linalg_householder_product and ormqr, and on them linalg_pinv (atol_rtol_tensor),
linalg_lstsq and linalg_matrix_exp (on the matrix products); float32, batched small matrices.

The engines are kernels/linalg_eigh.py (cyclic Jacobi) and kernels/linalg_svd.py (one-sided Jacobi), one
workgroup per matrix, the matrix in workgroup memory, and kernels/linalg_qr.py (Householder, LAPACK's
conventions, so Q and R match the CPU's). Sizes that do not fit the device's workgroup memory (eigenvectors
up to n = 62 on 32 KiB; at most 64 rows or columns anywhere), QR above 128 rows or columns and other dtypes
raise NoKernelForDtype: the counted CPU fallback.
Singular / eigenvector signs are not defined (PyTorch's docs); ours are whatever Jacobi's rotations give,
so they may differ from LAPACK's per column. Gradients come from PyTorch's autograd formulas, which call
these forwards.
"""
from __future__ import annotations

import torch

from navitrain.wgpu.dispatch import implements
from navitrain.wgpu.dtypes import NoKernelForDtype
from navitrain.wgpu.kernels import linalg_eigh as eigh_engine
from navitrain.wgpu.kernels import linalg_qr as qr_engine
from navitrain.wgpu.kernels import linalg_svd as svd_engine
from navitrain.wgpu.kernels.copy import copy_into
from navitrain.wgpu.ops.linalg import (
    _batch_stride,
    _batched,
    _count,
    _float32_only,
    _identity_into,
    _is_vector_rhs,
    _like,
    _meta,
)
from navitrain.wgpu.tensor import WgpuTensor, empty, from_cpu, to_cpu

aten = torch.ops.aten


@implements(aten._linalg_eigh.default)
def linalg_eigh(A, UPLO="L", compute_v=True):
    w_meta, v_meta = _meta(aten._linalg_eigh.default, A, UPLO, compute_v)
    _float32_only(A)
    n = A.shape[-1]
    if not eigh_engine.fits(n, compute_v):
        raise NoKernelForDtype(f"linalg.eigh: order {n} does not fit one workgroup's memory")  # counted fallback
    w, v = _like(w_meta), _like(v_meta)
    batch_shape = A.shape[:-2]
    batch = _count(batch_shape)
    if batch == 0 or n == 0:
        return w, v
    a, a_bs = _batched(A, batch_shape)
    eigh_engine.eigh(a, batch, a_bs, UPLO.upper() == "L", w, v if compute_v else None,
                     _batch_stride(v) if compute_v else 0)
    return w, v


@implements(aten._linalg_svd.default)
def linalg_svd(A, full_matrices=False, compute_uv=True, driver=None):
    u_meta, s_meta, vh_meta = _meta(aten._linalg_svd.default, A, full_matrices, compute_uv, driver=driver)
    _float32_only(A)
    m, n = A.shape[-2], A.shape[-1]
    if not svd_engine.fits(m, n):
        raise NoKernelForDtype(f"linalg.svd: a {m} x {n} matrix does not fit one workgroup's memory")
    u, s, vh = _like(u_meta), _like(s_meta), _like(vh_meta)
    batch_shape = A.shape[:-2]
    batch = _count(batch_shape)
    if batch == 0 or min(m, n) == 0:
        if compute_uv and full_matrices:  # no singular vectors to find: any orthonormal basis, as the identity
            for t in (u, vh):
                if t.numel():
                    _identity_into(t)
        return u, s, vh
    a, a_bs = _batched(A, batch_shape)
    wide = m < n  # the engine works on the tall one of A and A^T: A^T = V S U^T swaps the roles of U and V
    left, right = None, None
    if compute_uv:
        u_bs, vh_bs = _batch_stride(u), _batch_stride(vh)
        u_geom = (u, u_bs, u.stride(-2), u.stride(-1))
        v_geom = (vh, vh_bs, vh.stride(-1), vh.stride(-2))  # V = Vh^T: the same memory, strides swapped
        left, right = (v_geom, u_geom) if wide else (u_geom, v_geom)
        left = (*left, (vh.shape[-2] if wide else u.shape[-1]))
    svd_engine.svd(a, batch, a_bs, wide, s, left, right)
    return u, s, vh


# -- QR (Householder, LAPACK's geqrf conventions: the CPU's Q and R up to rounding) ---------------------------
def _qr_fits(*sizes) -> None:
    _float32_only(*[s for s in sizes if isinstance(s, torch.Tensor)])
    if any(d > qr_engine.MAX_N for t in sizes for d in t.shape[-2:]):
        raise NoKernelForDtype(f"QR: matrices above {qr_engine.MAX_N} rows or columns run on the CPU")


def _geqrf(A):
    """(a, tau) as geqrf returns them: a column-major per matrix, tau contiguous [..., min(m, n)]."""
    m, n = A.shape[-2], A.shape[-1]
    batch_shape = list(A.shape[:-2])
    a = empty([*batch_shape, m, n], torch.float32, _column_major_strides(batch_shape, m, n))
    tau = empty([*batch_shape, min(m, n)], torch.float32)
    batch = _count(batch_shape)
    if batch and a.numel():
        copy_into(a, A)
        qr_engine.geqrf_in_place(a, batch, m * n, tau)
    return a, tau


def _column_major_strides(batch_shape, m, n):
    strides, step = [], m * n
    for size in reversed(batch_shape):
        strides.insert(0, step)
        step *= size
    return [*strides, 1, max(m, 1)]


def _apply_q(v, tau, x, *, left: bool, transpose: bool) -> WgpuTensor:
    """x (in place, whole batch) <- op(Q) x (left) or x op(Q), Q = H_0 .. H_{k-1} from (v, tau)."""
    target = x if left else x.mT  # X Q = (Q^T X^T)^T
    backward = (not transpose) if left else transpose
    batch_shape = target.shape[:-2]
    batch = _count(batch_shape)
    if batch == 0 or target.numel() == 0:
        return x
    v, v_bs = _batched(v, batch_shape)
    tau, tau_bs = _batched(tau, batch_shape, tail=1)
    qr_engine.apply_reflectors(v, v_bs, tau, tau_bs, tau.shape[-1], target, _batch_stride(target), batch,
                               backward)
    return x


@implements(aten.geqrf.default)
def geqrf(A):
    if A.dim() < 2:
        raise RuntimeError("torch.geqrf: The input tensor A must have at least 2 dimensions.")
    _qr_fits(A)
    return _geqrf(A)


@implements(aten.linalg_qr.default)
def linalg_qr(A, mode="reduced"):
    q_meta, r_meta = _meta(aten.linalg_qr.default, A, mode)
    _qr_fits(A)
    q, r = _like(q_meta), _like(r_meta)
    a, tau = _geqrf(A)
    if r.numel():
        copy_into(r, aten.triu.default(aten.slice.Tensor(a, -2, 0, r.shape[-2])))
    if mode != "r" and q.numel():
        _apply_q(a, tau, _identity_into(q), left=True, transpose=False)
    return q, r


@implements(aten.linalg_householder_product.default)
def linalg_householder_product(A, tau):
    q = _like(_meta(aten.linalg_householder_product.default, A, tau))
    _qr_fits(A, tau)
    if q.numel():
        _apply_q(A, tau, _identity_into(q), left=True, transpose=False)
    return q


@implements(aten.ormqr.default)
def ormqr(A, tau, other, left=True, transpose=False):
    out = _like(_meta(aten.ormqr.default, A, tau, other, left, transpose))
    _qr_fits(A, tau, other)
    copy_into(out, other)
    return _apply_q(A, tau, out, left=left, transpose=transpose)


# -- pseudo-inverse (as PyTorch's linalg_pinv composes it, on the decompositions above) ------------------------
def _host_tolerance(t) -> torch.Tensor | None:
    if t is None:
        return None
    return (to_cpu(t) if isinstance(t, WgpuTensor) else t).to(torch.float64)


def _tolerances(A, atol, rtol):
    """(atol, rtol) as float64 CPU tensors with PyTorch's defaults: atol 0; rtol eps * max(m, n), or 0 where
    an atol > 0 was given."""
    atol, rtol = _host_tolerance(atol), _host_tolerance(rtol)
    if rtol is None:
        default = torch.tensor(torch.finfo(A.dtype).eps * max(A.shape[-1], A.shape[-2]), dtype=torch.float64)
        rtol = default if atol is None else torch.where(atol > 0, torch.zeros((), dtype=torch.float64), default)
    if atol is None:
        atol = torch.zeros((), dtype=torch.float64)
    return atol, rtol


def _threshold(values, reference, atol, rtol):
    """Where |values| exceed max(atol, rtol * reference) (reference: [..., 1]), their reciprocals, else 0."""
    if atol.numel() == 1 and rtol.numel() == 1:
        tol = aten.clamp_min.default(aten.mul.Tensor(reference, rtol.item()), atol.item())
    else:  # batched tolerances: broadcast over the batch on the device
        tol = aten.maximum.default(from_cpu(atol.float().unsqueeze(-1)),
                                   aten.mul.Tensor(from_cpu(rtol.float().unsqueeze(-1)), reference))
    keep = aten.gt.Tensor(aten.abs.default(values), tol)
    return aten.where.self(keep, aten.reciprocal.default(values), aten.zeros_like.default(values))


@implements(aten.linalg_pinv.atol_rtol_tensor)
def linalg_pinv(A, *, atol=None, rtol=None, hermitian=False):
    _float32_only(A)
    m, n = A.shape[-2], A.shape[-1]
    if not (eigh_engine.fits(n) if hermitian else svd_engine.fits(m, n)) or A.dim() < 2:
        raise NoKernelForDtype("linalg.pinv: this size runs on the CPU")  # counted fallback (and its errors)
    atol, rtol = _tolerances(A, atol, rtol)
    if A.numel() == 0:
        return empty([*A.shape[:-2], n, m], torch.float32)
    if not hermitian:
        u, s, vh = linalg_svd(A, False, True)
        s_inv = _threshold(s, aten.slice.Tensor(s, -1, 0, 1), atol, rtol)  # s is descending
        return aten.matmul.default(aten.mul.Tensor(vh.mT, aten.unsqueeze.default(s_inv, -2)), u.mT)
    w, v = linalg_eigh(A, "L", True)
    w_inv = _threshold(w, aten.amax.default(aten.abs.default(w), [-1], True), atol, rtol)
    return aten.matmul.default(aten.mul.Tensor(v, aten.unsqueeze.default(w_inv, -2)), v.mT)


# -- least squares (through the SVD: the minimum-norm solution) ----------------------------------------------
_LSTSQ_DRIVERS = (None, "gels", "gelsy", "gelsd", "gelss")


@implements(aten.linalg_lstsq.default)
def linalg_lstsq(A, B, rcond=None, *, driver=None):
    """As the CPU's drivers return it: solution; residuals |A x - b|^2 where m > n and the driver is not
    gelsy (gelsd / gelss: only when every matrix has full rank, which, as on the CPU, costs a read-back);
    rank (not for gels); singular values (gelsd / gelss). The solution is the minimum-norm one from the
    SVD, which is what gelsy / gelsd / gelss compute and what gels computes for full-rank A."""
    if (driver not in _LSTSQ_DRIVERS or A.dim() < 2 or B.dim() < 1 or A.numel() == 0 or B.numel() == 0
            or not svd_engine.fits(A.shape[-2], A.shape[-1])):
        raise NoKernelForDtype("linalg.lstsq: this call runs on the CPU (and raises its errors there)")
    _float32_only(A, B)
    driver = driver or "gelsy"
    m, n = A.shape[-2], A.shape[-1]
    vector = _is_vector_rhs(A, B)
    b = aten.unsqueeze.default(B, -1) if vector else B
    if b.shape[-2] != m:
        raise NoKernelForDtype("linalg.lstsq: mismatched shapes, the CPU raises the error")
    batch_shape = list(torch.broadcast_shapes(A.shape[:-2], b.shape[:-2]))
    a = aten.expand.default(A, [*batch_shape, m, n])
    b = aten.expand.default(b, [*batch_shape, m, b.shape[-1]])
    eps = torch.finfo(torch.float32).eps
    rcond = eps * max(m, n) if rcond is None or rcond < 0 else rcond  # LAPACK: a negative rcond = eps
    u, s, vh = linalg_svd(a, False, True)
    s_max = aten.slice.Tensor(s, -1, 0, 1)
    no_atol = torch.zeros((), dtype=torch.float64)
    s_inv = _threshold(s, s_max, no_atol, torch.tensor(rcond, dtype=torch.float64))
    coefficients = aten.mul.Tensor(aten.matmul.default(u.mT, b), aten.unsqueeze.default(s_inv, -1))
    solution = aten.matmul.default(vh.mT, coefficients)
    rank = empty([0], torch.int64)
    if driver != "gels":
        kept = aten.gt.Tensor(s, aten.mul.Tensor(s_max, rcond))
        rank = aten.sum.dim_IntList(kept, [-1], False, dtype=torch.int64)
    residuals = empty([0], torch.float32)
    if m > n and driver != "gelsy":
        full_rank = driver == "gels" or bool(to_cpu(rank).eq(n).all())
        if full_rank:
            error = aten.sub.Tensor(aten.matmul.default(a, solution), b)
            residuals = aten.sum.dim_IntList(aten.mul.Tensor(error, error), [-2])
    singular_values = s if driver in ("gelsd", "gelss") else empty([0], torch.float32)
    if vector:
        solution = aten.squeeze.dim(solution, -1)
    return solution, residuals, rank, singular_values


# -- matrix exponential (scaling and squaring of a Taylor polynomial, on the matrix products) ---------------
_EXP_TAYLOR_DEGREE = 12  # after scaling |X|_1 <= 1/2: the remainder is below 0.5^13 / 13! ~ 2e-14, far under float32


@implements(aten.linalg_matrix_exp.default)
def linalg_matrix_exp(A):
    """exp(A) = exp(A / 2^s)^(2^s) per matrix, s the smallest with |A / 2^s|_1 <= 1/2 (exact power-of-two
    scaling), exp of the scaled matrix by Horner's rule. The 1-norms are read back (one small transfer, as
    the CPU's and CUDA's kernels also choose per matrix on the host); a matrix with a non-finite entry is
    not scaled, so the NaN / inf reach every entry they touch as on the CPU."""
    if A.dim() < 2 or A.shape[-1] != A.shape[-2]:
        raise NoKernelForDtype("linalg.matrix_exp: not a batch of square matrices: the CPU raises the error")
    _float32_only(A)
    n = A.shape[-1]
    if A.numel() == 0:
        return _like(torch.empty_like(A, device="meta"))
    if n == 1:
        return aten.exp.default(A)
    batch_shape = list(A.shape[:-2])
    x = aten.reshape.default(A, [-1, n, n])
    norms = to_cpu(aten.amax.default(aten.sum.dim_IntList(aten.abs.default(x), [-2]), [-1])).double()
    finite = torch.isfinite(norms)
    steps = torch.where(finite & (norms > 0.5), torch.ceil(torch.log2(norms / 0.5)), torch.zeros_like(norms))
    steps = steps.clamp_max(126).to(torch.int64)  # 2^-126 keeps the scale a normal float32
    x = aten.mul.Tensor(x, from_cpu(torch.pow(2.0, -steps.double()).float().view(-1, 1, 1)))
    identity = _identity_into(empty([n, n], torch.float32))
    result = aten.add.Tensor(identity, aten.mul.Tensor(x, 1.0 / _EXP_TAYLOR_DEGREE))
    for k in range(_EXP_TAYLOR_DEGREE - 1, 0, -1):
        result = aten.add.Tensor(identity, aten.mul.Tensor(aten.matmul.default(x, result), 1.0 / k))
    most = int(steps.max().item()) if steps.numel() else 0
    for k in range(most):
        squared = aten.matmul.default(result, result)
        if bool((steps > k).all()):
            result = squared
        else:
            result = aten.where.self(from_cpu((steps > k).view(-1, 1, 1)), squared, result)
    return aten.reshape.default(result, [*batch_shape, n, n])
