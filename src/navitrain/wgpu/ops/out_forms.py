"""out= overloads that had no handler, as the functional op followed by a copy into `out`.

Their PyTorch decompositions (out_wrapper around a reference) call prims (prims.amax, ...) that have no
kernel, so they ran on the CPU; F.linear_cross_entropy's chunked path calls them on every chunk. The
result is resized into `out` as aten's out= convention does, and copied (with the dtype conversion
copy_ does).
"""
from __future__ import annotations

import torch

from navitrain.wgpu.dispatch import implements

aten = torch.ops.aten


def _into(out, result):
    if list(out.shape) != list(result.shape):
        aten.resize_.default(out, list(result.shape))
    return aten.copy_.default(out, result)


@implements(aten.amax.out)
def amax_out(x, dim=(), keepdim=False, *, out):
    return _into(out, aten.amax.default(x, dim, keepdim))


@implements(aten.amin.out)
def amin_out(x, dim=(), keepdim=False, *, out):
    return _into(out, aten.amin.default(x, dim, keepdim))


@implements(aten.addmm.out)
def addmm_out(x, mat1, mat2, *, beta=1, alpha=1, out):
    return _into(out, aten.addmm.default(x, mat1, mat2, beta=beta, alpha=alpha))


@implements(aten.index_select.out)
def index_select_out(x, dim, index, *, out):
    return _into(out, aten.index_select.default(x, dim, index))
