"""NCHW correlation with an output tile per workgroup: one (n, c) plane's tile + halo is loaded into
workgroup memory once and reused by every tap; each thread computes 4 outputs along W with the
channel's weights in registers."""
from __future__ import annotations

from navitrain.wgpu.kernels import codegen
from navitrain.wgpu.kernels.conv_depthwise.common import PRE, WG, fma_rows, store, weights

# threads along W per row (each 4 outputs) -> tile of (64 / t) rows x 4t columns
TILES = {2: (32, 8), 4: (16, 16), 8: (8, 32)}


def threads_along_w(OW: int) -> int:
    return 2 if OW <= 8 else (4 if OW <= 16 else 8)


def source(kh, kw, sh, sw, flip, tw_threads, st_o, st_x, st_w, st_b) -> str:
    rows, cols = TILES[tw_threads]
    tin_h, tin_w = (rows - 1) * sh + kh, (cols - 1) * sw + kw
    lines = [PRE,
             "  if (group >= work) { return; }",
             "  let tiles_w = groups_w; let per_plane = tiles_w * tiles_h;",
             "  let plane = group / per_plane; let tr = group % per_plane;",
             f"  let oy0 = (tr / tiles_w) * {rows}u; let ox0 = (tr % tiles_w) * {cols}u;",
             "  let n = plane / C; let c = plane % C;",
             "  let xb = x_off + n * x_s_0 + c * x_s_1;",
             f"  let iy0 = i32(oy0 * {sh}u) - ph; let ix0 = i32(ox0 * {sw}u) - pw;",
             # the input tile + halo, zero outside the image (padding)
             f"  for (var e = lid; e < {tin_h * tin_w}u; e = e + {WG}u) {{",
             f"    let iy = iy0 + i32(e / {tin_w}u); let ix = ix0 + i32(e % {tin_w}u);",
             "    var v = 0.0;",
             f"    if (iy >= 0 && iy < IH && ix >= 0 && ix < IW) {{ "
             f"v = {st_x.load('b1[xb + u32(iy) * x_s_2 + u32(ix) * x_s_3]', 'f32')}; }}",
             "    tile[e] = v;",
             "  }"]
    lines += weights(kh, kw, flip, st_w)
    lines += ["  workgroupBarrier();",
              f"  let ty = lid / {tw_threads}u; let tx = lid % {tw_threads}u;",
              f"  let tb = ty * {sh * tin_w}u + tx * {4 * sw}u;",
              "  var a0 = 0.0; var a1 = 0.0; var a2 = 0.0; var a3 = 0.0;"]
    lines += fma_rows(kh, kw, sw, lambda i, t: f"tile[tb + {i * tin_w + t}u]")
    lines += ["  let oy = oy0 + ty; let ox = ox0 + tx * 4u;",
              "  if (oy < OH) {",
              "    let ob = o_off + n * o_s_0 + c * o_s_1 + oy * o_s_2;"]
    lines += store(st_o, st_b is not None, st_b)
    lines.append("  }")
    types = [st_o.wgsl, st_x.wgsl, st_w.wgsl] + ([st_b.wgsl] if st_b is not None else [])
    shared = f"var<workgroup> tile: array<f32, {tin_h * tin_w}>;"
    return codegen.module(types, "\n".join(lines), WG, shared=shared)
