"""What the tensors' memory layouts allow the implicit-GEMM passes: gather-free or 16-byte reads of an
operand, a weight read as a plain matrix, 16-byte stores of the result. Helpers that append the extra
vec4 bindings a pass then needs to its binding `types` and `heaps`."""
from __future__ import annotations

import torch

from navitrain.wgpu.kernels import gemm_tuning
from navitrain.wgpu.kernels.conv.geometry import Geometry
from navitrain.wgpu.kernels.conv.params import CONV_PARAMS, WEIGHT_MATRIX
from navitrain.wgpu.kernels.gemm import Strided, TileConfig
from navitrain.wgpu.tensor import WgpuTensor


def tile_for(kind, M: int, N: int, K: int, batch: int, run) -> TileConfig:
    """The tuner's tile for a pass (run(cfg) runs the pass with a candidate tile)."""
    return gemm_tuning.pick(kind, M, N, K, batch, run)


def positions_vec_ok(t: WgpuTensor, g: Geometry) -> bool:
    """Whether ImagePositions may read `t` four positions at a time."""
    s0, s1, s2, s3 = t.stride()
    hw = t.shape[2] * t.shape[3]
    return (t.dtype == torch.float32 and hw % 4 == 0 and s3 == 1 and s2 == t.shape[3]
            and s0 % 4 == 0 and s1 % 4 == 0 and t.elem_offset % 4 == 0)


def pair_vec_ok(t: WgpuTensor) -> bool:
    """Whether ImagePositions / GradOutRows may read `t`, a view x[:, :, ::2, ::2] of an NCHW image
    (stride-2 columns), four positions at a time as two aligned 16-byte loads keeping every other
    element (operands._every_other): the four stay in one row (OW a multiple of 4) and the eight
    elements read, up to column 2*OW - 1 of x, stay inside x's row span (x's row stride, half the view's,
    is at least 2*OW: an odd-width x, whose last read would step past the row, keeps scalar loads)."""
    s0, s1, s2, s3 = t.stride()
    ow = t.shape[3]
    return (t.dtype == torch.float32 and s3 == 2 and ow % 4 == 0 and s2 >= 4 * ow and s0 % 4 == 0
            and s1 % 4 == 0 and s2 % 4 == 0 and t.elem_offset % 4 == 0)


def channels_vec_ok(t: WgpuTensor) -> bool:
    """Whether four neighbouring channels of `t` (at any position) are one aligned 16-byte load: channels
    contiguous (channels_last, also a view x[:, :, ::2, ::2] of it), every other stride a multiple of 4."""
    s0, s1, s2, s3 = t.stride()
    return (t.dtype == torch.float32 and s1 == 1 and t.shape[1] % 4 == 0 and s0 % 4 == 0 and s2 % 4 == 0
            and s3 % 4 == 0 and t.elem_offset % 4 == 0)


def positions_ok(t: WgpuTensor) -> bool:
    """Whether the H*W block of `t` is contiguous (ImagePositions' addressing)."""
    s0, s1, s2, s3 = t.stride()
    return (s3 == 1 or t.shape[3] == 1) and (s2 == t.shape[3] or t.shape[2] == 1)


def k_contiguous(w: WgpuTensor, g: Geometry, order: str) -> bool:
    """Whether the weight's (c, kh, kw) -- or (kh, kw, c) -- block is contiguous, so the weight is a plain
    matrix [OC, K] the GEMM can read with 16-byte loads and no index arithmetic."""
    s0, s1, s2, s3 = w.stride()
    if order == "ckk":
        return s3 == 1 and s2 == g.KW and s1 == g.KH * g.KW
    return s1 == 1 and s3 == g.Cg and s2 == g.KW * g.Cg


def strided_weight(rt, w, rows_stride, batch_stride, types: list, heaps: list, fastest="k", vec_ok=True,
                   k_stride=1):
    """(A Strided operand over a weight matrix (binding b2), with a vec4 view appended when aligned;
    the values of its WEIGHT_MATRIX fields: offset, row stride, k stride, group stride). The vec4 view
    reads four neighbouring elements along `fastest`, which must then be the contiguous direction."""
    contiguous, other = (k_stride, rows_stride) if fastest == "k" else (rows_stride, k_stride)
    vec = None
    if vec_ok and rt.stypes[w.dtype].wgsl == "f32" and w.elem_offset % 4 == 0 and contiguous == 1 \
            and other % 4 == 0 and batch_stride % 4 == 0:
        vec = f"b{len(types)}"
        types.append("vec4<f32>")
        heaps.append(w._ws.heap)
    return (Strided(CONV_PARAMS, WEIGHT_MATRIX, "b2", rt.stypes[w.dtype].wgsl, fastest, vec),
            (w.elem_offset, rows_stride, k_stride, batch_stride))


def weight_vec_ok(rt, w: WgpuTensor, vec_ok: bool) -> bool:
    """Whether a grad-input may read four neighbouring input channels of `w` in place as one 16-byte load
    (operands.Weight's vec_binding): channels contiguous, every other step and the offset 16-byte aligned."""
    s0, s1, s2, s3 = w.stride()
    return (vec_ok and rt.stypes[w.dtype].wgsl == "f32" and s1 == 1 and w.elem_offset % 4 == 0
            and s0 % 4 == 0 and s2 % 4 == 0 and s3 % 4 == 0)


def image_vec_out(out: WgpuTensor, nhwc: bool, groups: int, types: list, heaps: list) -> str | None:
    """Binds the output image a second time as vec4s when four neighbouring GEMM columns -- four
    positions along a row (NCHW) or four channels (NHWC) -- are always contiguous and 16-byte aligned."""
    if out.dtype != torch.float32 or out.elem_offset % 4:
        return None
    s0, s1, s2, s3 = out.stride()
    if nhwc:
        ok = groups == 1 and s1 == 1 and out.shape[1] % 4 == 0 and s0 % 4 == 0 and s2 % 4 == 0 and s3 % 4 == 0
    else:
        ok = out.shape[3] % 4 == 0 and s3 == 1 and s0 % 4 == 0 and s1 % 4 == 0 and s2 % 4 == 0
    if not ok:
        return None
    types.append("vec4<f32>")
    heaps.append(out._ws.heap)
    return f"b{len(types) - 1}"
