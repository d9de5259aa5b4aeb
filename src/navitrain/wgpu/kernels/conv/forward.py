"""Forward convolution as implicit GEMM. Orientation by the output's memory format:
- NCHW (spatial dims contiguous): rows = output channels, columns = (n, y, x) positions, so consecutive
  threads walk x both when gathering and when writing; a 1x1 unit-stride unpadded layer reads x as a
  plain [C, positions] matrix (ImagePositions, no gather);
- NHWC (channels_last): rows = (n, y, x) positions, columns = channels, and K is ordered (kh, kw, c)
  so the gather walks channels, which are contiguous; a 1x1 unit-stride unpadded layer reads x by
  position and channel (ImagePositions, fastest along channels, no gather).
Groups are the GEMM batch (grid z).

With `stats` (NCHW orientation only), the kernel also writes each output channel's per-tile statistics
(epilogues.StatsImageEpilogue) into the buffer `stats.allocate(tiles, tile_columns, channels)`
returns: a training batch norm reading this output takes its statistics from them (channel_stats.py).
"""
from __future__ import annotations

from navitrain.wgpu.kernels import codegen, loop_budget
from navitrain.wgpu.kernels.conv import params
from navitrain.wgpu.kernels.conv.epilogues import ImageEpilogue, StatsImageEpilogue, stat_words
from navitrain.wgpu.kernels.conv.geometry import Geometry, pointwise_geometry
from navitrain.wgpu.kernels.conv.layouts import (
    channels_vec_ok,
    image_vec_out,
    k_contiguous,
    pair_vec_ok,
    positions_ok,
    positions_vec_ok,
    strided_weight,
    tile_for,
)
from navitrain.wgpu.kernels.conv.operands import ImageForward, ImagePositions, Weight
from navitrain.wgpu.kernels.conv.params import CONV_PARAMS, NO_WEIGHT_MATRIX, PREAMBLE
from navitrain.wgpu.kernels.gemm import Store, TileConfig, launch
from navitrain.wgpu.runtime import MAX_BUFFERS, runtime
from navitrain.wgpu.tensor import WgpuTensor, is_channels_last


def implicit_forward(x: WgpuTensor, w: WgpuTensor, bias: WgpuTensor | None, g: Geometry, out: WgpuTensor,
                      relu: bool = False, cfg: TileConfig | None = None, stats=None) -> WgpuTensor:
    rt = runtime()
    nhwc = is_channels_last(out)
    st_x, st_w, st_o = rt.stypes[x.dtype], rt.stypes[w.dtype], rt.stypes[out.dtype]
    K = g.Cg * g.KH * g.KW
    P = g.N * g.OH * g.OW
    if nhwc:
        M, N = P, g.OCg
    else:
        M, N = g.OCg, P
    positions = pointwise_geometry(g)
    flat = positions and not nhwc and positions_ok(x)
    kind = ("conv_fwd", nhwc) + ((("1x1",) if flat else ("1x1-strided",)) if positions else ())
    cfg = cfg or tile_for(kind, M, N, K, g.groups, lambda c: implicit_forward(x, w, bias, g, out, relu, c))
    # A thread walks all of K = C*KH*KW, one BK step a loop pass: past llvmpipe's loop budget
    # (kernels/loop_budget.py; over 480k input channel taps, no real layer) the CPU computes it.
    loop_budget.require(loop_budget.strided(K, cfg.BK) + 2, f"a convolution over {K} input taps")
    guard = M % cfg.BM != 0 or N % cfg.BN != 0 or K % cfg.BK != 0
    types = [st_o.wgsl, st_x.wgsl, st_w.wgsl] + ([rt.stypes[bias.dtype].wgsl] if bias is not None else [])
    heaps = [out._ws.heap, x._ws.heap, w._ws.heap] + ([bias._ws.heap] if bias is not None else [])
    x_vec = None
    # a stride-2 1x1 reading x[:, :, ::2, ::2] in place
    pair = positions and not nhwc and not flat and pair_vec_ok(x)
    # (channels_last: four neighbouring channels of a position)
    vec_ok = (channels_vec_ok(x) if nhwc else pair or (flat and positions_vec_ok(x, g)))
    if positions and not guard and vec_ok:
        x_vec = f"b{len(types)}"
        types.append("vec4<f32>")
        heaps.append(x._ws.heap)
    wparams = None
    order = "kkc" if nhwc else "ckk"
    if k_contiguous(w, g, order) or (positions and k_contiguous(w, g, "ckk")):   # (1x1: one K order)
        W, wparams = strided_weight(rt, w, w.stride(0), g.OCg * w.stride(0), types, heaps, vec_ok=not guard)
    else:
        W = Weight("b2", st_w.wgsl, "fwd", order, "k")
    vec_out = image_vec_out(out, nhwc, g.groups, types, heaps)
    partials = None
    if stats is not None and not nhwc and not relu and len(types) < MAX_BUFFERS and _stats_fit(rt, cfg):
        partials = stats.allocate(-(-N // cfg.BN), cfg.BN, g.OCg * g.groups)
        stats_binding = f"b{len(types)}"
        types.append("f32")
        heaps.append(partials._ws.heap)
    bindings = codegen.bindings(types)
    if nhwc:  # rows = positions, cols = out channels, k = (kh, kw, c); 1x1: k = c, no gather
        A = (ImagePositions("b1", st_x.wgsl, "x", x_vec, fastest="k", flat=False) if positions
             else ImageForward("b1", st_x.wgsl, "kkc", "k"))
        B = W
        E = ImageEpilogue(st_o.wgsl, Store(st_o), "cols", "out", bias is not None, bindings, relu, vec_out)
    elif positions:   # rows = out channels, cols = positions, k = c, no gather
        A, B = W, ImagePositions("b1", st_x.wgsl, "x", x_vec, flat=flat, every_other=pair and x_vec is not None)
        E = ImageEpilogue(st_o.wgsl, Store(st_o), "rows", "out", bias is not None, bindings, relu, vec_out)
    else:     # rows = out channels, cols = positions, k = (c, kh, kw)
        A, B = W, ImageForward("b1", st_x.wgsl, "ckk", "row")
        E = ImageEpilogue(st_o.wgsl, Store(st_o), "rows", "out", bias is not None, bindings, relu, vec_out)
    if partials is not None:
        E = StatsImageEpilogue(st_o.wgsl, Store(st_o), bias is not None, bindings, stats_binding,
                               lambda v: st_o.load(st_o.store(v), "f32"), cfg, vec_out)
    # (The forward reads no dy: y's fields carry the statistics partials' place.)
    packed = params.pack(g, cfg.BK, M, N, K, x=x, w=w, y=partials, o=out, bias=bias,
                         weight_matrix=wparams or NO_WEIGHT_MATRIX)
    # Keys carry dtypes, not just WGSL element types: bfloat16 is stored as f32 but rounded on store.
    launch(("conv_fwd", nhwc, x.dtype, w.dtype, out.dtype, bias.dtype if bias is not None else None), "conv2d_forward",
           cfg, A, B, E, tuple(heaps), packed, M, N, g.groups, guard, preamble=PREAMBLE, params=CONV_PARAMS)
    return out


def _stats_fit(rt, cfg: TileConfig) -> bool:
    """Whether the tiles and the statistics' reduction array fit the adapter's workgroup memory."""
    return cfg.shared_bytes + 4 * stat_words(cfg) <= int(rt.limits.get("max-compute-workgroup-storage-size", 16384))
