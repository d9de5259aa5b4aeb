"""Eigen- and singular value decompositions on the wgpu device (issue 17): aten._linalg_eigh (linalg.eigh,
eigvalsh, and through PyTorch's decompositions matrix_rank(hermitian=True), pinv(hermitian=True)),
float32, batched small matrices.

The engine is kernels/linalg_eigh.py (cyclic Jacobi, one workgroup per matrix, the matrix in workgroup
memory). Orders whose matrices do not fit the device's workgroup memory (on 32 KiB, eigenvectors up to
n = 62; at most n = 64 anywhere) and other dtypes raise NoKernelForDtype: the counted CPU fallback.
Eigenvector signs are not defined (PyTorch's docs); ours are whatever Jacobi's rotations give, so they may
differ from LAPACK's per column. Gradients come from PyTorch's autograd formula for eigh, which calls this
forward.
"""
from __future__ import annotations

import torch

from navitrain.wgpu.dispatch import implements
from navitrain.wgpu.dtypes import NoKernelForDtype
from navitrain.wgpu.kernels import linalg_eigh as eigh_engine
from navitrain.wgpu.ops.linalg import _batch_stride, _batched, _count, _float32_only, _like, _meta

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
