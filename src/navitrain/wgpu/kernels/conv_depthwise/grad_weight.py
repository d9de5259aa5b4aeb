"""Depthwise grad-weight: dw[c, i, j] = sum over (n, oy, ox) of dy[n, c, oy, ox] * x at the tap (only
taps inside the image and positions inside dy count, so a NaN or inf never meets a padding zero).
The positions are split into slices so that the whole GPU works; each slice's per-channel tap sums land
in an f32 [slices, C, kh*kw] buffer (dw itself when one slice suffices), summed by the reduction engine
in a fixed order: the result is deterministic.
- NCHW: one 64-thread workgroup per (slice, channel); its threads take every 64th position of the
  slice (neighbouring threads read neighbouring columns), each keeping kh*kw sums in registers,
  combined by a fixed-order sum in workgroup memory.
- channels_last: one thread per (slice, channel), threads along C (coalesced reads of a pixel's
  channels); f32 with C % 4 == 0 and at most 3x3 taps: one thread per (slice, 4 channels), x and dy
  read as vec4 (larger kernels keep scalar sums: 4 x 25 or 4 x 49 sums would spill). A slice is a run
  of units of 4 neighbouring positions along W: the thread reads a tap row's span of 3*sw + kw
  columns once for the 4 positions, not kh*kw values per position (issue 23: walking single
  positions, one thread per channel, this pass ran 40x slower than cuDNN on an H100)."""
from __future__ import annotations

import torch

from navitrain.wgpu.kernels import codegen
from navitrain.wgpu.kernels import workgroup_tap_sums as tap_sums
from navitrain.wgpu.kernels.conv_depthwise.common import WG, channels_inner
from navitrain.wgpu.kernels.copy import copy_into
from navitrain.wgpu.kernels.reduction import reduce
from navitrain.wgpu.runtime import runtime
from navitrain.wgpu.tensor import WgpuTensor, empty

# x is IH x IW, dy OH x OW; out (partial sums or dw itself) is [slices, C, taps] by offset and 3 strides.
# NCHW: the P = N*OH*OW positions cut into slices of `chunk`; step_ox, step_oy, step_n: the workgroup
# size (64 positions) written in the radix (OW, OH).
_NCHW_P = codegen.ParamBlock(
    "C", "IH: i32", "IW: i32", "OH", "OW", "ph: i32", "pw: i32", "chunk", "P",
    "x_off", "x_s[4]", "y_off", "y_s[4]", "o_off", "o_s[3]", "step_ox", "step_oy", "step_n")
# channels_last: `units` = N*OH*groups_w runs of 4 positions, `chunk` of them a slice; lanes: channels
# (or 4-channel vectors) per slice.
_NHWC_P = codegen.ParamBlock(
    "C", "IH: i32", "IW: i32", "OH", "OW", "ph: i32", "pw: i32", "groups_w", "chunk", "units", "lanes",
    "x_off", "x_s[4]", "y_off", "y_s[4]", "o_off", "o_s[3]")

_NHWC_THREADS = 1 << 17      # channel-threads to aim for: fills a large GPU (132 SMs x 1024)
_PARTIAL_FLOATS = 1 << 22    # at most 16 MiB of partial sums (7x7 taps x many slices)


def _nchw_accumulate(kh, kw, sh, sw, st_x, st_y) -> list[str]:
    """Body of the loop over positions (n, oy, ox): adds dy * x at each tap to s{i}_{j}."""
    lines = [f"    let dyv = {st_y.load('b2[y_off + n * y_s_0 + c * y_s_1 + oy * y_s_2 + ox * y_s_3]', 'f32')};",
             "    let xb = x_off + n * x_s_0 + c * x_s_1;",
             f"    let iy0 = i32(oy * {sh}u) - ph; let ix0 = i32(ox * {sw}u) - pw;"]
    for j in range(kw):
        lines.append(f"    let cok{j} = ix0 + {j} >= 0 && ix0 + {j} < IW; let cx{j} = u32(ix0 + {j}) * x_s_3;")
    for i in range(kh):
        lines.append(f"    if (iy0 + {i} >= 0 && iy0 + {i} < IH) {{ let rx = xb + u32(iy0 + {i}) * x_s_2;")
        for j in range(kw):
            v = st_x.load(f"b1[rx + cx{j}]", "f32")
            lines.append(f"      if (cok{j}) {{ s{i}_{j} = s{i}_{j} + dyv * {v}; }}")
        lines.append("    }")
    return lines


def _nchw_source(kh, kw, sh, sw, st_o, st_x, st_y) -> str:
    names = [f"s{i}_{j}" for i in range(kh) for j in range(kw)]
    lines = ["\n" + _NCHW_P.wgsl(), "  let c = wid.x; let sl = wid.y;",
             "  let p0 = sl * chunk; let p1 = min(p0 + chunk, P);",
             "  " + " ".join(f"var {s} = 0.0;" for s in names),
             # the position split into (n, oy, ox) once; then 64 positions on is added digit by digit
             # (step_ox, step_oy, step_n: 64 in the radix (OW, OH)), no division per position
             "  let q0 = p0 + lid; var ox = q0 % OW; var oy = (q0 / OW) % OH; var n = q0 / (OW * OH);",
             f"  for (var q = q0; q < p1; q = q + {WG}u) {{"]
    lines += _nchw_accumulate(kh, kw, sh, sw, st_x, st_y)
    lines += ["    ox = ox + step_ox; var cy = 0u; if (ox >= OW) { ox = ox - OW; cy = 1u; }",
              "    oy = oy + step_oy + cy; cy = 0u; if (oy >= OH) { oy = oy - OH; cy = 1u; }",
              "    n = n + step_n + cy;",
              "  }"]
    lines += tap_sums.sum_and_store(names, WG, lambda t0: [
        f"    b0[o_off + sl * o_s_0 + c * o_s_1 + ({t0}u + lid) * o_s_2] = {st_o.store('total')};"])
    shared = tap_sums.shared(WG)
    return codegen.module([st_o.wgsl, st_x.wgsl, st_y.wgsl], "\n".join(lines), WG, shared=shared)


def _nhwc_source(kh, kw, sh, sw, vec4, st_o, st_x, st_y) -> str:
    """Thread = (slice, lane): lane is one channel, or 4 (vec4: x and dy bound as vec4<f32> arrays)."""
    T = "vec4<f32>" if vec4 else "f32"
    zero = f"{T}(0.0)"
    load_x = (lambda i: f"b1[({i}) >> 2u]") if vec4 else (lambda i: st_x.load(f"b1[{i}]", "f32"))
    load_y = (lambda i: f"b2[({i}) >> 2u]") if vec4 else (lambda i: st_y.load(f"b2[{i}]", "f32"))
    span = 3 * sw + kw
    names = [f"s{i}_{j}" for i in range(kh) for j in range(kw)]
    lines = ["\n" + _NHWC_P.wgsl(),
             "  let lane = gi % lanes; let sl = gi / lanes;",
             "  let u0 = sl * chunk; if (u0 >= units) { return; }",
             "  let u1 = min(u0 + chunk, units);",
             f"  let c = lane * {4 if vec4 else 1}u;",
             "  let xc = x_off + c * x_s_1; let yc = y_off + c * y_s_1;",
             "  " + " ".join(f"var {s} = {zero};" for s in names),
             "  var g4 = u0 % groups_w; var oy = (u0 / groups_w) % OH; var n = u0 / (groups_w * OH);",
             "  for (var u = u0; u < u1; u = u + 1u) {",
             "    let ox = g4 * 4u; let yb = yc + n * y_s_0 + oy * y_s_2;"]
    for q in range(4):
        # past the last column: the address is clamped (no read leaves the binding), the terms dropped
        lines.append(f"    let in{q} = ox + {q}u < OW; "
                     f"let d{q} = {load_y(f'select(yb, yb + (ox + {q}u) * y_s_3, in{q})')};")
    lines += ["    let xb = xc + n * x_s_0;",
              f"    let iy0 = i32(oy * {sh}u) - ph; let ix0 = i32(ox * {sw}u) - pw;"]
    for t in range(span):
        lines.append(f"    let cok{t} = ix0 + {t} >= 0 && ix0 + {t} < IW; let cx{t} = u32(ix0 + {t}) * x_s_3;")
    pairs = sorted({(q, q * sw + j) for q in range(4) for j in range(kw)})
    lines += [f"    let m{q}_{t} = in{q} && cok{t};" for q, t in pairs]
    for i in range(kh):
        lines += [f"    if (iy0 + {i} >= 0 && iy0 + {i} < IH) {{",
                  f"      let rx = xb + u32(iy0 + {i}) * x_s_2;"]
        lines += [f"      let v{t} = {load_x(f'select(xb, rx + cx{t}, cok{t})')};" for t in range(span)]
        for j in range(kw):
            # select, not a multiply by a masked zero: 0 * inf would make a NaN the CPU never sees
            terms = " + ".join(f"select({zero}, d{q} * v{q * sw + j}, m{q}_{q * sw + j})" for q in range(4))
            lines.append(f"      s{i}_{j} = s{i}_{j} + ({terms});")
        lines.append("    }")
    lines += ["    g4 = g4 + 1u; if (g4 == groups_w) { g4 = 0u; oy = oy + 1u; if (oy == OH) { oy = 0u; n = n + 1u; } }",
              "  }",
              "  let ob = o_off + sl * o_s_0 + c * o_s_1;"]
    for t, s in enumerate(names):
        if vec4:
            lines += [f"  b0[ob + {k}u * o_s_1 + {t}u * o_s_2] = {st_o.store(s + '.' + 'xyzw'[k])};" for k in range(4)]
        else:
            lines.append(f"  b0[ob + {t}u * o_s_2] = {st_o.store(s)};")
    types = [st_o.wgsl] + (["vec4<f32>", "vec4<f32>"] if vec4 else [st_x.wgsl, st_y.wgsl])
    return codegen.module(types, "\n".join(lines), WG)


def _vec4_ok(x: WgpuTensor, dy: WgpuTensor, kh: int, kw: int) -> bool:
    """Whether 4 neighbouring channels of every pixel of x and dy are one aligned 16-byte f32 word."""
    return (kh * kw <= 9 and x.dtype == dy.dtype == torch.float32 and x.shape[1] % 4 == 0
            and all(t.stride(1) == 1 and t.elem_offset % 4 == 0 and t.stride(0) % 4 == 0
                    and t.stride(2) % 4 == 0 and t.stride(3) % 4 == 0 for t in (x, dy)))


def _nchw_slices(C: int, P: int) -> int:
    """~2048 workgroups of 64 threads to fill a large GPU, each slice at least 256 positions (4 a thread)."""
    return max(1, min(-(-2048 // C), P // 256, 65535))


def _nhwc_slices(C: int, units: int, taps: int) -> int:
    """Enough slices for ~_NHWC_THREADS channel-threads, each slice at least 8 units (32 positions),
    the partial sums at most _PARTIAL_FLOATS."""
    want = -(-_NHWC_THREADS // C)
    return max(1, min(want, units // 8, _PARTIAL_FLOATS // (C * taps)))


def grad_weight(dy: WgpuTensor, x: WgpuTensor, g, dw: WgpuTensor) -> WgpuTensor:
    rt = runtime()
    kh, kw = g.KH, g.KW
    sh, sw = g.stride
    taps = kh * kw
    inner = channels_inner(x)
    if inner:
        vec4 = _vec4_ok(x, dy, kh, kw)
        lanes = g.C // 4 if vec4 else g.C
        groups_w = -(-g.OW // 4)
        units = g.N * g.OH * groups_w
        slices = _nhwc_slices(g.C, units, taps)
        chunk = -(-units // slices)
        slices = -(-units // chunk)
    else:
        P = g.N * g.OH * g.OW
        slices = _nchw_slices(g.C, P)
        chunk = -(-P // slices)
        slices = -(-P // chunk)
    direct = slices == 1 and dw.is_contiguous()
    out = dw if direct else empty([slices, g.C, taps], torch.float32)
    st_o, st_x, st_y = rt.stypes[out.dtype], rt.stypes[x.dtype], rt.stypes[dy.dtype]
    common = dict(C=g.C, IH=g.H, IW=g.W, OH=g.OH, OW=g.OW, ph=g.padding[0], pw=g.padding[1], chunk=chunk,
                  x_off=x.elem_offset, x_s=x.stride(), y_off=dy.elem_offset, y_s=dy.stride(),
                  o_off=out.elem_offset, o_s=(0 if direct else g.C * taps, taps, 1))
    heaps = (out._ws.heap, x._ws.heap, dy._ws.heap)
    if inner:
        params = _NHWC_P.pack(groups_w=groups_w, units=units, lanes=lanes, **common)
        key = ("dw_wgrad_nhwc", kh, kw, sh, sw, vec4, out.dtype, x.dtype, dy.dtype)
        kernel = rt.kernel(key, "conv2d_depthwise_grad_weight", 3,
                           lambda: _nhwc_source(kh, kw, sh, sw, vec4, st_o, st_x, st_y))
        rt.dispatch(kernel, heaps, params, codegen.groups_for(slices * lanes, WG))
    else:
        params = _NCHW_P.pack(P=P, step_ox=WG % g.OW, step_oy=(WG // g.OW) % g.OH, step_n=WG // (g.OW * g.OH),
                              **common)
        key = ("dw_wgrad", kh, kw, sh, sw, out.dtype, x.dtype, dy.dtype)
        kernel = rt.kernel(key, "conv2d_depthwise_grad_weight", 3,
                           lambda: _nchw_source(kh, kw, sh, sw, st_o, st_x, st_y))
        rt.dispatch(kernel, heaps, params, (g.C, slices, 1))
    if direct:
        return dw
    if slices == 1:
        return copy_into(dw, out.view(g.C, 1, kh, kw))
    if dw.dtype == torch.float32 and dw.is_contiguous():
        reduce(out, [0], False, "sum", torch.float32, out=dw)
        return dw
    return copy_into(dw, reduce(out, [0], False, "sum", torch.float32).view(g.C, 1, kh, kw))
