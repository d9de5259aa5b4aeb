"""aten._grouped_mm on the device: one matrix product per group of rows (or of the contraction dim),
as transformers' mixture-of-experts layers (Mixtral, Qwen-MoE, ...) call it off the CPU, forward and
backward (the backward is _grouped_mm again with transposed operands).

Groups are given by `offs`, int32 cumulative ends. The group boundaries are read back once per call (a
few integers) and each non-empty group is one product on the device; the pieces are concatenated. Rows
past offs[-1] come out zero (CUDA and the CPU leave them uninitialised; MoE code masks them).

    mat_a 2-d [M, K], mat_b 3-d [G, K, N]: out[M, N],    rows offs[g-1]:offs[g] of a times b[g]
    mat_a 3-d [G, M, K], mat_b 2-d [K, N]: out[M, N],    columns offs[g-1]:offs[g] of b times a[g]
    mat_a 2-d [M, K], mat_b 2-d [K, N]: out[G, M, N],    the contraction dim cut at the offsets
    mat_a 3-d, mat_b 3-d, no offs: a batched product (bmm)
"""
from __future__ import annotations

import torch

from navitrain.wgpu.dispatch import implements
from navitrain.wgpu.tensor import to_cpu

aten = torch.ops.aten
_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _check(mat_a, mat_b, offs, bias):
    if mat_a.dtype not in _DTYPES or mat_b.dtype != mat_a.dtype:
        raise RuntimeError(f"Expected mat_a and mat_b to be Float32, BFloat16 or Float16 matrices of one dtype, "
                           f"got {mat_a.dtype} and {mat_b.dtype}")
    if bias is not None:
        raise RuntimeError("Bias not supported yet")
    if mat_a.dim() not in (2, 3) or mat_b.dim() not in (2, 3):
        raise RuntimeError(f"Multiplicands must be 2D or 3D but got mat_a.dim()={mat_a.dim()} and "
                           f"mat_b.dim()={mat_b.dim()}")
    if (mat_a.dim() == 3 or mat_b.dim() == 3) and mat_a.shape[-1] != mat_b.shape[-2]:
        raise RuntimeError("contraction dimension of mat_a and mat_b must match")
    if (mat_a.dim() == 2 or mat_b.dim() == 2) != (offs is not None):
        raise RuntimeError("Offsets must be given exactly when an operand is 2-d")
    if offs is not None and (offs.dtype != torch.int32 or offs.dim() != 1):
        raise RuntimeError("Offsets have to be int32")


def _bounds(offs, limit):
    """(start, end) of each group, read back once."""
    ends = to_cpu(offs).tolist()
    starts = [0] + ends[:-1]
    if any(e < s for s, e in zip(starts, ends)) or (ends and not 0 <= ends[-1] <= limit):
        raise RuntimeError(f"_grouped_mm: offsets must be non-decreasing and at most {limit}, got {ends}")
    return list(zip(starts, ends))


@implements(aten._grouped_mm.default)
def grouped_mm(mat_a, mat_b, offs=None, bias=None, out_dtype=None):
    _check(mat_a, mat_b, offs, bias)
    out_dtype = out_dtype or mat_a.dtype
    dev = mat_a.device

    def zeros(*shape):
        return aten.zeros.default(list(shape), dtype=mat_a.dtype, device=dev)

    if mat_a.dim() == 3 and mat_b.dim() == 3:
        if mat_a.shape[0] != mat_b.shape[0]:
            raise RuntimeError("batched dimension has to match")
        out = aten.bmm.default(mat_a, mat_b)
    elif mat_a.dim() == 2 and mat_b.dim() == 2:
        (m, k), n = mat_a.shape, mat_b.shape[1]
        if mat_b.shape[0] != k:
            raise RuntimeError("contraction dimension of mat_a and mat_b must match")
        pieces = [aten.mm.default(aten.slice.Tensor(mat_a, 1, s, e), aten.slice.Tensor(mat_b, 0, s, e))
                  if e > s else zeros(m, n) for s, e in _bounds(offs, k)]
        out = aten.stack.default(pieces) if pieces else zeros(0, m, n)
    else:
        rows_split = mat_a.dim() == 2  # else the columns of mat_b are split
        groups = mat_b.shape[0] if rows_split else mat_a.shape[0]
        if offs.shape[0] != groups:
            raise RuntimeError("matrix batch sizes have to match")
        length = mat_a.shape[0] if rows_split else mat_b.shape[1]
        pieces = []
        for g, (s, e) in enumerate(_bounds(offs, length)):
            if e > s and rows_split:
                pieces.append(aten.mm.default(aten.slice.Tensor(mat_a, 0, s, e), aten.select.int(mat_b, 0, g)))
            elif e > s:
                pieces.append(aten.mm.default(aten.select.int(mat_a, 0, g), aten.slice.Tensor(mat_b, 1, s, e)))
        done = sum(p.shape[0 if rows_split else 1] for p in pieces)
        other = mat_b.shape[-1] if rows_split else mat_a.shape[1]
        if done < length:
            pieces.append(zeros(length - done, other) if rows_split else zeros(other, length - done))
        out = aten.cat.default(pieces, 0 if rows_split else 1)
    return out if out.dtype == out_dtype else aten._to_copy.default(out, dtype=out_dtype)
