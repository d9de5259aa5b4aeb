"""Eigen- and singular value decompositions on the wgpu device (issue 17): aten._linalg_eigh (linalg.eigh,
eigvalsh) and aten._linalg_svd (svd, linalg.svd, svdvals and what PyTorch builds on them), float32,
batched small matrices.

The engines are kernels/linalg_eigh.py (cyclic Jacobi) and kernels/linalg_svd.py (one-sided Jacobi), one
workgroup per matrix, the matrix in workgroup memory. Sizes that do not fit the device's workgroup memory
(eigenvectors up to n = 62 on 32 KiB; at most 64 rows or columns anywhere) and other dtypes raise
NoKernelForDtype: the counted CPU fallback.
Singular / eigenvector signs are not defined (PyTorch's docs); ours are whatever Jacobi's rotations give,
so they may differ from LAPACK's per column. Gradients come from PyTorch's autograd formulas, which call
these forwards.
"""
from __future__ import annotations

import torch

from navitrain.wgpu.dispatch import implements
from navitrain.wgpu.dtypes import NoKernelForDtype
from navitrain.wgpu.kernels import linalg_eigh as eigh_engine
from navitrain.wgpu.kernels import linalg_svd as svd_engine
from navitrain.wgpu.ops.linalg import _batch_stride, _batched, _count, _float32_only, _identity_into, _like, _meta

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
