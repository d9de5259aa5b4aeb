"""Matrix products: mm, bmm, addmm, baddbmm, mv, dot (all through the generated GEMM)."""
from __future__ import annotations

import torch

from navitrain.wgpu.dispatch import implements
from navitrain.wgpu.kernels import gemm, pointwise
from navitrain.wgpu.kernels.reduction import reduce
from navitrain.wgpu.tensor import empty

aten = torch.ops.aten


def _check_2d(name, a, b):
    if a.dim() != 2 or b.dim() != 2:
        raise RuntimeError(f"{name}: expected 2-D tensors, got {a.dim()}-D and {b.dim()}-D")
    if a.shape[1] != b.shape[0]:
        raise RuntimeError(f"mat1 and mat2 shapes cannot be multiplied ({a.shape[0]}x{a.shape[1]} and "
                           f"{b.shape[0]}x{b.shape[1]})")


@implements(aten.mm.default)
def mm(a, b):
    _check_2d("mm", a, b)
    out = empty([a.shape[0], b.shape[1]], gemm.result_dtype(a, b))
    if a.shape[1] == 0:
        return aten.zero_.default(out)
    return gemm.gemm(a, b, out)


@implements(aten.mm.out)
def mm_out(a, b, *, out):
    _check_2d("mm", a, b)
    return gemm.gemm(a, b, out)


def _scales(dtype, beta, alpha):
    """beta and alpha as the CPU applies them: integer products truncate them to integers first."""
    if dtype.is_floating_point:
        return float(beta), float(alpha)
    return float(int(beta)), float(int(alpha))


@implements(aten.addmm.default)
def addmm(bias, a, b, *, beta=1, alpha=1):
    _check_2d("addmm", a, b)
    M, N = a.shape[0], b.shape[1]
    out = empty([M, N], gemm.result_dtype(a, b))
    beta, alpha = _scales(out.dtype, beta, alpha)
    cin, strides = bias, (gemm.strides_broadcast_to(bias, M, N) if a.shape[1] else None)
    if strides is None:  # no inner dimension (bias scaled alone), or PyTorch's error for a bad bias shape
        cin = bias.expand(M, N) if tuple(bias.shape) != (M, N) else bias
        if a.shape[1] == 0:
            return pointwise.run("scale", "a * s0", [cin], out.dtype, "f32", [float(beta)], out=out)
        strides = (cin.stride(0), cin.stride(1))
    return gemm.gemm(a, b, out, float(alpha), float(beta), cin, cin_strides=(*strides, 0))


@implements(aten.addmm_.default)
def addmm_(x, a, b, *, beta=1, alpha=1):
    result = addmm(x, a, b, beta=beta, alpha=alpha)
    return aten.copy_.default(x, result)


@implements(aten.bmm.default)
def bmm(a, b):
    if a.dim() != 3 or b.dim() != 3 or a.shape[0] != b.shape[0] or a.shape[2] != b.shape[1]:
        raise RuntimeError(f"bmm: cannot multiply {list(a.shape)} and {list(b.shape)}")
    out = empty([a.shape[0], a.shape[1], b.shape[2]], gemm.result_dtype(a, b))
    if a.shape[2] == 0:
        return aten.zero_.default(out)
    return gemm.gemm(a, b, out)


@implements(aten.baddbmm.default)
def baddbmm(x, a, b, *, beta=1, alpha=1):
    B, M, N = a.shape[0], a.shape[1], b.shape[2]
    out = empty([B, M, N], gemm.result_dtype(a, b))
    beta, alpha = _scales(out.dtype, beta, alpha)
    cin = x.expand(B, M, N)
    return gemm.gemm(a, b, out, float(alpha), float(beta), cin,
                     cin_strides=(cin.stride(1), cin.stride(2), cin.stride(0)))


@implements(aten.mv.default)
def mv(a, v):
    out = mm(a, aten.unsqueeze.default(v, 1))
    return aten.squeeze.dim(out, 1)


@implements(aten.dot.default, aten.vdot.default)
def dot(a, b):
    if a.dim() != 1 or b.dim() != 1 or a.shape[0] != b.shape[0]:
        raise RuntimeError("dot: expected two 1-D tensors of the same length")
    prod = pointwise.run("mul", "a * b", [a, b], a.dtype, "f32")
    return reduce(prod, None, False, "sum", a.dtype)


def _addbmm_check(batch1, batch2):
    if batch1.dim() != 3 or batch2.dim() != 3:
        raise RuntimeError(f"batch1 must be a 3D tensor, batch2 must be a 3D tensor (got {batch1.dim()}-D and "
                           f"{batch2.dim()}-D)")
    if batch1.shape[0] != batch2.shape[0] or batch1.shape[2] != batch2.shape[1]:
        raise RuntimeError(f"addbmm: incompatible batches {tuple(batch1.shape)} and {tuple(batch2.shape)}")


@implements(aten.addbmm.default)
def addbmm(x, batch1, batch2, *, beta=1, alpha=1):
    # The sum over the batch of batch1[b] @ batch2[b] is one product of [n, B*m] by [B*m, p]: a single GEMM.
    _addbmm_check(batch1, batch2)
    b, n, m = batch1.shape
    a = aten.reshape.default(aten.permute.default(batch1, [1, 0, 2]), [n, b * m])
    c = aten.reshape.default(batch2, [b * m, batch2.shape[2]])
    return aten.addmm.default(x, a, c, beta=beta, alpha=alpha)


@implements(aten.addbmm_.default)
def addbmm_(x, batch1, batch2, *, beta=1, alpha=1):
    return aten.copy_.default(x, addbmm(x, batch1, batch2, beta=beta, alpha=alpha))
