"""Dense linear algebra handlers (issue 17): LU (factor, unpack, solve), solve, inverse, determinants,
Cholesky (factor, solve, inverse) and triangular solves, float32, with aten's semantics.

The engines: kernels/linalg_lu.py (getrf with partial pivoting, row interchanges, determinants),
kernels/linalg_cholesky.py (potrf), kernels/linalg_triangular.py (trsm on strided views). Everything here
is geometry: batch broadcasting, transposes as stride swaps, and PyTorch's choices that autograd relies on.

- Output shapes and strides come from the op's meta kernel, which also raises PyTorch's errors for bad
  shapes and dtypes; factors are column-major as on the CPU.
- solve, inv, det and slogdet factor A or A^T as this PyTorch's CPU code does (det and slogdet factor A^T
  when A is contiguous), because their backward formulas pick the lu_solve variant to match.
- Errors (singular, not positive-definite) come from the info tensors through PyTorch's own
  _linalg_check_errors on a CPU copy of info: one small read-back, the CPU's messages.
- float32 only: another dtype raises NoKernelForDtype, so it takes the counted CPU fallback.
"""
from __future__ import annotations

import functools
import math

import torch
from torch.utils._pytree import tree_map

from navitrain.wgpu.dispatch import implements
from navitrain.wgpu.dtypes import NoKernelForDtype
from navitrain.wgpu.kernels import linalg_cholesky as cholesky_engine
from navitrain.wgpu.kernels import linalg_lu as lu_engine
from navitrain.wgpu.kernels import linalg_triangular as triangular_engine
from navitrain.wgpu.kernels.copy import copy_into, fill
from navitrain.wgpu.kernels.pointwise import collapse
from navitrain.wgpu.tensor import WgpuTensor, empty, to_cpu

aten = torch.ops.aten


# -- geometry ----------------------------------------------------------------------------------------------
def _meta(func, *args, **kwargs):
    """The op run on meta copies of its tensors: PyTorch's argument checks and its output geometry."""
    def to_meta(t):
        if isinstance(t, torch.Tensor):
            return torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device="meta")
        return t

    return func(*tree_map(to_meta, args), **tree_map(to_meta, kwargs))


def _like(meta: torch.Tensor) -> WgpuTensor:
    return empty(meta.shape, meta.dtype, meta.stride())


def _float32_only(*tensors) -> None:
    for t in tensors:
        if t.dtype != torch.float32:
            raise NoKernelForDtype(f"wgpu linear algebra computes in float32, not {t.dtype}")


def _count(shape) -> int:
    return math.prod(shape)


def _batch_stride(t: WgpuTensor, tail: int = 2) -> int | None:
    """The one stride stepping through t's batch dims (all but the last `tail`), or None if there is none."""
    batch = list(t.shape[:-tail])
    if _count(batch) <= 1:
        return 0
    sizes, (strides,) = collapse(batch, [list(t.stride()[:-tail])])
    return strides[0] if len(sizes) == 1 else None


def _batched(t: WgpuTensor, batch_shape, tail: int = 2):
    """(t broadcast over batch_shape, its batch stride); copied when its batch dims do not collapse."""
    t = aten.expand.default(t, [*batch_shape, *t.shape[t.dim() - tail:]])
    stride = _batch_stride(t, tail)
    if stride is None:
        t = aten.clone.default(t, memory_format=torch.contiguous_format)
        stride = _batch_stride(t, tail)
    return t, stride


def _identity_into(x: WgpuTensor) -> WgpuTensor:
    fill(x, 0.0)
    fill(aten.diagonal.default(x, 0, -2, -1), 1.0)
    return x


def _check_errors(info: WgpuTensor, api_name: str, is_matrix: bool) -> None:
    if info.numel():
        aten._linalg_check_errors.default(to_cpu(info), api_name, is_matrix=is_matrix)


@implements(aten._linalg_check_errors.default)
def linalg_check_errors(info, api_name, *, is_matrix):
    _check_errors(info, api_name, is_matrix)


# -- LU ------------------------------------------------------------------------------------------------------
def _lu_factor(A: WgpuTensor):
    """(LU, pivots, info) of A, as linalg_lu_factor_ex lays them out (LU column-major)."""
    lu, pivots, info = (_like(m) for m in _meta(aten.linalg_lu_factor_ex.default, A))
    _float32_only(A)
    batch = _count(A.shape[:-2])
    m, n = A.shape[-2], A.shape[-1]
    if batch == 0:
        return lu, pivots, info
    copy_into(lu, A)
    if min(m, n) == 0:
        fill(info, 0)
    else:
        lu_engine.factor_in_place(lu, batch, m * n, pivots, info)
    return lu, pivots, info


def _lu_solve_into(lu: WgpuTensor, pivots: WgpuTensor, x: WgpuTensor, left: bool, adjoint: bool) -> WgpuTensor:
    """x (holding B over the whole broadcast batch) becomes A^-1 B, A^-H B, B A^-1 or B A^-H, A = P L U."""
    out = x
    if not left:  # X A = B  <=>  A^T X^T = B^T: the left solve with the other adjoint on X's transpose
        x, adjoint = x.mT, not adjoint
    batch_shape = x.shape[:-2]
    batch = _count(batch_shape)
    if batch == 0 or x.numel() == 0:
        return out
    lu, lu_bs = _batched(lu, batch_shape)
    pivots, piv_bs = _batched(pivots, batch_shape, tail=1)
    x_bs = _batch_stride(x)
    if not adjoint:  # U^-1 L^-1 P^T B
        lu_engine.apply_pivots(x, batch, x_bs, pivots, piv_bs, reverse=False)
        triangular_engine.solve_in_place(lu, lu_bs, x, x_bs, batch, upper=False, unit=True)
        triangular_engine.solve_in_place(lu, lu_bs, x, x_bs, batch, upper=True, unit=False)
    else:  # P L^-T U^-T B
        lu_t = lu.mT
        triangular_engine.solve_in_place(lu_t, lu_bs, x, x_bs, batch, upper=False, unit=False)
        triangular_engine.solve_in_place(lu_t, lu_bs, x, x_bs, batch, upper=True, unit=True)
        lu_engine.apply_pivots(x, batch, x_bs, pivots, piv_bs, reverse=True)
    return out


def _refuse_without_pivoting(name: str, pivot: bool) -> None:
    if not pivot:  # as on the CPU, whose LAPACK has no unpivoted LU
        raise RuntimeError(f"{name}: LU without pivoting is not implemented on the CPU")


@implements(aten.linalg_lu_factor_ex.default)
def linalg_lu_factor_ex(A, *, pivot=True, check_errors=False):
    _refuse_without_pivoting("linalg.lu_factor", pivot)
    lu, pivots, info = _lu_factor(A)
    if check_errors:
        _check_errors(info, "torch.linalg.lu_factor_ex", A.dim() == 2)
    return lu, pivots, info


def _unpack(lu, pivots, unpack_data: bool, unpack_pivots: bool, metas):
    p_meta, l_meta, u_meta = metas
    m, n = lu.shape[-2], lu.shape[-1]
    k = min(m, n)
    if unpack_data:
        lower = aten.tril.default(aten.slice.Tensor(lu, -1, 0, k), -1)
        fill(aten.diagonal.default(lower, 0, -2, -1), 1.0)
        upper = aten.triu.default(aten.slice.Tensor(lu, -2, 0, k))
    else:
        lower, upper = _like(l_meta), _like(u_meta)
    p = _like(p_meta)
    if unpack_pivots and p.numel():
        # P^T A = L U, and P^T is the identity with the pivots' interchanges applied to its rows
        _identity_into(p)
        batch = _count(p.shape[:-2])
        pivots, piv_bs = _batched(pivots, p.shape[:-2], tail=1)
        lu_engine.apply_pivots(p.mT, batch, _batch_stride(p), pivots, piv_bs, reverse=False)
    return p, lower, upper


@implements(aten.lu_unpack.default)
def lu_unpack(LU_data, LU_pivots, unpack_data=True, unpack_pivots=True):
    metas = _meta(aten.lu_unpack.default, LU_data, LU_pivots, unpack_data, unpack_pivots)
    _float32_only(LU_data)
    return _unpack(LU_data, LU_pivots, unpack_data, unpack_pivots, metas)


@implements(aten.linalg_lu.default)
def linalg_lu(A, *, pivot=True):
    _refuse_without_pivoting("linalg.lu", pivot)
    metas = _meta(aten.linalg_lu.default, A)
    lu, pivots, _ = _lu_factor(A)
    return _unpack(lu, pivots, True, True, metas)


@implements(aten.linalg_lu_solve.default)
def linalg_lu_solve(LU, pivots, B, *, left=True, adjoint=False):
    x = _like(_meta(aten.linalg_lu_solve.default, LU, pivots, B, left=left, adjoint=adjoint))
    _float32_only(LU, B)
    copy_into(x, B)
    return _lu_solve_into(LU, pivots, x, left, adjoint)


# -- solve, inverse, determinants ------------------------------------------------------------------------------
@functools.cache
def _cpu_factors_transpose(op) -> bool:
    """Whether this PyTorch's CPU kernel of `op` (_linalg_solve_ex, _linalg_det, ...) factors A^T for a
    contiguous A (det(A^T) = det(A); a solve then runs with adjoint=True). Versions differ, and the backward
    formulas choose their lu_solve variant to match, so the wgpu kernels must return the same factors:
    asked once of the CPU on a 2x2 matrix whose LU differs from its transpose's."""
    a = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    lu = op(a, a[:, :1])[1] if op is aten._linalg_solve_ex.default else op(a)[-2]
    return torch.equal(lu, torch.linalg.lu_factor(a.mT)[0])


def _factor_as_pytorch(op, A):
    """(LU, pivots, info, transposed): the factors `op` computes on the CPU, of A or of A^T."""
    transposed = A.is_contiguous() and _cpu_factors_transpose(op)
    return (*_lu_factor(A.mT if transposed else A), transposed)


def _is_vector_rhs(A, B) -> bool:  # at::native::linalg_solve_is_vector_rhs
    return B.dim() == 1 or (A.dim() - 1 == B.dim() and tuple(B.shape) == tuple(A.shape[:-1]))


@implements(aten._linalg_solve_ex.default)
def linalg_solve_ex(A, B, *, left=True, check_errors=False):
    metas = _meta(aten._linalg_solve_ex.default, A, B, left=left)
    _float32_only(A, B)
    lu, pivots, info, transposed = _factor_as_pytorch(aten._linalg_solve_ex.default, A)
    if check_errors:
        _check_errors(info, "torch.linalg.solve_ex", A.dim() == 2)
    vector = _is_vector_rhs(A, B)
    b = aten.unsqueeze.default(B, -1 if left else -2) if vector else B
    result = metas[0]
    shape = list(result.shape)
    if vector:
        shape.insert(len(shape) if left else len(shape) - 1, 1)
    x = empty(shape, torch.float32)
    copy_into(x, b)
    _lu_solve_into(lu, pivots, x, left, adjoint=transposed)
    return aten.view.default(x, list(result.shape)), lu, pivots, info


@implements(aten.linalg_inv_ex.default)
def linalg_inv_ex(A, *, check_errors=False):
    inverse, _ = (_like(m) for m in _meta(aten.linalg_inv_ex.default, A))
    _float32_only(A)
    # the CPU's inv_ex is solve_ex(A, I): the same factors
    lu, pivots, info, transposed = _factor_as_pytorch(aten._linalg_solve_ex.default, A)
    if check_errors:
        _check_errors(info, "linalg.inv_ex", A.dim() == 2)
    if inverse.numel():
        _lu_solve_into(lu, pivots, _identity_into(inverse), True, adjoint=transposed)
    return inverse, info


@implements(aten._linalg_det.default)
def linalg_det(A):
    det = _like(_meta(aten._linalg_det.default, A)[0])
    _float32_only(A)
    lu, pivots, _, _ = _factor_as_pytorch(aten._linalg_det.default, A)
    n = A.shape[-1]
    lu_engine.determinant(lu, _count(A.shape[:-2]), n * n, pivots, det)
    return det, lu, pivots


@implements(aten._linalg_slogdet.default)
def linalg_slogdet(A):
    metas = _meta(aten._linalg_slogdet.default, A)
    sign, logabsdet = _like(metas[0]), _like(metas[1])
    _float32_only(A)
    lu, pivots, _, _ = _factor_as_pytorch(aten._linalg_slogdet.default, A)
    n = A.shape[-1]
    lu_engine.determinant(lu, _count(A.shape[:-2]), n * n, pivots, sign, logabsdet)
    return sign, logabsdet, lu, pivots


# -- triangular solves -----------------------------------------------------------------------------------------
def _triangular_solve_into(a, x, *, upper: bool, left: bool, unit: bool) -> WgpuTensor:
    """x (holding B, whole batch) becomes A^-1 B (left) or B A^-1; only A's `upper` / lower triangle is read."""
    if not left:  # X A = B  <=>  A^T X^T = B^T, and A^T's triangle is the other one
        a, x, upper = a.mT, x.mT, not upper
    batch_shape = x.shape[:-2]
    batch = _count(batch_shape)
    if batch and x.numel():
        a, a_bs = _batched(a, batch_shape)
        triangular_engine.solve_in_place(a, a_bs, x, _batch_stride(x), batch, upper=upper, unit=unit)
    return x if left else x.mT


@implements(aten.linalg_solve_triangular.default)
def linalg_solve_triangular(A, B, *, upper, left=True, unitriangular=False):
    x = _like(_meta(aten.linalg_solve_triangular.default, A, B, upper=upper, left=left,
                    unitriangular=unitriangular))
    _float32_only(A, B)
    copy_into(x, B)
    return _triangular_solve_into(A, x, upper=upper, left=left, unit=unitriangular)


@implements(aten.triangular_solve.default)
def triangular_solve(B, A, upper=True, transpose=False, unitriangular=False):
    x_meta, a_meta = _meta(aten.triangular_solve.default, B, A, upper, transpose, unitriangular)
    _float32_only(A, B)
    x, a_clone = _like(x_meta), _like(a_meta)
    copy_into(x, B)
    copy_into(a_clone, A)
    a = A.mT if transpose else A
    _triangular_solve_into(a, x, upper=upper != transpose, left=True, unit=unitriangular)
    return x, a_clone


# -- Cholesky ----------------------------------------------------------------------------------------------
def _cholesky(A, upper: bool, metas):
    factor, info = _like(metas[0]), _like(metas[1])
    _float32_only(A)
    batch = _count(A.shape[:-2])
    if batch == 0:
        return factor, info
    if A.shape[-1] == 0:
        fill(info, 0)
        return factor, info
    # potrf reads one triangle: U = L^T where L is the lower factor of A^T, written through factor's transpose
    target = factor.mT if upper else factor
    copy_into(target, A.mT if upper else A)
    n = A.shape[-1]
    cholesky_engine.factor_in_place(target, batch, n * n, info)
    return factor, info


@implements(aten.linalg_cholesky_ex.default)
def linalg_cholesky_ex(A, *, upper=False, check_errors=False):
    factor, info = _cholesky(A, upper, _meta(aten.linalg_cholesky_ex.default, A, upper=upper))
    if check_errors:
        _check_errors(info, "linalg.cholesky_ex", A.dim() == 2)
    return factor, info


@implements(aten.cholesky.default)
def cholesky(A, upper=False):
    out = _meta(aten.cholesky.default, A, upper)
    factor, info = _cholesky(A, upper, (out, _meta(aten.linalg_cholesky_ex.default, A)[1]))
    _check_errors(info, "cholesky", A.dim() == 2)
    return factor


def _cholesky_solve_into(factor, x, upper: bool) -> WgpuTensor:
    """x (holding B) becomes (L L^T)^-1 B, or (U^T U)^-1 B when upper."""
    if upper:
        _triangular_solve_into(factor.mT, x, upper=False, left=True, unit=False)
        return _triangular_solve_into(factor, x, upper=True, left=True, unit=False)
    _triangular_solve_into(factor, x, upper=False, left=True, unit=False)
    return _triangular_solve_into(factor.mT, x, upper=True, left=True, unit=False)


@implements(aten.cholesky_solve.default)
def cholesky_solve(B, L, upper=False):
    x = _like(_meta(aten.cholesky_solve.default, B, L, upper))
    _float32_only(B, L)
    copy_into(x, B)
    return _cholesky_solve_into(L, x, upper)


@implements(aten.cholesky_inverse.default)
def cholesky_inverse(L, upper=False):
    x = _like(_meta(aten.cholesky_inverse.default, L, upper))
    _float32_only(L)
    if x.numel() == 0:
        return x
    return _cholesky_solve_into(L, _identity_into(x), upper)
