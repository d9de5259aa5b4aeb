"""channels_last correlation with a tile per workgroup (issue 23: reading every tap straight from
memory, 4 outputs a thread, the NHWC forward and grad-input ran at a quarter of cuDNN's speed on an
H100). A workgroup computes ROWS output rows x `tw` columns x LANES channels of one image: the input
tile + halo (rows x columns x LANES channels, channels innermost so that the loads are coalesced) is
loaded into workgroup memory once and reused by every tap; each thread computes `tw` neighbouring
outputs along W of one row and one channel, the channel's weights in registers. A scalar per thread
(not vec4 over channels) keeps a 7x7 kernel's 49 weights in registers without spilling, and serves
f16/bf16 storage and any C alike (lanes past C load zeros and store nothing).
f32 layers with C % 4 == 0 take vec4_nhwc.py instead (faster there, see its docstring); this kernel
keeps the channels_last layers vec4_nhwc cannot take."""
from __future__ import annotations

from navitrain.wgpu.kernels import codegen
from navitrain.wgpu.kernels.conv_depthwise.common import PRE, WG, fma_rows, store, weights

LANES = 16            # channels per tile: 16 f32 are 64 contiguous bytes of a pixel
ROWS = WG // LANES    # output rows per tile, one per 16 threads
TILE_FLOATS = 4096    # 16 KiB: WebGPU's guaranteed workgroup memory


def _row_stride(tin_w: int, sh: int) -> int:
    """Floats between tile rows: at least tin_w * LANES, padded so that the two output rows a 32-thread
    warp computes (input rows sh apart) fall in different halves of the 32 memory banks."""
    base = tin_w * LANES
    return next((r for r in range(base, base + 32, 8) if (sh * r) % 32 == 16), base)


def _geometry(kh: int, kw: int, sh: int, sw: int, tw: int) -> tuple[int, int, int]:
    tin_h, tin_w = (ROWS - 1) * sh + kh, (tw - 1) * sw + kw
    return tin_h, tin_w, _row_stride(tin_w, sh)


def tile_width(kh: int, kw: int, sh: int, sw: int) -> int | None:
    """Outputs per thread along W (8, or 4 where 8 would overflow workgroup memory), None where even
    4 does not fit (kernels above 7x7 or so: the direct kernel takes those)."""
    for tw in (8, 4):
        tin_h, _, row_stride = _geometry(kh, kw, sh, sw, tw)
        if tin_h * row_stride <= TILE_FLOATS:
            return tw
    return None


def source(kh, kw, sh, sw, flip, tw, st_o, st_x, st_w, st_b) -> str:
    tin_h, tin_w, row_stride = _geometry(kh, kw, sh, sw, tw)
    lines = [PRE,
             "  if (group >= work) { return; }",
             # workgroup = (n, tile row, tile column, channel block), channel blocks fastest: neighbouring
             # workgroups read neighbouring channels of the same pixels
             f"  let blocks = (C + {LANES - 1}u) / {LANES}u;",
             "  let cb = group % blocks; let r = group / blocks; let tx = r % groups_w; let r2 = r / groups_w;",
             "  let th = r2 % tiles_h; let n = r2 / tiles_h;",
             f"  let c0 = cb * {LANES}u; let lane = lid % {LANES}u; let ty = lid / {LANES}u;",
             f"  let oy0 = th * {ROWS}u; let ox0 = tx * {tw}u;",
             f"  let iy0 = i32(oy0 * {sh}u) - ph; let ix0 = i32(ox0 * {sw}u) - pw;",
             "  let xb = x_off + n * x_s_0;",
             # the input tile + halo, zero outside the image (padding) and past the last channel
             f"  for (var e = lid; e < {tin_h * tin_w * LANES}u; e = e + {WG}u) {{",
             f"    let l = e % {LANES}u; let p = e / {LANES}u; let ty_in = p / {tin_w}u; let tx_in = p % {tin_w}u;",
             "    let iy = iy0 + i32(ty_in); let ix = ix0 + i32(tx_in); let cc = c0 + l;",
             "    var v = 0.0;",
             "    if (cc < C && iy >= 0 && iy < IH && ix >= 0 && ix < IW) {",
             f"      v = {st_x.load('b1[xb + cc * x_s_1 + u32(iy) * x_s_2 + u32(ix) * x_s_3]', 'f32')};",
             "    }",
             f"    tile[ty_in * {row_stride}u + tx_in * {LANES}u + l] = v;",
             "  }",
             # lanes past C compute with channel C-1's weights and store nothing
             "  let c = min(c0 + lane, C - 1u);"]
    lines += weights(kh, kw, flip, st_w)
    lines += ["  workgroupBarrier();",
              f"  let tb = ty * {sh * row_stride}u + lane;",
              "  " + " ".join(f"var a{q} = 0.0;" for q in range(tw))]
    lines += fma_rows(kh, kw, sw, lambda i, t: f"tile[tb + {i * row_stride + t * LANES}u]", outputs=tw)
    lines += ["  let oy = oy0 + ty; let ox = ox0;",
              "  if (oy < OH && c0 + lane < C) {",
              "    let ob = o_off + n * o_s_0 + c * o_s_1 + oy * o_s_2;"]
    lines += store(st_o, st_b is not None, st_b, outputs=tw)
    lines.append("  }")
    types = [st_o.wgsl, st_x.wgsl, st_w.wgsl] + ([st_b.wgsl] if st_b is not None else [])
    shared = f"var<workgroup> tile: array<f32, {tin_h * row_stride}>;"
    return codegen.module(types, "\n".join(lines), WG, shared=shared)


def launch_shape(N: int, C: int, OH: int, OW: int, tw: int) -> tuple[int, int, int]:
    """(tiles along W, tiles along H, workgroups)."""
    tiles_w, tiles_h = -(-OW // tw), -(-OH // ROWS)
    return tiles_w, tiles_h, N * tiles_h * tiles_w * -(-C // LANES)
