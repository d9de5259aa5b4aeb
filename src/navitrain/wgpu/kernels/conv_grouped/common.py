"""What the grouped kernels share: their parameter block and the WGSL of a tap's position tests.

Tensors by role: x the input image (forward and grad-weight read it, grad-input writes it), w the
weight [OC, Cg, KH, KW], y the output side (forward writes it, the gradients read dy from it), o the
grad-weight's partial sums [slices, OC*Cg, KH*KW]. Every tensor is read through its own offset and
strides, so NCHW, channels_last and views all take the same kernels.
"""
from __future__ import annotations

from navitrain.wgpu.kernels import codegen

WG = 64
MAX_TAPS = 49          # kh*kw unrolled into each kernel (7x7); larger kernels stay with the implicit GEMM

# blocks: channel blocks of CB channels per group (output channels for the forward, input channels for
# grad-input); work: threads in all (forward, grad-input); npos: positions a thread walks over (N*OH*OW
# for forward and grad-weight, N*H*W for grad-input); chunk: positions per grad-weight slice.
GROUPED_P = codegen.ParamBlock(
    "Cg", "OCg", "H: i32", "W: i32", "OH", "OW", "sh", "sw", "ph: i32", "pw: i32", "dh: i32", "dw: i32",
    "groups", "blocks", "work", "npos", "chunk",
    "x_off", "x_s[4]", "w_off", "w_s[4]", "y_off", "y_s[4]", "o_off", "o_s[3]", "b_off",
    defaults={"blocks": 1, "work": 0, "chunk": 0, "o_off": 0, "o_s": (0, 0, 0), "b_off": 0, "y_off": 0,
              "y_s": (0, 0, 0, 0)})
PRE = "\n" + GROUPED_P.wgsl()


def geometry_words(g) -> dict:
    return dict(Cg=g.Cg, OCg=g.OCg, H=g.H, W=g.W, OH=g.OH, OW=g.OW, sh=g.stride[0], sw=g.stride[1],
                ph=g.padding[0], pw=g.padding[1], dh=g.dilation[0], dw=g.dilation[1], groups=g.groups)


def tensor_words(name: str, t) -> dict:
    return {f"{name}_off": t.elem_offset, f"{name}_s": t.stride()}


def split_thread(inner: bool) -> str:
    """The thread's position p and (group, channel block): positions fastest in NCHW (neighbouring
    threads read neighbouring columns), channel blocks fastest in channels_last (neighbouring threads
    read neighbouring channels of one pixel)."""
    split = ("let gbs = groups * blocks; let gb = gi % gbs; let p = gi / gbs;" if inner
             else "let gb = gi / npos; let p = gi % npos;")
    return f"  {split}\n  let g = gb / blocks; let cb = gb % blocks;"
