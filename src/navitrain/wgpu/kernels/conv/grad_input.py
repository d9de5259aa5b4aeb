"""Grad-input of a convolution: as implicit GEMM over dy (rows = input positions or channels, K = (oc,
kh, kw)), or -- strided layers -- as one stride-1 grad-input per output phase.
"""
from __future__ import annotations

import torch

from navitrain.wgpu.kernels import codegen, loop_budget
from navitrain.wgpu.kernels.conv import params
from navitrain.wgpu.kernels.conv.epilogues import ImageEpilogue, SlicesEpilogue
from navitrain.wgpu.kernels.conv.geometry import Geometry, pointwise_geometry
from navitrain.wgpu.kernels.conv.layouts import (
    channels_vec_ok,
    image_vec_out,
    positions_ok,
    positions_vec_ok,
    strided_weight,
    tile_for,
    weight_vec_ok,
)
from navitrain.wgpu.kernels.conv.operands import ImageGradInput, ImagePositions, Weight
from navitrain.wgpu.kernels.conv.params import CONV_PARAMS, NO_WEIGHT_MATRIX, PREAMBLE
from navitrain.wgpu.kernels.copy import copy_into, fill
from navitrain.wgpu.kernels.gemm import Store, TileConfig, k_slices, launch
from navitrain.wgpu.kernels.reduction import reduce
from navitrain.wgpu.runtime import runtime
from navitrain.wgpu.tensor import WgpuTensor, empty, is_channels_last, wrap


def implicit_grad_input(dy: WgpuTensor, w: WgpuTensor, g: Geometry, dx: WgpuTensor,
                         cfg: TileConfig | None = None) -> WgpuTensor:
    rt = runtime()
    nhwc = is_channels_last(dx)
    st_y, st_w, st_o = rt.stypes[dy.dtype], rt.stypes[w.dtype], rt.stypes[dx.dtype]
    K = g.OCg * g.KH * g.KW
    P = g.N * g.H * g.W
    M, N = (P, g.Cg) if nhwc else (g.Cg, P)
    positions = pointwise_geometry(g)
    flat = positions and not nhwc and positions_ok(dy)
    kind = ("conv_dgrad", nhwc) + ((("1x1",) if flat else ("1x1-strided",)) if positions else ())
    cfg = cfg or tile_for(kind, M, N, K, g.groups, lambda c: implicit_grad_input(dy, w, g, dx, c))
    guard = M % cfg.BM != 0 or N % cfg.BN != 0 or K % cfg.BK != 0
    # A tile with slices (gemm_tuning.THIN_DGRAD_SPLITS, for a few input channels): each slice of K
    # writes f32 partial products [slices, C, N*H*W], summed and laid out into dx afterwards.
    slices = 1
    if cfg.splits > 1 and not nhwc and not positions and g.groups == 1:
        kslice, slices = k_slices(K, cfg.splits, cfg.BK)
    # A thread walks its K (= OC*KH*KW, or a slice of it) one BK step a loop pass: past llvmpipe's loop
    # budget (kernels/loop_budget.py; over 480k output channel taps, no real layer) the CPU computes it.
    loop_budget.require(loop_budget.strided(kslice if slices > 1 else K, cfg.BK) + 2,
                        f"a convolution's input gradient over {K} output taps")
    partial = empty([slices, M, N], torch.float32) if slices > 1 else None
    out = partial if partial is not None else dx
    types = [rt.stypes[out.dtype].wgsl, st_y.wgsl, st_w.wgsl]
    heaps = [out._ws.heap, dy._ws.heap, w._ws.heap]
    y_vec = None
    if positions and not guard and (channels_vec_ok(dy) if nhwc else flat and positions_vec_ok(dy, g)):
        y_vec = f"b{len(types)}"
        types.append("vec4<f32>")
        heaps.append(dy._ws.heap)
    W, wparams = _weight_in_place(rt, w, g, "kkc" if nhwc else "ckk", types, heaps, vec_ok=not guard)
    vec_out = image_vec_out(dx, nhwc, g.groups, types, heaps) if partial is None else None
    bindings = codegen.bindings(types)
    unit = tuple(g.stride) == (1, 1)
    if nhwc:    # 1x1: rows = positions of dy, k = output channel, no gather
        A = (ImagePositions("b1", st_y.wgsl, "y", y_vec, fastest="k", flat=False) if positions
             else ImageGradInput("b1", st_y.wgsl, "kkc", "k", unit))
        B = W
        E = ImageEpilogue(st_o.wgsl, Store(st_o), "cols", "in", False, bindings, vec_out=vec_out)
    else:
        A = W
        B = ImagePositions("b1", st_y.wgsl, "y", y_vec, flat=flat) if positions else ImageGradInput(
            "b1", st_y.wgsl, "ckk", "row", unit, four=unit and g.W % 4 == 0 and N % cfg.BN == 0 and K % cfg.BK == 0)
        if partial is None:
            E = ImageEpilogue(st_o.wgsl, Store(st_o), "rows", "in", False, bindings, vec_out=vec_out)
        else:
            st_f = rt.stypes[torch.float32]
            E = SlicesEpilogue(st_f.wgsl, Store(st_f), bindings)
    ksplit = kslice if partial is not None else 0
    packed = params.pack(g, cfg.BK, M, N, K, w=w, y=dy, o=out, ksplit=ksplit, weight_matrix=wparams or NO_WEIGHT_MATRIX)
    launch(("conv_dgrad", nhwc, dy.dtype, w.dtype, out.dtype), "conv2d_grad_input" if partial is None else
           "conv2d_grad_input_split", cfg, A, B, E, tuple(heaps), packed, M, N, g.groups, guard,
           split_k=ksplit, K=K, preamble=PREAMBLE, params=CONV_PARAMS)
    if partial is not None:
        summed = reduce(partial, [0], False, "sum", torch.float32)      # [C, N*H*W]
        copy_into(dx, wrap(summed._ws, (g.N, g.C, g.H, g.W), (g.H * g.W, P, g.W, 1), 0, torch.float32))
    return dx


def _weight_in_place(rt, w: WgpuTensor, g: Geometry, k_order: str, types: list, heaps: list, vec_ok: bool):
    """The weight as the grad-input's channel side (row = c, k = (oc, kh, kw) or (kh, kw, oc)), read where
    it lies through its strides: (operand, WEIGHT_MATRIX values). A transposed copy made every backward
    moved the whole weight twice per step (ResNet-18: ~90 MB, more than the rest of a small batch).
    A 1x1 weight is a plain [c, oc] matrix (16-byte loads along c where c is contiguous); a larger
    kernel is gathered by (oc, kh, kw) digits -- 16-byte loads of four channels where c is contiguous
    (channels_last), scalar loads where it is not (NCHW 3x3: four neighbouring k straddle output
    channels). Those scalar loads are the weight tile's only, a BM x BK tile per BK step against
    BM x BN x BK FMAs, so the gather costs less than the copy it replaces."""
    s0, s1, s2, s3 = w.stride()
    if g.KH == 1 and g.KW == 1:
        fastest = "row" if s1 < s0 else "k"    # consecutive threads along the smaller stride
        return strided_weight(rt, w, s1, g.OCg * s0, types, heaps, fastest=fastest, vec_ok=vec_ok, k_stride=s0)
    k_step = s3 if k_order == "ckk" else s0      # the stride of K's fastest digit (kw, or oc)
    fastest = "row" if s1 < k_step else "k"
    vec = None
    if fastest == "row" and weight_vec_ok(rt, w, vec_ok):
        vec = f"b{len(types)}"
        types.append("vec4<f32>")
        heaps.append(w._ws.heap)
    return Weight("b2", rt.stypes[w.dtype].wgsl, "dgrad", k_order, fastest, vec), None


def grad_input_by_phase(dy: WgpuTensor, w: WgpuTensor, g: Geometry, dx: WgpuTensor, each_phase) -> WgpuTensor:
    """Grad-input of a strided convolution as stride-1 grad-inputs, one per output phase, each computed
    by each_phase(dy, w, g, dx) (choose.grad_input: a phase may itself be a depthwise layer, say).

    With stride s, input row ih = s*i + a receives gradient only through the taps kh = kh0 + s*t with
    kh0 = (a + p) mod s, from output row oh = i + (a + p - kh0)/s - t: a stride-1 grad-input with the
    sub-kernel w[..., kh0::s] and padding (a + p - kh0)/s, written into dx[..., a::s]. Gathering dy
    directly for every (kh, kw) instead would skip (s^2 - 1)/s^2 of the loads (3/4 at stride 2) after
    paying for them, which held strided layers at 15-16% of cuBLAS on the H200 (run 7)."""
    (sh, sw), (ph, pw) = g.stride, g.padding
    for a in range(min(sh, g.H)):
        for b in range(min(sw, g.W)):
            kh0, kw0 = (a + ph) % sh, (b + pw) % sw
            taps_h, taps_w = len(range(kh0, g.KH, sh)), len(range(kw0, g.KW, sw))
            part = dx[:, :, a::sh, b::sw]
            if taps_h == 0 or taps_w == 0:   # no tap reaches these inputs
                fill(part, 0.0)
                continue
            sub = Geometry(g.N, g.C, part.shape[2], part.shape[3], g.OC, g.OH, g.OW, taps_h, taps_w, (1, 1),
                           ((a + ph - kh0) // sh, (b + pw - kw0) // sw), (1, 1), g.groups)
            each_phase(dy, w[:, :, kh0::sh, kw0::sw], sub, part)
    return dx
