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
    image_vec_out,
    positions_ok,
    positions_vec_ok,
    strided_weight,
    tile_for,
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
    positions = not nhwc and pointwise_geometry(g)
    flat = positions and positions_ok(dy)
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
    heaps = [out._ws.heap, dy._ws.heap, None]
    y_vec = None
    if flat and not guard and positions_vec_ok(dy, g):
        y_vec = f"b{len(types)}"
        types.append("vec4<f32>")
        heaps.append(dy._ws.heap)
    wparams = None
    # The weight read as [c][ko, kh, kw] (NCHW) or [c][kh, kw, ko] (NHWC, one group): a transposed copy
    # (weights are small) turns the gather into a plain, vectorisable matrix.
    if not nhwc:
        wt = w.transpose(0, 1).contiguous()                    # [Cg, OC, KH, KW]
        heaps[2] = wt._ws.heap
        W, wparams = strided_weight(rt, wt, wt.stride(0), g.OCg * g.KH * g.KW, types, heaps, vec_ok=not guard)
    elif g.groups == 1:
        wt = w.permute(1, 2, 3, 0).contiguous()                # [C, KH, KW, OC]
        heaps[2] = wt._ws.heap
        W, wparams = strided_weight(rt, wt, wt.stride(0), 0, types, heaps, vec_ok=not guard)
    else:
        heaps[2] = w._ws.heap
        W = Weight("b2", st_w.wgsl, "dgrad", "kkc", "k")
    vec_out = image_vec_out(dx, nhwc, g.groups, types, heaps) if partial is None else None
    bindings = codegen.bindings(types)
    unit = tuple(g.stride) == (1, 1)
    if nhwc:
        A, B = ImageGradInput("b1", st_y.wgsl, "kkc", "k", unit), W
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
