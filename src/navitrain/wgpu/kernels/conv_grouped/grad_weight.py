"""Grad-weight of a grouped convolution: dw[oc, c, i, j] = sum over (n, oy, ox) of dy[n, oc, oy, ox] *
x[n, g*Cg + c, oy*sh - ph + i*dh, ox*sw - pw + j*dw] (g = oc / OCg), taps in the padding reading zero
and multiplied like the CPU's im2col zeros.

One 64-thread workgroup per (block of CO output channels, input channel c) and slice of the N*OH*OW
positions (enough slices for the whole GPU to work); its threads take every 64th position of the
slice, each keeping CO*kh*kw sums in registers (an x value read serves CO sums), combined by a
fixed-order sum in workgroup memory. The slices' partial sums [slices,
OC*Cg, kh*kw] are summed by the reduction engine in a fixed order (dw is written directly when one
slice suffices): the result is deterministic.
"""
from __future__ import annotations

import torch

from navitrain.wgpu.kernels import codegen
from navitrain.wgpu.kernels import workgroup_tap_sums as tap_sums
from navitrain.wgpu.kernels.conv_grouped.common import GROUPED_P, PRE, WG, geometry_words, tensor_words
from navitrain.wgpu.kernels.copy import copy_into
from navitrain.wgpu.kernels.reduction import reduce
from navitrain.wgpu.runtime import runtime
from navitrain.wgpu.tensor import WgpuTensor, empty

MAX_TAPS = 25      # kh*kw sums per thread in registers (5x5)
_TARGET_GROUPS = 2048
_MIN_CHUNK = 256   # positions per slice: at least 4 per thread


def _source(kh, kw, co, st_o, st_x, st_y) -> str:
    """Workgroup = (slice, block of CO output channels of a group, input channel c); each x value read
    serves the CO channels' sums, each dy value the kh*kw taps."""
    taps = kh * kw
    names = [f"s{o}_{i}_{j}" for o in range(co) for i in range(kh) for j in range(kw)]
    lines = [PRE, "  let pair = wid.x; let sl = wid.y;",
             # pair = (group, output channel block, c); a block past OCg repeats its last channel, stores nothing
             "  let c = pair % Cg; let gb = pair / Cg; let g = gb / blocks; let ob = gb % blocks;",
             "  let xb = x_off + (g * Cg + c) * x_s_1;"]
    lines += [f"  let oc{o} = g * OCg + min(ob * {co}u + {o}u, OCg - 1u); let yb{o} = y_off + oc{o} * y_s_1;"
              for o in range(co)]
    lines += ["  let p1 = min(sl * chunk + chunk, npos);",
              "  " + " ".join(f"var {s} = 0.0;" for s in names),
              f"  for (var p = sl * chunk + lid; p < p1; p = p + {WG}u) {{",
              "    let ox = p % OW; let pt = p / OW; let oy = pt % OH; let n = pt / OH;",
              "    let yp = n * y_s_0 + oy * y_s_2 + ox * y_s_3;"]
    lines += [f"    let d{o} = {st_y.load(f'b2[yb{o} + yp]', 'f32')};" for o in range(co)]
    lines += ["    let xn = xb + n * x_s_0;",
              "    let iyb = i32(oy * sh) - ph; let ixb = i32(ox * sw) - pw;"]
    lines += [f"    let ix{j} = ixb + {j} * dw; let cok{j} = ix{j} >= 0 && ix{j} < W;" for j in range(kw)]
    for i in range(kh):
        lines.append(f"    let iy{i} = iyb + {i} * dh; let rok{i} = iy{i} >= 0 && iy{i} < H;")
        for j in range(kw):
            ok = f"rok{i} && cok{j}"
            load = st_x.load(f"b1[select(xn, xn + u32(iy{i}) * x_s_2 + u32(ix{j}) * x_s_3, {ok})]", "f32")
            lines.append(f"    {{ let v = select(0.0, {load}, {ok}); "
                         + " ".join(f"s{o}_{i}_{j} = s{o}_{i}_{j} + d{o} * v;" for o in range(co)) + " }")
    lines.append("  }")
    lines += tap_sums.sum_and_store(names, WG, lambda t0: [
        f"    let sum = {t0}u + lid; let o = sum / {taps}u; let tap = sum % {taps}u;",
        f"    if (ob * {co}u + o < OCg) {{",
        f"      let pair_out = (g * OCg + ob * {co}u + o) * Cg + c;",
        f"      b0[o_off + sl * o_s_0 + pair_out * o_s_1 + tap * o_s_2] = {st_o.store('total')};",
        "    }"])
    shared = tap_sums.shared(WG)
    return codegen.module([st_o.wgsl, st_x.wgsl, st_y.wgsl], "\n".join(lines), WG, shared=shared)


def channels_per_workgroup(OCg: int, taps: int) -> int:
    """Output channels a workgroup sums for (CO): up to 4 while CO*kh*kw sums stay in registers (3x3)."""
    return max(1, min(4, OCg, 36 // taps))


def _slices(pairs: int, P: int) -> int:
    return max(1, min(-(-_TARGET_GROUPS // pairs), P // _MIN_CHUNK, 65535))


def grad_weight(dy: WgpuTensor, x: WgpuTensor, g, dw: WgpuTensor) -> WgpuTensor:
    rt = runtime()
    kh, kw, taps = g.KH, g.KW, g.KH * g.KW
    co = channels_per_workgroup(g.OCg, taps)
    blocks = -(-g.OCg // co)
    pairs = g.groups * blocks * g.Cg      # workgroups per slice
    P = g.N * g.OH * g.OW
    slices = _slices(pairs, P)
    chunk = -(-P // slices)
    slices = -(-P // chunk)
    direct = slices == 1 and dw.is_contiguous()
    out = dw if direct else empty([slices, g.OC * g.Cg, taps], torch.float32)
    st_o, st_x, st_y = rt.stypes[out.dtype], rt.stypes[x.dtype], rt.stypes[dy.dtype]
    params = GROUPED_P.pack(**geometry_words(g), blocks=blocks, npos=P, chunk=chunk, **tensor_words("x", x),
                            w_off=0, w_s=(0,) * 4, **tensor_words("y", dy), o_off=out.elem_offset,
                            o_s=(0 if direct else g.OC * g.Cg * taps, taps, 1))
    key = ("grouped_wgrad", kh, kw, co, out.dtype, x.dtype, dy.dtype)
    kernel = rt.kernel(key, "conv2d_grouped_grad_weight", 3, lambda: _source(kh, kw, co, st_o, st_x, st_y))
    rt.dispatch(kernel, (out._ws.heap, x._ws.heap, dy._ws.heap), params, (pairs, slices, 1))
    if direct:
        return dw
    if dw.dtype == torch.float32 and dw.is_contiguous():
        reduce(out, [0], False, "sum", torch.float32, out=dw)
        return dw
    return copy_into(dw, reduce(out, [0], False, "sum", torch.float32).view(g.OC, g.Cg, kh, kw))
