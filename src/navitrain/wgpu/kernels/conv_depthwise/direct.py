"""Depthwise kernels without workgroup memory: each thread computes 4 neighbouring outputs along W,
reading the image directly.
- `correlate_source`: NCHW planes too small for a tile (7x7), and channels_last kernels too large for
  tiled_nhwc's tile; threads ordered along C (channels_last, coalesced) or along W (NCHW).
- `strided_grad_input` (stride 2): a gather in one dispatch, the taps that land on each of a thread's
  4 dx fixed when the kernel is generated (from the padding's parity)."""
from __future__ import annotations

from navitrain.wgpu.kernels import codegen
from navitrain.wgpu.kernels.conv_depthwise.common import (
    PRE,
    WG,
    channels_inner,
    correlate_params,
    fma_rows,
    store,
    weights,
)
from navitrain.wgpu.runtime import runtime
from navitrain.wgpu.tensor import WgpuTensor


def _split(inner: bool) -> list[str]:
    if inner:   # thread index (n, oy, column group, c): neighbouring threads, neighbouring channels
        return ["  let c = gi % C; let r = gi / C; let g4 = r % groups_w; let r2 = r / groups_w;",
                "  let oy = r2 % OH; let n = r2 / OH;"]
    # (n, c, oy, column group): neighbouring threads, neighbouring columns
    return ["  let g4 = gi % groups_w; let r = gi / groups_w; let oy = r % OH; let r2 = r / OH;",
            "  let c = r2 % C; let n = r2 / C;"]


def correlate_source(kh, kw, sh, sw, flip, inner, st_o, st_x, st_w, st_b) -> str:
    """One thread = 4 neighbouring outputs along W of one (n, c, oy)."""
    lines = [PRE, "  if (gi >= work) { return; }"] + _split(inner) + [
        "  let xb = x_off + n * x_s_0 + c * x_s_1; let ox = g4 * 4u;",
        f"  let iy0 = i32(oy * {sh}u) - ph; let ix0 = i32(ox * {sw}u) - pw;"]
    for t in range(3 * sw + kw):
        lines.append(f"  let cok{t} = ix0 + {t} >= 0 && ix0 + {t} < IW; let cx{t} = u32(ix0 + {t}) * x_s_3;")
    for i in range(kh):
        lines.append(f"  let rok{i} = iy0 + {i} >= 0 && iy0 + {i} < IH; let rx{i} = xb + u32(iy0 + {i}) * x_s_2;")
    lines += weights(kh, kw, flip, st_w)
    lines.append("  var a0 = 0.0; var a1 = 0.0; var a2 = 0.0; var a3 = 0.0;")

    def value(i, t):
        # select() evaluates both sides: the address is clamped to the row start when out of range,
        # so no read leaves the binding; the value read there is discarded.
        load = st_x.load(f"b1[select(xb, rx{i} + cx{t}, rok{i} && cok{t})]", "f32")
        return f"select(0.0, {load}, rok{i} && cok{t})"
    lines += fma_rows(kh, kw, sw, value)
    lines += ["  let ob = o_off + n * o_s_0 + c * o_s_1 + oy * o_s_2;", "  {"]
    lines += store(st_o, st_b is not None, st_b)
    lines.append("  }")
    types = [st_o.wgsl, st_x.wgsl, st_w.wgsl] + ([st_b.wgsl] if st_b is not None else [])
    return codegen.module(types, "\n".join(lines), WG)


def _dgrad_source(kh, kw, sh, sw, rw, inner, st_o, st_y, st_w) -> str:
    """dx[n, c, iy, ix] = sum over taps (i, j) with oy = (iy + ph - i) / sh and ox = (ix + pw - j) / sw
    exact of dy[n, c, oy, ox] * w[c, i, j]; a thread computes 4 neighbouring ix (ix0 = 4*g, so sw | ix0).
    Which (q, j) land is decided here, from rw = pw mod sw (compiled in): ix0 + q + pw - j is a
    multiple of sw exactly when q + rw - j is, and then ox = ix0/sw + pw div sw + (q + rw - j)/sw.
    Whether tap row i lands depends on iy: one test per row, the same for the thread's 4 outputs."""
    # (names from PRE: x = dy of IH x IW, out = dx of OH x OW; oy, ox index dx)
    lines = [PRE, "  if (gi >= work) { return; }"] + _split(inner) + [
        "  let yb = x_off + n * x_s_0 + c * x_s_1; let ox = g4 * 4u;",
        f"  let owb = i32(ox / {sw}u) + pw / {sw};"]
    taps = {(q, j): (q + rw - j) // sw for q in range(4) for j in range(kw) if (q + rw - j) % sw == 0}
    offsets = sorted(set(taps.values()))
    for d in offsets:
        name = f"{d}".replace("-", "m")
        lines.append(f"  let cok{name} = owb + {d} >= 0 && owb + {d} < IW; let cx{name} = u32(owb + {d}) * x_s_3;")
    lines += weights(kh, kw, False, st_w)
    lines.append("  var a0 = 0.0; var a1 = 0.0; var a2 = 0.0; var a3 = 0.0;")
    for i in range(kh):
        lines.append(f"  let nh{i} = i32(oy) + ph - {i};")
        lines.append(f"  if (nh{i} >= 0 && nh{i} % {sh} == 0 && nh{i} / {sh} < IH) {{")
        lines.append(f"    let rx = yb + u32(nh{i} / {sh}) * x_s_2;")
        for d in offsets:
            name = f"{d}".replace("-", "m")
            load = st_y.load(f"b1[select(yb, rx + cx{name}, cok{name})]", "f32")
            lines.append(f"    let v{name} = select(0.0, {load}, cok{name});")
        for q in range(4):
            terms = [f"w{i}_{j} * v{f'{taps[(q, j)]}'.replace('-', 'm')}" for j in range(kw) if (q, j) in taps]
            if terms:
                lines.append(f"    a{q} = a{q} + ({' + '.join(terms)});")
        lines.append("  }")
    lines += ["  let ob = o_off + n * o_s_0 + c * o_s_1 + oy * o_s_2;", "  {"]
    lines += store(st_o, False, None)
    lines.append("  }")
    return codegen.module([st_o.wgsl, st_y.wgsl, st_w.wgsl], "\n".join(lines), WG)


def strided_grad_input(dy: WgpuTensor, w: WgpuTensor, g, dx: WgpuTensor) -> WgpuTensor:
    rt = runtime()
    sh, sw = g.stride
    rw = g.padding[1] % sw
    inner = channels_inner(dx)
    col_groups = -(-g.W // 4)
    total = g.N * g.C * g.H * col_groups
    params = correlate_params(dy, w, dx, None, g.padding, col_groups, 0, total)
    st_o, st_y, st_w = rt.stypes[dx.dtype], rt.stypes[dy.dtype], rt.stypes[w.dtype]
    key = ("dw_dgrad", g.KH, g.KW, sh, sw, rw, inner, dx.dtype, dy.dtype, w.dtype)
    kernel = rt.kernel(key, "conv2d_depthwise_grad_input", 3,
                       lambda: _dgrad_source(g.KH, g.KW, sh, sw, rw, inner, st_o, st_y, st_w))
    rt.dispatch(kernel, (dx._ws.heap, dy._ws.heap, w._ws.heap), params, codegen.groups_for(total, WG))
    return dx
