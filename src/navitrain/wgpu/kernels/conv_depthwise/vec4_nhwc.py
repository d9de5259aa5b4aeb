"""channels_last correlation, 4 channels a thread as one vec4: for f32 tensors whose 4 neighbouring
channels of every pixel are one aligned 16-byte word (C % 4 == 0). A thread computes 4 channels x 4
neighbouring outputs along W of one row, reading x and writing out as vec4 straight from memory
(neighbouring threads: neighbouring channel quads of the same pixels, so the loads are coalesced).

This is the kernel 4dc0b1f ran for these layers (issue 23). The tiled kernel that replaced it in
2e4febd (tiled_nhwc.py) was slower wherever the two were timed: on lavapipe (MobileNetV2 144@56 forward
1.6x, ConvNeXt 96@56 7x7 1.25x) and in the one H100 call that ran both (run 13: 344 -> 784 us and
280 -> 561 us, though that call's unchanged NCHW kernels also moved 1.4-3x). So this one is the choice
wherever it applies; tiled_nhwc keeps the channels_last layers it does not take (16-bit storage,
C % 4 != 0, unaligned channel slices)."""
from __future__ import annotations

import torch

from navitrain.wgpu.kernels import codegen
from navitrain.wgpu.kernels.conv_depthwise.common import PRE, WG, fma_rows
from navitrain.wgpu.tensor import WgpuTensor

OUTPUTS = 4   # outputs along W per thread (each a vec4 of 4 channels)


def fits(x: WgpuTensor, out: WgpuTensor) -> bool:
    """Whether 4 neighbouring channels of every pixel of x and out are one aligned 16-byte f32 word."""
    return (x.dtype == out.dtype == torch.float32 and x.shape[1] % 4 == 0
            and all(t.stride(1) == 1 and t.elem_offset % 4 == 0 and t.stride(0) % 4 == 0
                    and t.stride(2) % 4 == 0 and t.stride(3) % 4 == 0 for t in (x, out)))


def launch_shape(N: int, C: int, OH: int, OW: int) -> tuple[int, int]:
    """(column groups along W, threads in all)."""
    groups_w = -(-OW // OUTPUTS)
    return groups_w, N * (C // 4) * OH * groups_w


def source(kh, kw, sh, sw, flip, st_w, st_b) -> str:
    """b0 = out and b1 = x bound as vec4<f32> arrays (word index >> 2); w and the bias in their storage
    types, 4 channels gathered into a vec4."""
    lines = [PRE, "  if (gi >= work) { return; }",
             # thread index (n, oy, column group, channel quad): channel quads fastest
             "  let quads = C / 4u;",
             "  let c = (gi % quads) * 4u; let r = gi / quads; let g4 = r % groups_w; let r2 = r / groups_w;",
             "  let oy = r2 % OH; let n = r2 / OH;",
             "  let xb = x_off + n * x_s_0 + c; let ox = g4 * 4u;",
             f"  let iy0 = i32(oy * {sh}u) - ph; let ix0 = i32(ox * {sw}u) - pw;"]
    for t in range((OUTPUTS - 1) * sw + kw):
        lines.append(f"  let cok{t} = ix0 + {t} >= 0 && ix0 + {t} < IW; let cx{t} = u32(ix0 + {t}) * x_s_3;")
    for i in range(kh):
        lines.append(f"  let rok{i} = iy0 + {i} >= 0 && iy0 + {i} < IH; let rx{i} = xb + u32(iy0 + {i}) * x_s_2;")
    lines.append("  let wb = w_off + c * w_s_0;")
    for i in range(kh):
        for j in range(kw):
            si, sj = (kh - 1 - i, kw - 1 - j) if flip else (i, j)
            taps = ", ".join(st_w.load(f"b2[wb + {q}u * w_s_0 + {si}u * w_s_2 + {sj}u * w_s_3]", "f32")
                             for q in range(4))
            lines.append(f"  let w{i}_{j} = vec4<f32>({taps});")
    lines.append("  " + " ".join(f"var a{q} = vec4<f32>(0.0);" for q in range(OUTPUTS)))

    def value(i, t):
        # select() evaluates both sides: the address is clamped to the pixel's row base when the tap is
        # in the padding, so no read leaves the binding; the value read there is discarded.
        ok = f"rok{i} && cok{t}"
        return f"select(vec4<f32>(0.0), b1[select(xb, rx{i} + cx{t}, {ok}) >> 2u], {ok})"
    lines += fma_rows(kh, kw, sw, value, outputs=OUTPUTS)
    bias = ""
    if st_b is not None:
        taps = ", ".join(st_b.load(f"b3[b_off + c + {q}u]", "f32") for q in range(4))
        lines.append(f"  let bv = vec4<f32>({taps});")
        bias = " + bv"
    lines.append("  let ob = o_off + n * o_s_0 + c + oy * o_s_2;")
    lines += [f"  if (ox + {q}u < OW) {{ b0[(ob + (ox + {q}u) * o_s_3) >> 2u] = a{q}{bias}; }}"
              for q in range(OUTPUTS)]
    types = ["vec4<f32>", "vec4<f32>", st_w.wgsl] + ([st_b.wgsl] if st_b is not None else [])
    return codegen.module(types, "\n".join(lines), WG)

