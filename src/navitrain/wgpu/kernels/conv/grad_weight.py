"""Grad-weight of a convolution as implicit GEMM: rows = output channels, columns = (c, kh, kw) (or
(kh, kw, c) in channels_last), K = the N*OH*OW positions -- a long K for a small output, so K is split
across workgroups and the slices are summed by a second pass.
"""
from __future__ import annotations

import torch

from navitrain.wgpu.kernels import codegen, loop_budget
from navitrain.wgpu.kernels.conv import params
from navitrain.wgpu.kernels.conv.epilogues import SlicesEpilogue, WeightEpilogue
from navitrain.wgpu.kernels.conv.geometry import Geometry, pointwise_geometry
from navitrain.wgpu.kernels.conv.layouts import (
    channels_vec_ok,
    pair_vec_ok,
    positions_ok,
    positions_vec_ok,
    tile_for,
)
from navitrain.wgpu.kernels.conv.operands import GradOutRows, ImageGradWeight
from navitrain.wgpu.kernels.conv.params import CONV_PARAMS, PREAMBLE
from navitrain.wgpu.kernels.copy import copy_into
from navitrain.wgpu.kernels.gemm import Store, TileConfig, auto_splits, k_slices, launch
from navitrain.wgpu.kernels.reduction import reduce
from navitrain.wgpu.runtime import runtime
from navitrain.wgpu.tensor import WgpuTensor, empty, is_channels_last, wrap


def implicit_grad_weight(dy: WgpuTensor, x: WgpuTensor, g: Geometry, dw: WgpuTensor,
                          cfg: TileConfig | None = None) -> WgpuTensor:
    rt = runtime()
    nhwc = is_channels_last(x)
    st_y, st_x, st_o = rt.stypes[dy.dtype], rt.stypes[x.dtype], rt.stypes[dw.dtype]
    M, N = g.OCg, g.Cg * g.KH * g.KW
    K = g.N * g.OH * g.OW
    q_order = "kkc" if nhwc else "ckk"
    # 1x1 unit-stride layers: x is read like dy (row = channel, k = position), no gather -- whatever x's
    # strides, so a stride-2 shortcut passes x[:, :, ::2, ::2] itself (NCHW or channels_last).
    x_rows = pointwise_geometry(g)
    kind = ("conv_wgrad", nhwc) + ((("1x1",) if positions_ok(x) else ("1x1-strided",)) if x_rows else ())
    cfg = cfg or tile_for(kind, M, N, K, g.groups, lambda c: implicit_grad_weight(dy, x, g, dw, c))
    guard = M % cfg.BM != 0 or N % cfg.BN != 0 or K % cfg.BK != 0
    dy_nchw = not is_channels_last(dy)
    y0, y1, y2, y3 = dy.stride()
    vec_dy = (not guard and dy_nchw and st_y.wgsl == "f32" and y3 == 1 and y2 == g.OW and (g.OH * g.OW) % 4 == 0
              and y0 % 4 == 0 and y1 % 4 == 0 and dy.elem_offset % 4 == 0)
    # channels_last 1x1: four neighbouring output channels (rows) at one position are one 16-byte load
    vec_dy = vec_dy or (not guard and x_rows and not dy_nchw and channels_vec_ok(dy))
    A = GradOutRows("b1", st_y.wgsl, "k" if dy_nchw else "row", "b3" if vec_dy else None)
    vec_types = ["vec4<f32>"] if vec_dy else []
    vec_heaps = (dy._ws.heap,) if vec_dy else ()
    if x_rows:
        x_vec = None
        # NCHW: a stride-2 1x1 reading x[:, :, ::2, ::2] in place; channels_last: four channels (rows)
        pair = not nhwc and not positions_ok(x) and pair_vec_ok(x)
        vec_ok = channels_vec_ok(x) if nhwc else pair or positions_vec_ok(x, g)
        if not guard and vec_ok:
            x_vec = f"b{3 + len(vec_types)}"
            vec_types = vec_types + ["vec4<f32>"]
            vec_heaps = vec_heaps + (x._ws.heap,)
        B = GradOutRows("b2", st_x.wgsl, "row" if nhwc else "k", x_vec, tensor="x",
                        every_other=pair and x_vec is not None)
    else:
        B = ImageGradWeight("b2", st_x.wgsl, q_order, "row" if nhwc else "k", four=not nhwc and g.OW % 4 == 0)
    # Split K so that the grid has a few hundred workgroups, each walking at least 16 tiles of K -- or
    # into the tile's own number of slices, a tuner candidate for small outputs with a long K (a 1x1
    # shortcut's 128x64 grad-weight over 32768 positions filled 64 of the H200's 132 SMs, run 9).
    slices = cfg.splits if cfg.splits > 1 else auto_splits(cfg, M, N, K, g.groups)
    # A thread walks its slice one BK step a loop pass; llvmpipe stops a kernel's loops after 65535 passes
    # (kernels/loop_budget.py), so a slice is never longer than that many steps (as in gemm._gemm).
    slices = max(slices, -(-K // (cfg.BK * loop_budget.PASS_BUDGET)))
    kslice, slices = k_slices(K, min(slices, K // cfg.BK), cfg.BK)
    if slices == 1:
        bindings = codegen.bindings([st_o.wgsl, st_y.wgsl, st_x.wgsl] + vec_types)
        E = WeightEpilogue(st_o.wgsl, Store(st_o), q_order, bindings)
        packed = params.pack(g, cfg.BK, M, N, K, x=x, y=dy, o=dw)
        launch(("conv_wgrad", nhwc, dy.dtype, x.dtype, dw.dtype), "conv2d_grad_weight", cfg, A, B, E,
               (dw._ws.heap, dy._ws.heap, x._ws.heap) + vec_heaps, packed, M, N, g.groups, guard, preamble=PREAMBLE,
               params=CONV_PARAMS)
        return dw
    st_f = rt.stypes[torch.float32]
    partial = empty([slices * g.groups, M, N], torch.float32)
    bindings = codegen.bindings([st_f.wgsl, st_y.wgsl, st_x.wgsl] + vec_types)
    E = SlicesEpilogue(st_f.wgsl, Store(st_f), bindings)
    packed = params.pack(g, cfg.BK, M, N, K, x=x, y=dy, o=partial, ksplit=kslice)
    launch(("conv_wgrad_split", nhwc, dy.dtype, x.dtype), "conv2d_grad_weight_split", cfg, A, B, E,
           (partial._ws.heap, dy._ws.heap, x._ws.heap) + vec_heaps, packed, M, N, g.groups, guard, split_k=kslice,
           K=K, preamble=PREAMBLE, params=CONV_PARAMS)
    # partial[(group * slices + slice), oc, q] -> sum over slices -> dw in its own layout: straight
    # into dw when that is its plain [OC, Cg*KH*KW] layout, else through a copy. (Views made with
    # tensor.wrap: each torch-level view costs ~20 us of host time.)
    parts = wrap(partial._ws, (g.groups, slices, M, N), (slices * M * N, M * N, N, 1), 0, torch.float32)
    if q_order == "ckk" and dw.dtype == torch.float32 and dw.is_contiguous():
        reduce(parts, [1], False, "sum", torch.float32, out=dw)
        return dw
    summed = reduce(parts, [1], False, "sum", torch.float32)
    if q_order == "ckk":
        src = summed.view(g.OC, g.Cg, g.KH, g.KW)
    else:
        src = summed.view(g.OC, g.KH, g.KW, g.Cg).permute(0, 3, 1, 2)
    return copy_into(dw, src)
