"""2-D convolution as implicit GEMM on the GPU: forward, grad-input and grad-weight.

No im2col buffer is ever written: the GEMM operand that would be im2col is gathered tile by tile into
workgroup memory (navitrain.wgpu.kernels.gemm). Each pass picks the orientation that keeps both the gather and
the output writes coalesced for the tensors' memory format:
- NCHW (spatial dims contiguous): rows = channels, columns = (n, y, x) positions, so consecutive
  threads walk x both when gathering and when writing;
- NHWC (channels_last): rows = (n, y, x) positions, columns = channels, and K is ordered (kh, kw, c)
  so the gather walks channels, which are contiguous.
Groups are the GEMM batch (grid z). Grad-weight reduces over N*OH*OW, a long K for a small output, so
it is split along K across workgroups and the slices are summed by a second pass.
Shapes/strides/padding/dilation all come from the parameter block: one compiled kernel per
(pass, orientation, dtype, tile), whatever the layer.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from navitrain.wgpu.kernels import codegen, conv1x1, conv_depthwise
from navitrain.wgpu.kernels.gemm import Epilogue, Operand, Strided, TileConfig, _Store, auto_splits, k_slices, launch
from navitrain.wgpu.runtime import runtime
from navitrain.wgpu.tensor import WgpuTensor, empty, is_channels_last

# Parameter words of the convolution geometry (the GEMM itself uses words 0..7).
_GEOM = ["cN", "cCg", "cH", "cW", "cOH", "cOW", "cKH", "cKW", "csh", "csw", "cph", "cpw", "cdh", "cdw", "cOCg"]
_TENSORS = {"x": 23, "w": 28, "y": 33, "o": 38}  # each: offset, then 4 strides
_BIAS = 43

PREAMBLE = tuple(
    [f"let {name} = pu({8 + i}u);" for i, name in enumerate(_GEOM) if name not in ("cph", "cpw")]
    + ["let cph = pi(18u); let cpw = pi(19u);"]
    + [f"let {t}_off = pu({w}u); let {t}_s0 = pu({w + 1}u); let {t}_s1 = pu({w + 2}u); "
       f"let {t}_s2 = pu({w + 3}u); let {t}_s3 = pu({w + 4}u);" for t, w in _TENSORS.items()]
)


@dataclass(frozen=True)
class Geometry:
    N: int
    C: int
    H: int
    W: int
    OC: int
    OH: int
    OW: int
    KH: int
    KW: int
    stride: tuple
    padding: tuple
    dilation: tuple
    groups: int

    @property
    def Cg(self):
        return self.C // self.groups

    @property
    def OCg(self):
        return self.OC // self.groups

    def params(self, x, w, y, o=None, BK: int = 8) -> codegen.Params:
        p = codegen.Params()
        p.u(0, 0, 0, 0, 0, 0, 0, 0)  # GEMM words, filled by the caller via set_gemm
        p.u(self.N, self.Cg, self.H, self.W, self.OH, self.OW, self.KH, self.KW,
            self.stride[0], self.stride[1])
        p.i(self.padding[0], self.padding[1])
        p.u(self.dilation[0], self.dilation[1], self.OCg)
        for t in (x, w, y, o):
            if t is None:
                p.u(0, 0, 0, 0, 0)
            else:
                strides = list(t.stride()) + [0] * (4 - t.dim())
                p.u(t.elem_offset, *strides[:4])
        p.u(0)  # bias offset (word 43), set by the caller
        p.u(*radix_steps(self, BK))  # words 44..55
        return p


def set_gemm(p: codegen.Params, M: int, N: int, K: int, alpha: float = 1.0, beta: float = 0.0, ksplit: int = 0):
    import struct

    p.values[0:6] = [M, N, K, struct.unpack("<I", struct.pack("<f", alpha))[0],
                     struct.unpack("<I", struct.pack("<f", beta))[0], ksplit]
    p.fmt[0:6] = ["I"] * 6


# ---------------------------------------------------------------------------------------------
# K indices without divisions. Every load slot walks K in steps of BK; instead of splitting each new
# K index into (c, kh, kw) with two divisions and two remainders (dozens of instructions on GPUs), a
# slot splits its first index once and then adds BK, itself split into the same mixed radix on the
# host, digit by digit with carries.
_RADIX_WORDS = {"ckk": 44, "kkc_fwd": 47, "kkc_dgrad": 50, "nhw": 53}
_RADIX_BASES = {  # least significant digit first; the last digit is unbounded
    "ckk": ("cKW", "cKH"), "kkc_fwd": ("cCg", "cKW"), "kkc_dgrad": ("cOCg", "cKW"), "nhw": ("cOW", "cOH"),
}


def radix_steps(g: "Geometry", BK: int) -> list[int]:
    """BK written in each radix, three words per radix, in _RADIX_WORDS order."""
    words = []
    for bases in ((g.KW, g.KH), (g.Cg, g.KW), (g.OCg, g.KW), (g.OW, g.OH)):
        b0, b1 = bases
        words += [BK % b0, (BK // b0) % b1, BK // (b0 * b1)]
    return words


def _digits_init(p: str, e: int, radix: str) -> list[str]:
    b0, b1 = _RADIX_BASES[radix]
    return [f"var {p}_d0_{e} = 0u; var {p}_d1_{e} = 0u; var {p}_d2_{e} = 0u;",
            f"{{ let g0 = k_lo + {p}_kl{e}; {p}_d0_{e} = g0 % {b0}; let gr = g0 / {b0}; "
            f"{p}_d1_{e} = gr % {b1}; {p}_d2_{e} = gr / {b1}; }}"]


def _digits_advance(p: str, e: int, radix: str) -> list[str]:
    b0, b1 = _RADIX_BASES[radix]
    w = _RADIX_WORDS[radix]
    d0, d1, d2 = f"{p}_d0_{e}", f"{p}_d1_{e}", f"{p}_d2_{e}"
    return [f"{d0} = {d0} + pu({w}u); var cy = 0u; if ({d0} >= {b0}) {{ {d0} = {d0} - {b0}; cy = 1u; }}",
            f"{d1} = {d1} + pu({w + 1}u) + cy; cy = 0u; if ({d1} >= {b1}) {{ {d1} = {d1} - {b1}; cy = 1u; }}",
            f"{d2} = {d2} + pu({w + 2}u) + cy;"]


# ---------------------------------------------------------------------------------------------
# Operands. Each knows how to fetch element (row, k) of its GEMM operand from a 4-D tensor.
@dataclass(frozen=True)
class ImageForward(Operand):
    """Forward im2col: row = output position j = (n, oh, ow), k = (c, kh, kw) or (kh, kw, c)."""
    binding: str
    wgsl: str
    k_order: str      # "ckk" (NCHW) or "kkc" (NHWC)
    fastest: str
    gather = True     # padding makes every load conditional

    @property
    def key(self):
        return ("im_fwd", self.binding, self.wgsl, self.k_order, self.fastest)

    @property
    def radix(self):
        return "ckk" if self.k_order == "ckk" else "kkc_fwd"

    def hoist(self, p, e, row):
        return [f"let {p}_n{e} = ({row}) / (cOH * cOW); let {p}_r{e} = ({row}) % (cOH * cOW);",
                f"let {p}_ih{e} = i32(({p}_r{e} / cOW) * csh) - cph; let {p}_iw{e} = i32(({p}_r{e} % cOW) * csw) - cpw;",
                f"let {p}_xb{e} = x_off + {p}_n{e} * x_s0 + bz * cCg * x_s1;"] + _digits_init(p, e, self.radix)

    def advance(self, p, e):
        return _digits_advance(p, e, self.radix)

    def load(self, p, e, row, k):
        d0, d1, d2 = f"{p}_d0_{e}", f"{p}_d1_{e}", f"{p}_d2_{e}"
        kc, kh, kw = (d2, d1, d0) if self.k_order == "ckk" else (d0, d2, d1)
        ih, iw = f"({p}_ih{e} + i32({kh} * cdh))", f"({p}_iw{e} + i32({kw} * cdw))"
        cond = f"{row} < {p}_rows && {k} < K && {ih} >= 0 && {ih} < i32(cH) && {iw} >= 0 && {iw} < i32(cW)"
        val = f"f32({self.binding}[{p}_xb{e} + {kc} * x_s1 + u32({ih}) * x_s2 + u32({iw}) * x_s3])"
        return cond, val


@dataclass(frozen=True)
class Weight(Operand):
    """The weight [OC, Cg, KH, KW] seen as rows x K for forward (row = oc, k in the image's k order)
    or for grad-input (row = c, k = (oc, kh, kw) or (kh, kw, oc))."""
    binding: str
    wgsl: str
    role: str         # "fwd" or "dgrad"
    k_order: str
    fastest: str = "k"

    @property
    def key(self):
        return ("weight", self.binding, self.wgsl, self.role, self.k_order, self.fastest)

    @property
    def radix(self):
        if self.k_order == "ckk":
            return "ckk"
        return "kkc_fwd" if self.role == "fwd" else "kkc_dgrad"

    def hoist(self, p, e, row):
        if self.role == "fwd":
            base = [f"let {p}_wb{e} = w_off + (bz * cOCg + ({row})) * w_s0;"]
        else:
            base = [f"let {p}_wb{e} = w_off + bz * cOCg * w_s0 + ({row}) * w_s1;"]
        return base + _digits_init(p, e, self.radix)

    def advance(self, p, e):
        return _digits_advance(p, e, self.radix)

    def load(self, p, e, row, k):
        d0, d1, d2 = f"{p}_d0_{e}", f"{p}_d1_{e}", f"{p}_d2_{e}"
        top, kh, kw = (d2, d1, d0) if self.k_order == "ckk" else (d0, d2, d1)
        stride = "w_s1" if self.role == "fwd" else "w_s0"   # the K-side channel: c (fwd) or oc (dgrad)
        off = f"{top} * {stride} + {kh} * w_s2 + {kw} * w_s3"
        return f"{row} < {p}_rows && {k} < K", f"f32({self.binding}[{p}_wb{e} + {off}])"


@dataclass(frozen=True)
class ImageGradInput(Operand):
    """grad-input gather from dy: row = input position (n, ih, iw), k = (oc, kh, kw) or (kh, kw, oc);
    dy[n, oc, oh, ow] contributes where ih = oh*s - p + kh*d, i.e. oh = (ih + p - kh*d) / s exactly."""
    binding: str
    wgsl: str
    k_order: str
    fastest: str
    unit_stride: bool = False   # stride 1: every tap lands, so no divisibility test and no division
    # NCHW, stride 1, W a multiple of 4: a load slot takes four neighbouring rows -- positions iw .. iw+3
    # of one input row, which read ow .. ow+3 of one dy row -- so the tap's row test and address are
    # worked out once for four loads (a 3-channel stem grad-input is nothing but these loads). Only
    # set when this operand's rows and K are whole tiles, so it holds even where the other side (3
    # channels in a 4-row tile) needs the bounds checks.
    four: bool = False
    gather = True

    @property
    def vec(self) -> int:
        return 4 if self.four else 1

    @property
    def whole_tiles(self) -> bool:
        return self.four

    @property
    def key(self):
        return ("im_dgrad", self.binding, self.wgsl, self.k_order, self.fastest, self.unit_stride, self.four)

    @property
    def radix(self):
        return "ckk" if self.k_order == "ckk" else "kkc_dgrad"

    def hoist(self, p, e, row):
        return [f"let {p}_n{e} = ({row}) / (cH * cW); let {p}_r{e} = ({row}) % (cH * cW);",
                f"let {p}_th{e} = i32({p}_r{e} / cW) + cph; let {p}_tw{e} = i32({p}_r{e} % cW) + cpw;",
                f"let {p}_yb{e} = y_off + {p}_n{e} * y_s0 + bz * cOCg * y_s1;"] + _digits_init(p, e, self.radix)

    def advance(self, p, e):
        return _digits_advance(p, e, self.radix)

    def load(self, p, e, row, k):
        d0, d1, d2 = f"{p}_d0_{e}", f"{p}_d1_{e}", f"{p}_d2_{e}"
        ko, kh, kw = (d2, d1, d0) if self.k_order == "ckk" else (d0, d2, d1)
        dec = f"let nh = {p}_th{e} - i32({kh} * cdh); let nw = {p}_tw{e} - i32({kw} * cdw);"
        if self.unit_stride:
            dec += " let oh = nh; let ow = nw;"
            cond = f"{row} < {p}_rows && {k} < K && nh >= 0 && nw >= 0 && oh < i32(cOH) && ow < i32(cOW)"
        else:  # integer division by a runtime value costs dozens of instructions per load
            dec += " let oh = nh / i32(csh); let ow = nw / i32(csw);"
            cond = (f"{row} < {p}_rows && {k} < K && nh >= 0 && nw >= 0 && nh % i32(csh) == 0 && nw % i32(csw) == 0"
                    f" && oh < i32(cOH) && ow < i32(cOW)")
        val = f"f32({self.binding}[{p}_yb{e} + {ko} * y_s1 + u32(oh) * y_s2 + u32(ow) * y_s3])"
        return cond, val, dec

    def load_vec(self, p, e, row, k):
        """Rows row .. row+3 at one k (whole tiles only): (statements, vec4 value); taps that fall
        outside dy read as zero."""
        d0, d1, d2 = f"{p}_d0_{e}", f"{p}_d1_{e}", f"{p}_d2_{e}"
        ko, kh, kw = (d2, d1, d0) if self.k_order == "ckk" else (d0, d2, d1)
        lets = f"let oh = {p}_th{e} - i32({kh} * cdh); let ow = {p}_tw{e} - i32({kw} * cdw); "
        return _four_in_a_row(self.binding, lets, "oh", "cOH", f"{p}_yb{e} + {ko} * y_s1", "y_s2",
                              "ow", "", "cOW", "y_s3")


@dataclass(frozen=True)
class GradOutRows(Operand):
    """grad-weight operand with row = channel and k = (n, oh, ow): dy (A, row = oc), or -- for 1x1,
    unit-stride, unpadded layers, where x has dy's spatial size -- x itself (B, row = c, `tensor="x"`).
    Only the tile edges need bounds checks (no padding). With `vec_binding` (NCHW, OH*OW a multiple of
    4, aligned), four consecutive k -- four neighbouring positions of one image -- are one 16-byte load."""
    binding: str
    wgsl: str
    fastest: str
    vec_binding: str | None = None
    tensor: str = "y"

    @property
    def vec(self) -> int:
        return 4 if self.vec_binding else 1

    @property
    def key(self):
        return ("chan_rows", self.binding, self.wgsl, self.fastest, self.vec_binding, self.tensor)

    def hoist(self, p, e, row):
        t, groups = self.tensor, "cOCg" if self.tensor == "y" else "cCg"
        return [f"let {p}_yb{e} = {t}_off + (bz * {groups} + ({row})) * {t}_s1;"] + _digits_init(p, e, "nhw")

    def advance(self, p, e):
        return _digits_advance(p, e, "nhw")

    def _address(self, p, e):
        ow, oh, kn, t = f"{p}_d0_{e}", f"{p}_d1_{e}", f"{p}_d2_{e}", self.tensor
        return f"{p}_yb{e} + {kn} * {t}_s0 + {oh} * {t}_s2 + {ow} * {t}_s3"

    def load_vec(self, p, e, row, k):
        return f"{self.vec_binding}[({self._address(p, e)}) >> 2u]"

    def load(self, p, e, row, k):
        return f"{row} < {p}_rows && {k} < K", f"f32({self.binding}[{self._address(p, e)}])"


@dataclass(frozen=True)
class ImagePositions(Operand):
    """1x1, unit-stride, unpadded layers in NCHW: row = position (n, p) of an image whose H*W block is
    contiguous, k = channel, element at t_off + n*t_s0 + p + k*t_s1 -- x for forward, dy for grad-input.
    One product over all N*H*W positions instead of one per image: with 4x4 images a per-image
    product is 16 columns wide, a quarter of a tile. Consecutive threads walk positions; with
    `vec_binding` (H*W a multiple of 4, aligned), four neighbouring positions are one 16-byte load."""
    binding: str
    wgsl: str
    tensor: str       # "x" (forward: H x W) or "y" (grad-input: OH x OW)
    vec_binding: str | None = None
    fastest: str = "row"
    # False: the H*W block is not contiguous (a stride-2 shortcut reading x[:, :, ::2, ::2] in place),
    # so the position splits into (n, y, x) with their own strides.
    flat: bool = True

    @property
    def vec(self) -> int:
        return 4 if self.vec_binding else 1

    @property
    def key(self):
        return ("positions", self.binding, self.wgsl, self.tensor, self.vec_binding, self.flat)

    def hoist(self, p, e, row):
        t = self.tensor
        h, w = ("cH", "cW") if t == "x" else ("cOH", "cOW")
        groups = "cCg" if t == "x" else "cOCg"
        base = f"{t}_off + (({row}) / ({h} * {w})) * {t}_s0 + bz * {groups} * {t}_s1"
        if self.flat:
            return [f"let {p}_pb{e} = {base} + ({row}) % ({h} * {w});"]
        return [f"let {p}_r{e} = ({row}) % ({h} * {w});",
                f"let {p}_pb{e} = {base} + ({p}_r{e} / {w}) * {t}_s2 + ({p}_r{e} % {w}) * {t}_s3;"]

    def load_vec(self, p, e, row, k):
        return f"{self.vec_binding}[({p}_pb{e} + ({k}) * {self.tensor}_s1) >> 2u]"

    def load(self, p, e, row, k):
        return f"{row} < {p}_rows && {k} < K", f"f32({self.binding}[{p}_pb{e} + ({k}) * {self.tensor}_s1])"


def pointwise_geometry(g: "Geometry") -> bool:
    """1x1 kernel, unit stride, no padding: every output position reads exactly its own input position."""
    return (g.KH == 1 and g.KW == 1 and tuple(g.stride) == (1, 1) and tuple(g.padding) == (0, 0)
            and g.H == g.OH and g.W == g.OW)


def _positions_vec_ok(t: WgpuTensor, g: "Geometry") -> bool:
    """Whether ImagePositions may read `t` four positions at a time."""
    s0, s1, s2, s3 = t.stride()
    hw = t.shape[2] * t.shape[3]
    return (t.dtype == torch.float32 and hw % 4 == 0 and s3 == 1 and s2 == t.shape[3]
            and s0 % 4 == 0 and s1 % 4 == 0 and t.elem_offset % 4 == 0)


def _positions_ok(t: WgpuTensor) -> bool:
    """Whether the H*W block of `t` is contiguous (ImagePositions' addressing)."""
    s0, s1, s2, s3 = t.stride()
    return (s3 == 1 or t.shape[3] == 1) and (s2 == t.shape[3] or t.shape[2] == 1)


@dataclass(frozen=True)
class ImageGradWeight(Operand):
    """grad-weight B operand: x with row = q = (c, kh, kw) or (kh, kw, c) and k = (n, oh, ow)."""
    binding: str
    wgsl: str
    q_order: str
    fastest: str
    # NCHW with OW a multiple of 4: a load slot takes four neighbouring k -- four positions of one
    # output row -- so the row test, the address and the carries are worked out once for four loads.
    four: bool = False
    gather = True

    @property
    def vec(self) -> int:
        return 4 if self.four else 1

    @property
    def key(self):
        return ("im_wgrad", self.binding, self.wgsl, self.q_order, self.fastest, self.four)

    def hoist(self, p, e, row):
        if self.q_order == "ckk":
            dec = (f"let {p}_c{e} = ({row}) / (cKH * cKW); let {p}_qr{e} = ({row}) % (cKH * cKW); "
                   f"let {p}_kh{e} = {p}_qr{e} / cKW; let {p}_kw{e} = {p}_qr{e} % cKW;")
        else:
            dec = (f"let {p}_kh{e} = ({row}) / (cKW * cCg); let {p}_qr{e} = ({row}) % (cKW * cCg); "
                   f"let {p}_kw{e} = {p}_qr{e} / cCg; let {p}_c{e} = {p}_qr{e} % cCg;")
        return [dec,
                f"let {p}_xb{e} = x_off + (bz * cCg + {p}_c{e}) * x_s1;",
                f"let {p}_oh{e} = i32({p}_kh{e} * cdh) - cph; let {p}_ow{e} = i32({p}_kw{e} * cdw) - cpw;"
                ] + _digits_init(p, e, "nhw")

    def advance(self, p, e):
        return _digits_advance(p, e, "nhw")

    def load(self, p, e, row, k):
        ow, oh, kn = f"{p}_d0_{e}", f"{p}_d1_{e}", f"{p}_d2_{e}"
        ih, iw = f"(i32({oh} * csh) + {p}_oh{e})", f"(i32({ow} * csw) + {p}_ow{e})"
        cond = f"{row} < {p}_rows && {k} < K && {ih} >= 0 && {ih} < i32(cH) && {iw} >= 0 && {iw} < i32(cW)"
        val = f"f32({self.binding}[{p}_xb{e} + {kn} * x_s0 + u32({ih}) * x_s2 + u32({iw}) * x_s3])"
        return cond, val

    def load_vec(self, p, e, row, k):
        """Four positions (ow .. ow+3) of one output row: (statements, vec4 value). Only the column test
        differs between them; padding columns read as zero."""
        ow, oh, kn = f"{p}_d0_{e}", f"{p}_d1_{e}", f"{p}_d2_{e}"
        lets = f"let ih = i32({oh} * csh) + {p}_oh{e}; let iw = i32({ow} * csw) + {p}_ow{e}; "
        return _four_in_a_row(self.binding, lets, "ih", "cH", f"{p}_xb{e} + {kn} * x_s0", "x_s2",
                              "iw", " * i32(csw)", "cW", "x_s3")


def _four_in_a_row(binding, lets, row, rows, base, row_stride, col, step, cols, col_stride):
    """WGSL for four elements of one image row, at columns col + q*step (q = 0..3; `step` a WGSL
    factor such as " * i32(csw)", or "" for neighbours): (statements, "v"). After the statements
    `lets` (which define row and col), the row test and address are worked out once for the four
    loads; an element outside the image (padding) reads as zero."""
    pre = (lets + f"var v = vec4<f32>(0.0); if ({row} >= 0 && {row} < i32({rows})) {{ "
           f"let rb = {base} + u32({row}) * {row_stride}; ")
    for q in range(4):
        cq = f"({col} + {q}{step})" if q else col
        pre += f"if ({cq} >= 0 && {cq} < i32({cols})) {{ v[{q}] = f32({binding}[rb + u32({cq}) * {col_stride}]); }} "
    return pre + "} ", "v"


# ---------------------------------------------------------------------------------------------
# Epilogues writing images and weights.
class ImageEpilogue(Epilogue):
    """Writes a GEMM result into a 4-D image `o` (strides o_s0..3) of spatial size OHxOW (or HxW).
    channels == "rows": C[ch, pos] (NCHW orientation), "cols": C[pos, ch] (NHWC orientation)."""

    def __init__(self, out_wgsl, store, channels: str, spatial: str, bias: bool, bindings: str, relu: bool = False,
                 vec_out: str | None = None):
        super().__init__(0, out_wgsl, store, bias="row" if (bias and channels == "rows") else ("col" if bias else None),
                         cin_first=_BIAS, relu=relu, bindings=bindings, extra_key=(channels, spatial), vec_out=vec_out)
        self.channels = channels
        self.sh, self.sw = ("cOH", "cOW") if spatial == "out" else ("cH", "cW")
        self.chan_per_group = "cOCg" if spatial == "out" else "cCg"

    def setup(self):
        lines = []
        if self.bias is not None:
            lines.append(f"let bias_base = pu({_BIAS}u) + bz * {self.chan_per_group};")
        return lines

    def _pos(self, v, tag):
        return [f"let pn{tag} = ({v}) / ({self.sh} * {self.sw}); let pr{tag} = ({v}) % ({self.sh} * {self.sw});",
                f"let po{tag} = o_off + pn{tag} * o_s0 + (pr{tag} / {self.sw}) * o_s2 + (pr{tag} % {self.sw}) * o_s3;"]

    def row_setup(self, gm):
        if self.channels == "rows":
            return [f"let c_row = (bz * {self.chan_per_group} + ({gm})) * o_s1;"]
        return self._pos(gm, "_r")

    def col_setup(self, gn, tag):
        if self.channels == "rows":
            return self._pos(gn, tag)
        return [f"let cc{tag} = (bz * {self.chan_per_group} + ({gn})) * o_s1;"]

    def address(self, gm, gn, tag):
        if self.channels == "rows":
            return f"c_row + po{tag}"
        return f"po_r + cc{tag}"


class WeightEpilogue(Epilogue):
    """Writes grad-weight C[oc, q] into o = dw[OC, Cg, KH, KW] (q in the operand's order)."""

    def __init__(self, out_wgsl, store, q_order: str, bindings: str):
        super().__init__(0, out_wgsl, store, bindings=bindings, extra_key=(q_order,))
        self.q_order = q_order

    def setup(self):
        return []

    def row_setup(self, gm):
        return [f"let c_row = o_off + (bz * cOCg + ({gm})) * o_s0;"]

    def col_setup(self, gn, tag):
        if self.q_order == "ckk":
            return [f"let qo{tag} = (({gn}) / (cKH * cKW)) * o_s1 + ((({gn}) % (cKH * cKW)) / cKW) * o_s2 + (({gn}) % cKW) * o_s3;"]
        return [f"let qo{tag} = (({gn}) / (cKW * cCg)) * o_s2 + ((({gn}) % (cKW * cCg)) / cCg) * o_s3 + (({gn}) % cCg) * o_s1;"]

    def address(self, gm, gn, tag):
        return f"c_row + qo{tag}"


class SlicesEpilogue(Epilogue):
    """Writes a split-K slice's C[m, n] into o = f32 partial products [slices * groups, M, N] (slab
    wid.z), for the caller to sum: split grad-weights and grad-inputs."""

    def __init__(self, out_wgsl, store, bindings: str):
        super().__init__(0, out_wgsl, store, bindings=bindings, extra_key=("slices",))

    def setup(self):
        return []

    def row_setup(self, gm):
        return [f"let c_row = o_off + wid.z * o_s0 + ({gm}) * N;"]

    def col_setup(self, gn, tag):
        return []

    def address(self, gm, gn, tag):
        return f"c_row + ({gn})"


# ---------------------------------------------------------------------------------------------
def _config(kind, M: int, N: int, K: int, batch: int, run) -> TileConfig:
    from navitrain.wgpu.kernels.gemm_tuning import pick

    return pick(kind, M, N, K, batch, run)


_WSTRIDED = 56  # parameter words of a weight read as a plain matrix: offset, row stride, k stride, group stride


def _k_contiguous(w: WgpuTensor, g: "Geometry", order: str) -> bool:
    """Whether the weight's (c, kh, kw) -- or (kh, kw, c) -- block is contiguous, so the weight is a plain
    matrix [OC, K] the GEMM can read with 16-byte loads and no index arithmetic."""
    s0, s1, s2, s3 = w.stride()
    if order == "ckk":
        return s3 == 1 and s2 == g.KW and s1 == g.KH * g.KW
    return s1 == 1 and s3 == g.Cg and s2 == g.KW * g.Cg


def _strided_weight(rt, w, rows_stride, batch_stride, types: list, heaps: list, fastest="k", vec_ok=True):
    """A Strided operand over a weight matrix (binding b2), with a vec4 view appended when aligned."""
    vec = None
    if vec_ok and rt.stypes[w.dtype].wgsl == "f32" and w.elem_offset % 4 == 0 and rows_stride % 4 == 0 \
            and batch_stride % 4 == 0:
        vec = f"b{len(types)}"
        types.append("vec4<f32>")
        heaps.append(w._ws.heap)
    return Strided(_WSTRIDED, "b2", rt.stypes[w.dtype].wgsl, fastest, vec), (w.elem_offset, rows_stride, 1, batch_stride)


def _image_vec_out(out: WgpuTensor, nhwc: bool, groups: int, types: list, heaps: list) -> str | None:
    """Binds the output image a second time as vec4s when four neighbouring GEMM columns -- four
    positions along a row (NCHW) or four channels (NHWC) -- are always contiguous and 16-byte aligned."""
    if out.dtype != torch.float32 or out.elem_offset % 4:
        return None
    s0, s1, s2, s3 = out.stride()
    if nhwc:
        ok = groups == 1 and s1 == 1 and out.shape[1] % 4 == 0 and s0 % 4 == 0 and s2 % 4 == 0 and s3 % 4 == 0
    else:
        ok = out.shape[3] % 4 == 0 and s3 == 1 and s0 % 4 == 0 and s1 % 4 == 0 and s2 % 4 == 0
    if not ok:
        return None
    types.append("vec4<f32>")
    heaps.append(out._ws.heap)
    return f"b{len(types) - 1}"


# The three passes pick their formulation here: 1x1 layers as plain products (conv1x1.py), depthwise
# layers by direct kernels (conv_depthwise.py, timed against the implicit GEMM where the tuner runs),
# strided grad-input by output phase, everything else the implicit-GEMM kernels below (whose tuner
# calls them again with each candidate tile).
def forward(x: WgpuTensor, w: WgpuTensor, bias: WgpuTensor | None, g: Geometry, out: WgpuTensor,
            relu: bool = False) -> WgpuTensor:
    same = x.dtype == w.dtype == out.dtype and (bias is None or bias.dtype == x.dtype)
    if not relu and same and conv1x1.eligible(g) and conv1x1.forward(x, w, bias, g, out):
        return out
    if not relu and conv_depthwise.eligible(g, x, w, bias, out) and conv_depthwise.use_direct(
            "fwd", g, out, lambda: conv_depthwise.forward(x, w, bias, g, out),
            lambda: _implicit_forward(x, w, bias, g, out)):
        return conv_depthwise.forward(x, w, bias, g, out)
    return _implicit_forward(x, w, bias, g, out, relu)


def grad_input(dy: WgpuTensor, w: WgpuTensor, g: Geometry, dx: WgpuTensor) -> WgpuTensor:
    if dy.dtype == w.dtype == dx.dtype and conv1x1.eligible(g) and conv1x1.grad_input(dy, w, g, dx):
        return dx
    # Depthwise: any kernel size at stride 1 (the output phases below come here too), odd square at 2.
    if (conv_depthwise.eligible(g, dy, w, dx, any_kernel=tuple(g.stride) == (1, 1))
            and conv_depthwise.use_direct("dgrad", g, dx, lambda: conv_depthwise.grad_input(dy, w, g, dx),
                                          lambda: grad_input(dy, w, g, dx))):
        return conv_depthwise.grad_input(dy, w, g, dx)
    if tuple(g.stride) != (1, 1) and tuple(g.dilation) == (1, 1):
        return _grad_input_by_phase(dy, w, g, dx)
    return _implicit_grad_input(dy, w, g, dx)


def grad_weight(dy: WgpuTensor, x: WgpuTensor, g: Geometry, dw: WgpuTensor) -> WgpuTensor:
    if dy.dtype == x.dtype == dw.dtype and conv1x1.eligible(g):
        conv1x1.grad_weight(dy, x, g, dw)
        return dw
    if conv_depthwise.eligible(g, dy, x, dw) and conv_depthwise.use_direct(
            "wgrad", g, x, lambda: conv_depthwise.grad_weight(dy, x, g, dw), lambda: _implicit_grad_weight(dy, x, g, dw)):
        return conv_depthwise.grad_weight(dy, x, g, dw)
    return _implicit_grad_weight(dy, x, g, dw)


def _implicit_forward(x: WgpuTensor, w: WgpuTensor, bias: WgpuTensor | None, g: Geometry, out: WgpuTensor,
                      relu: bool = False, cfg: TileConfig | None = None) -> WgpuTensor:
    rt = runtime()
    nhwc = is_channels_last(out)
    st_x, st_w, st_o = rt.stypes[x.dtype], rt.stypes[w.dtype], rt.stypes[out.dtype]
    K = g.Cg * g.KH * g.KW
    P = g.N * g.OH * g.OW
    if nhwc:
        M, N = P, g.OCg
    else:
        M, N = g.OCg, P
    positions = not nhwc and pointwise_geometry(g)
    flat = positions and _positions_ok(x)
    kind = ("conv_fwd", nhwc) + ((("1x1",) if flat else ("1x1-strided",)) if positions else ())
    cfg = cfg or _config(kind, M, N, K, g.groups, lambda c: _implicit_forward(x, w, bias, g, out, relu, c))
    guard = M % cfg.BM != 0 or N % cfg.BN != 0 or K % cfg.BK != 0
    types = [st_o.wgsl, st_x.wgsl, st_w.wgsl] + ([rt.stypes[bias.dtype].wgsl] if bias is not None else [])
    heaps = [out._ws.heap, x._ws.heap, w._ws.heap] + ([bias._ws.heap] if bias is not None else [])
    x_vec = None
    if flat and not guard and _positions_vec_ok(x, g):
        x_vec = f"b{len(types)}"
        types.append("vec4<f32>")
        heaps.append(x._ws.heap)
    wparams = None
    order = "kkc" if nhwc else "ckk"
    if _k_contiguous(w, g, order):
        W, wparams = _strided_weight(rt, w, w.stride(0), g.OCg * w.stride(0), types, heaps, vec_ok=not guard)
    else:
        W = Weight("b2", st_w.wgsl, "fwd", order, "k")
    vec_out = _image_vec_out(out, nhwc, g.groups, types, heaps)
    bindings = codegen.bindings(types)
    if nhwc:  # rows = positions, cols = out channels, k = (kh, kw, c)
        A, B = ImageForward("b1", st_x.wgsl, "kkc", "k"), W
        E = ImageEpilogue(st_o.wgsl, _Store(st_o), "cols", "out", bias is not None, bindings, relu, vec_out)
    elif positions:   # rows = out channels, cols = positions, k = c, no gather
        A, B = W, ImagePositions("b1", st_x.wgsl, "x", x_vec, flat=flat)
        E = ImageEpilogue(st_o.wgsl, _Store(st_o), "rows", "out", bias is not None, bindings, relu, vec_out)
    else:     # rows = out channels, cols = positions, k = (c, kh, kw)
        A, B = W, ImageForward("b1", st_x.wgsl, "ckk", "row")
        E = ImageEpilogue(st_o.wgsl, _Store(st_o), "rows", "out", bias is not None, bindings, relu, vec_out)
    params = g.params(x, w, None, out, cfg.BK)
    set_gemm(params, M, N, K)
    if bias is not None:
        params.values[_BIAS] = bias.elem_offset
    if wparams is not None:
        params.u(*wparams)
    # Keys carry dtypes, not just WGSL element types: bfloat16 is stored as f32 but rounded on store.
    launch(("conv_fwd", nhwc, x.dtype, w.dtype, out.dtype, bias.dtype if bias is not None else None), "conv2d_forward", cfg, A, B, E, tuple(heaps), params, M, N, g.groups, guard,
           preamble=PREAMBLE)
    return out


def _implicit_grad_input(dy: WgpuTensor, w: WgpuTensor, g: Geometry, dx: WgpuTensor,
                         cfg: TileConfig | None = None) -> WgpuTensor:
    rt = runtime()
    nhwc = is_channels_last(dx)
    st_y, st_w, st_o = rt.stypes[dy.dtype], rt.stypes[w.dtype], rt.stypes[dx.dtype]
    K = g.OCg * g.KH * g.KW
    P = g.N * g.H * g.W
    M, N = (P, g.Cg) if nhwc else (g.Cg, P)
    positions = not nhwc and pointwise_geometry(g)
    flat = positions and _positions_ok(dy)
    kind = ("conv_dgrad", nhwc) + ((("1x1",) if flat else ("1x1-strided",)) if positions else ())
    cfg = cfg or _config(kind, M, N, K, g.groups, lambda c: _implicit_grad_input(dy, w, g, dx, c))
    guard = M % cfg.BM != 0 or N % cfg.BN != 0 or K % cfg.BK != 0
    # A tile with slices (gemm_tuning.THIN_DGRAD_SPLITS, for a few input channels): each slice of K
    # writes f32 partial products [slices, C, N*H*W], summed and laid out into dx afterwards.
    slices = 1
    if cfg.splits > 1 and not nhwc and not positions and g.groups == 1:
        kslice, slices = k_slices(K, cfg.splits, cfg.BK)
    partial = empty([slices, M, N], torch.float32) if slices > 1 else None
    out = partial if partial is not None else dx
    types = [rt.stypes[out.dtype].wgsl, st_y.wgsl, st_w.wgsl]
    heaps = [out._ws.heap, dy._ws.heap, None]
    y_vec = None
    if flat and not guard and _positions_vec_ok(dy, g):
        y_vec = f"b{len(types)}"
        types.append("vec4<f32>")
        heaps.append(dy._ws.heap)
    wparams = None
    # The weight read as [c][ko, kh, kw] (NCHW) or [c][kh, kw, ko] (NHWC, one group): a transposed copy
    # (weights are small) turns the gather into a plain, vectorisable matrix.
    if not nhwc:
        wt = w.transpose(0, 1).contiguous()                    # [Cg, OC, KH, KW]
        heaps[2] = wt._ws.heap
        W, wparams = _strided_weight(rt, wt, wt.stride(0), g.OCg * g.KH * g.KW, types, heaps, vec_ok=not guard)
    elif g.groups == 1:
        wt = w.permute(1, 2, 3, 0).contiguous()                # [C, KH, KW, OC]
        heaps[2] = wt._ws.heap
        W, wparams = _strided_weight(rt, wt, wt.stride(0), 0, types, heaps, vec_ok=not guard)
    else:
        heaps[2] = w._ws.heap
        W = Weight("b2", st_w.wgsl, "dgrad", "kkc", "k")
    vec_out = _image_vec_out(dx, nhwc, g.groups, types, heaps) if partial is None else None
    bindings = codegen.bindings(types)
    unit = tuple(g.stride) == (1, 1)
    if nhwc:
        A, B = ImageGradInput("b1", st_y.wgsl, "kkc", "k", unit), W
        E = ImageEpilogue(st_o.wgsl, _Store(st_o), "cols", "in", False, bindings, vec_out=vec_out)
    else:
        A = W
        B = ImagePositions("b1", st_y.wgsl, "y", y_vec, flat=flat) if positions else ImageGradInput(
            "b1", st_y.wgsl, "ckk", "row", unit, four=unit and g.W % 4 == 0 and N % cfg.BN == 0 and K % cfg.BK == 0)
        if partial is None:
            E = ImageEpilogue(st_o.wgsl, _Store(st_o), "rows", "in", False, bindings, vec_out=vec_out)
        else:
            st_f = rt.stypes[torch.float32]
            E = SlicesEpilogue(st_f.wgsl, _Store(st_f), bindings)
    params = g.params(None, w, dy, out, cfg.BK)
    set_gemm(params, M, N, K, ksplit=kslice if partial is not None else 0)
    if wparams is not None:
        params.u(*wparams)
    launch(("conv_dgrad", nhwc, dy.dtype, w.dtype, out.dtype), "conv2d_grad_input" if partial is None else
           "conv2d_grad_input_split", cfg, A, B, E, tuple(heaps), params, M, N, g.groups, guard,
           split_k=kslice if partial is not None else 0, K=K, preamble=PREAMBLE)
    if partial is not None:
        from navitrain.wgpu.kernels.copy import copy_into
        from navitrain.wgpu.kernels.reduction import reduce
        from navitrain.wgpu.tensor import wrap

        summed = reduce(partial, [0], False, "sum", torch.float32)      # [C, N*H*W]
        copy_into(dx, wrap(summed._ws, (g.N, g.C, g.H, g.W), (g.H * g.W, P, g.W, 1), 0, torch.float32))
    return dx


def _grad_input_by_phase(dy: WgpuTensor, w: WgpuTensor, g: Geometry, dx: WgpuTensor) -> WgpuTensor:
    """Grad-input of a strided convolution as stride-1 grad-inputs, one per output phase.

    With stride s, input row ih = s*i + a receives gradient only through the taps kh = kh0 + s*t with
    kh0 = (a + p) mod s, from output row oh = i + (a + p - kh0)/s - t: a stride-1 grad-input with the
    sub-kernel w[..., kh0::s] and padding (a + p - kh0)/s, written into dx[..., a::s]. Gathering dy
    directly for every (kh, kw) instead would skip (s^2 - 1)/s^2 of the loads (3/4 at stride 2) after
    paying for them, which held strided layers at 15-16% of cuBLAS on the H200 (run 7)."""
    from navitrain.wgpu.kernels.copy import fill

    (sh, sw), (ph, pw) = g.stride, g.padding
    for a in range(min(sh, g.H)):
        for b in range(min(sw, g.W)):
            kh0, kw0 = (a + ph) % sh, (b + pw) % sw
            taps_h, taps_w = len(range(kh0, g.KH, sh)), len(range(kw0, g.KW, sw))
            part = dx[:, :, a::sh, b::sw]
            if taps_h == 0 or taps_w == 0:   # no tap reaches these inputs
                fill(part, 0.0)
                continue
            sub = Geometry(g.N, g.C, part.shape[2], part.shape[3], g.OC, g.OH, g.OW, taps_h, taps_w, (1, 1),
                           ((a + ph - kh0) // sh, (b + pw - kw0) // sw), (1, 1), g.groups)
            grad_input(dy, w[:, :, kh0::sh, kw0::sw], sub, part)
    return dx


def _implicit_grad_weight(dy: WgpuTensor, x: WgpuTensor, g: Geometry, dw: WgpuTensor,
                          cfg: TileConfig | None = None) -> WgpuTensor:
    rt = runtime()
    nhwc = is_channels_last(x)
    st_y, st_x, st_o = rt.stypes[dy.dtype], rt.stypes[x.dtype], rt.stypes[dw.dtype]
    M, N = g.OCg, g.Cg * g.KH * g.KW
    K = g.N * g.OH * g.OW
    q_order = "kkc" if nhwc else "ckk"
    # 1x1 unit-stride layers in NCHW: x is read like dy (row = channel, k = position), no gather --
    # whatever x's strides, so a stride-2 shortcut passes x[:, :, ::2, ::2] itself.
    x_rows = not nhwc and pointwise_geometry(g)
    kind = ("conv_wgrad", nhwc) + ((("1x1",) if _positions_ok(x) else ("1x1-strided",)) if x_rows else ())
    cfg = cfg or _config(kind, M, N, K, g.groups, lambda c: _implicit_grad_weight(dy, x, g, dw, c))
    guard = M % cfg.BM != 0 or N % cfg.BN != 0 or K % cfg.BK != 0
    dy_nchw = not is_channels_last(dy)
    y0, y1, y2, y3 = dy.stride()
    vec_dy = (not guard and dy_nchw and st_y.wgsl == "f32" and y3 == 1 and y2 == g.OW and (g.OH * g.OW) % 4 == 0
              and y0 % 4 == 0 and y1 % 4 == 0 and dy.elem_offset % 4 == 0)
    A = GradOutRows("b1", st_y.wgsl, "k" if dy_nchw else "row", "b3" if vec_dy else None)
    vec_types = ["vec4<f32>"] if vec_dy else []
    vec_heaps = (dy._ws.heap,) if vec_dy else ()
    if x_rows:
        x_vec = None
        if not guard and _positions_vec_ok(x, g):
            x_vec = f"b{3 + len(vec_types)}"
            vec_types = vec_types + ["vec4<f32>"]
            vec_heaps = vec_heaps + (x._ws.heap,)
        B = GradOutRows("b2", st_x.wgsl, "k", x_vec, tensor="x")
    else:
        B = ImageGradWeight("b2", st_x.wgsl, q_order, "row" if nhwc else "k", four=not nhwc and g.OW % 4 == 0)
    # Split K so that the grid has a few hundred workgroups, each walking at least 16 tiles of K -- or
    # into the tile's own number of slices, a tuner candidate for small outputs with a long K (a 1x1
    # shortcut's 128x64 grad-weight over 32768 positions filled 64 of the H200's 132 SMs, run 9).
    slices = cfg.splits if cfg.splits > 1 else auto_splits(cfg, M, N, K, g.groups)
    kslice, slices = k_slices(K, min(slices, K // cfg.BK), cfg.BK)
    if slices == 1:
        bindings = codegen.bindings([st_o.wgsl, st_y.wgsl, st_x.wgsl] + vec_types)
        E = WeightEpilogue(st_o.wgsl, _Store(st_o), q_order, bindings)
        params = g.params(x, None, dy, dw, cfg.BK)
        set_gemm(params, M, N, K)
        launch(("conv_wgrad", nhwc, dy.dtype, x.dtype, dw.dtype), "conv2d_grad_weight", cfg, A, B, E,
               (dw._ws.heap, dy._ws.heap, x._ws.heap) + vec_heaps, params, M, N, g.groups, guard, preamble=PREAMBLE)
        return dw
    st_f = rt.stypes[torch.float32]
    partial = empty([slices * g.groups, M, N], torch.float32)
    bindings = codegen.bindings([st_f.wgsl, st_y.wgsl, st_x.wgsl] + vec_types)
    E = SlicesEpilogue(st_f.wgsl, _Store(st_f), bindings)
    params = g.params(x, None, dy, partial, cfg.BK)
    set_gemm(params, M, N, K, ksplit=kslice)
    launch(("conv_wgrad_split", nhwc, dy.dtype, x.dtype), "conv2d_grad_weight_split", cfg, A, B, E,
           (partial._ws.heap, dy._ws.heap, x._ws.heap) + vec_heaps, params, M, N, g.groups, guard, split_k=kslice,
           K=K, preamble=PREAMBLE)
    # partial[(group * slices + slice), oc, q] -> sum over slices -> dw in its own layout: straight
    # into dw when that is its plain [OC, Cg*KH*KW] layout, else through a copy. (Views made with
    # tensor.wrap: each torch-level view costs ~20 us of host time.)
    from navitrain.wgpu.kernels.copy import copy_into
    from navitrain.wgpu.kernels.reduction import reduce
    from navitrain.wgpu.tensor import wrap

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
