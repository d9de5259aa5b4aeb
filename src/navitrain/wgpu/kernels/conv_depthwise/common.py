"""What the depthwise kernels share: the correlation's parameter block and WGSL fragments (weights in
registers, the multiply-add over a tap row, the masked store)."""
from __future__ import annotations

from navitrain.wgpu.kernels import codegen
from navitrain.wgpu.tensor import WgpuTensor

WG = 64
MAX_TAPS = 15          # per dimension: keeps a tile + halo well inside 16 KiB of workgroup memory

# correlate: forward and stride-1 grad-input; the stride-2 grad-input gather shares its parameters
# (x = dy, out = dx). x is C channels of IH x IW, out OH x OW, padded by (ph, pw) before the image.
# groups_w: tiles or column groups along W; tiles_h: tiles along H (tiled kernels only); work:
# workgroups (tiled kernels) or threads in all. Each tensor: element offset and 4 strides.
CORRELATE_P = codegen.ParamBlock(
    "C", "IH: i32", "IW: i32", "OH", "OW", "ph: i32", "pw: i32", "groups_w", "tiles_h", "work",
    "x_off", "x_s[4]", "w_off", "w_s[4]", "o_off", "o_s[4]", "b_off", defaults={"tiles_h": 0, "b_off": 0})
PRE = "\n" + CORRELATE_P.wgsl()


def weights(kh: int, kw: int, flip: bool, st_w, channel: str = "c") -> list[str]:
    """w{i}_{j}: the thread's channel's taps in registers (rotated by 180 degrees when `flip`)."""
    lines = [f"  let wb = w_off + {channel} * w_s_0;"]
    for i in range(kh):
        for j in range(kw):
            si, sj = (kh - 1 - i, kw - 1 - j) if flip else (i, j)
            lines.append(f"  let w{i}_{j} = {st_w.load(f'b2[wb + {si}u * w_s_2 + {sj}u * w_s_3]', 'f32')};")
    return lines


def fma_rows(kh: int, kw: int, sw: int, value, outputs: int = 4, indent: str = "  ") -> list[str]:
    """acc_q += sum_{i,j} w_ij * in(i, q*sw + j) for the `outputs` outputs q of a thread; value(i, t) is
    the WGSL for column t of the thread's input span in tap row i."""
    lines = []
    span = (outputs - 1) * sw + kw
    for i in range(kh):
        lines += [f"{indent}let v{i}_{t} = {value(i, t)};" for t in range(span)]
        for q in range(outputs):
            terms = " + ".join(f"w{i}_{j} * v{i}_{q * sw + j}" for j in range(kw))
            lines.append(f"{indent}a{q} = a{q} + ({terms});")
    return lines


def store(st_o, bias: bool, st_b, outputs: int = 4, indent: str = "    ") -> list[str]:
    """out at columns ox + q (q < outputs) of row base `ob`, those inside the image, plus the bias."""
    b = f" + {st_b.load('b3[b_off + c]', 'f32')}" if bias else ""
    return [f"{indent}if (ox + {q}u < OW) {{ b0[ob + (ox + {q}u) * o_s_3] = {st_o.store(f'a{q}{b}')}; }}"
            for q in range(outputs)]


def channels_inner(t: WgpuTensor) -> bool:
    """channels_last: neighbouring channels of a pixel are neighbours in memory."""
    return t.shape[1] > 1 and t.stride(1) < t.stride(3)


def correlate_params(x: WgpuTensor, w: WgpuTensor, out: WgpuTensor, bias: WgpuTensor | None, padding,
                     groups_w: int, tiles_h: int, work: int) -> bytes:
    """The parameter block of the correlation kernels and of the strided grad-input gather (x = dy, out = dx)."""
    return CORRELATE_P.pack(
        C=x.shape[1], IH=x.shape[2], IW=x.shape[3], OH=out.shape[2], OW=out.shape[3], ph=padding[0], pw=padding[1],
        groups_w=groups_w, tiles_h=tiles_h, work=work, x_off=x.elem_offset, x_s=x.stride(),
        w_off=w.elem_offset, w_s=w.stride(), o_off=out.elem_offset, o_s=out.stride(),
        b_off=bias.elem_offset if bias is not None else 0)
