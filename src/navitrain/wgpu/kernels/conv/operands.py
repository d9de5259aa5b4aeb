"""The GEMM operands of the convolution passes: each fetches element (row, k) of its side of the implicit
GEMM from a 4-D tensor, reading the geometry and the tensors' offsets and strides from the `let`s of
params.PREAMBLE (cN, cKW, x_off, x_s1, ...).

K indices without divisions. Every load slot walks K in steps of BK; instead of splitting each new K
index into (c, kh, kw) with two divisions and two remainders (dozens of instructions on GPUs), a slot
splits its first index once and then adds BK, itself split into the same mixed radix on the host
(params.radix_steps), digit by digit with carries.
"""
from __future__ import annotations

from dataclasses import dataclass

from navitrain.wgpu.kernels.conv.params import CONV_PARAMS
from navitrain.wgpu.kernels.gemm import Operand

_RADIX_BASES = {  # the WGSL names of each radix's bounded digits, least significant first
    "ckk": ("cKW", "cKH"), "kkc_fwd": ("cCg", "cKW"), "kkc_dgrad": ("cOCg", "cKW"), "nhw": ("cOW", "cOH"),
}


def _digits_init(p: str, e: int, radix: str) -> list[str]:
    b0, b1 = _RADIX_BASES[radix]
    return [f"var {p}_d0_{e} = 0u; var {p}_d1_{e} = 0u; var {p}_d2_{e} = 0u;",
            f"{{ let g0 = k_lo + {p}_kl{e}; {p}_d0_{e} = g0 % {b0}; let gr = g0 / {b0}; "
            f"{p}_d1_{e} = gr % {b1}; {p}_d2_{e} = gr / {b1}; }}"]


def _digits_advance(p: str, e: int, radix: str) -> list[str]:
    b0, b1 = _RADIX_BASES[radix]
    step = [CONV_PARAMS.ref(f"radix_{radix}", digit) for digit in range(3)]   # BK in this radix (params.radix_steps)
    d0, d1, d2 = f"{p}_d0_{e}", f"{p}_d1_{e}", f"{p}_d2_{e}"
    return [f"{d0} = {d0} + {step[0]}; var cy = 0u; if ({d0} >= {b0}) {{ {d0} = {d0} - {b0}; cy = 1u; }}",
            f"{d1} = {d1} + {step[1]} + cy; cy = 0u; if ({d1} >= {b1}) {{ {d1} = {d1} - {b1}; cy = 1u; }}",
            f"{d2} = {d2} + {step[2]} + cy;"]


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
                f"let {p}_ih{e} = i32(({p}_r{e} / cOW) * csh) - cph; "
                f"let {p}_iw{e} = i32(({p}_r{e} % cOW) * csw) - cpw;",
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
    or for grad-input (row = c, k = (oc, kh, kw) or (kh, kw, oc)), read in place through its strides.
    With `vec_binding` (grad-input, fastest "row": a weight whose channels are contiguous, w_s1 == 1,
    such as a channels_last one, with every other stride and offset a multiple of 4 and whole tiles),
    the four channels row .. row+3 at one k are one 16-byte load."""
    binding: str
    wgsl: str
    role: str         # "fwd" or "dgrad"
    k_order: str
    fastest: str = "k"
    vec_binding: str | None = None

    @property
    def vec(self) -> int:
        return 4 if self.vec_binding else 1

    @property
    def key(self):
        return ("weight", self.binding, self.wgsl, self.role, self.k_order, self.fastest, self.vec_binding)

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

    def _offset(self, p, e):
        d0, d1, d2 = f"{p}_d0_{e}", f"{p}_d1_{e}", f"{p}_d2_{e}"
        top, kh, kw = (d2, d1, d0) if self.k_order == "ckk" else (d0, d2, d1)
        stride = "w_s1" if self.role == "fwd" else "w_s0"   # the K-side channel: c (fwd) or oc (dgrad)
        return f"{p}_wb{e} + {top} * {stride} + {kh} * w_s2 + {kw} * w_s3"

    def load_vec(self, p, e, row, k):
        return f"{self.vec_binding}[({self._offset(p, e)}) >> 2u]"

    def load(self, p, e, row, k):
        return f"{row} < {p}_rows && {k} < K", f"f32({self.binding}[{self._offset(p, e)}])"


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
    Only the tile edges need bounds checks (no padding). With `vec_binding`, one 16-byte load fetches four
    consecutive k -- four neighbouring positions of one image (NCHW, OH*OW a multiple of 4, aligned) --
    or, fastest "row", four neighbouring channels at one position (channels_last, layouts.channels_vec_ok)."""
    binding: str
    wgsl: str
    fastest: str
    vec_binding: str | None = None
    tensor: str = "y"
    # x[:, :, ::2, ::2] read in place (a stride-2 shortcut, layouts.pair_vec_ok): the four positions of
    # a vec4 slot lie two elements apart, fetched as two 16-byte loads keeping every other element.
    every_other: bool = False

    @property
    def vec(self) -> int:
        return 4 if self.vec_binding else 1

    @property
    def key(self):
        return ("chan_rows", self.binding, self.wgsl, self.fastest, self.vec_binding, self.every_other, self.tensor)

    def hoist(self, p, e, row):
        t, groups = self.tensor, "cOCg" if self.tensor == "y" else "cCg"
        return [f"let {p}_yb{e} = {t}_off + (bz * {groups} + ({row})) * {t}_s1;"] + _digits_init(p, e, "nhw")

    def advance(self, p, e):
        return _digits_advance(p, e, "nhw")

    def _address(self, p, e):
        ow, oh, kn, t = f"{p}_d0_{e}", f"{p}_d1_{e}", f"{p}_d2_{e}", self.tensor
        return f"{p}_yb{e} + {kn} * {t}_s0 + {oh} * {t}_s2 + {ow} * {t}_s3"

    def load_vec(self, p, e, row, k):
        if self.every_other:
            return _every_other(self.vec_binding, self._address(p, e))
        return f"{self.vec_binding}[({self._address(p, e)}) >> 2u]"

    def load(self, p, e, row, k):
        return f"{row} < {p}_rows && {k} < K", f"f32({self.binding}[{self._address(p, e)}])"


@dataclass(frozen=True)
class ImagePositions(Operand):
    """1x1, unit-stride, unpadded layers: row = position (n, p) of an image whose H*W block is
    contiguous, k = channel, element at t_off + n*t_s0 + p + k*t_s1 -- x for forward, dy for grad-input.
    (Channels_last: fastest "k", flat False, and with `vec_binding` four neighbouring channels are one
    16-byte load, layouts.channels_vec_ok.)
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
    # With flat False and vec_binding: the four neighbouring positions lie two elements apart
    # (layouts.pair_vec_ok), fetched as two 16-byte loads keeping every other element.
    every_other: bool = False

    @property
    def vec(self) -> int:
        return 4 if self.vec_binding else 1

    @property
    def key(self):
        return ("positions", self.binding, self.wgsl, self.tensor, self.every_other, self.vec_binding, self.flat)

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
        if self.every_other:
            return _every_other(self.vec_binding, f"{p}_pb{e} + ({k}) * {self.tensor}_s1")
        return f"{self.vec_binding}[({p}_pb{e} + ({k}) * {self.tensor}_s1) >> 2u]"

    def load(self, p, e, row, k):
        return f"{row} < {p}_rows && {k} < K", f"f32({self.binding}[{p}_pb{e} + ({k}) * {self.tensor}_s1])"


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


def _every_other(vec_binding: str, address: str) -> tuple[str, str]:
    """Elements address, +2, +4, +6 (address 16-byte aligned) as two 16-byte loads: (statements, value).
    The odd elements share the even ones' memory sectors, so reading them costs no extra DRAM traffic."""
    pre = f"let pa = ({address}) >> 2u; let lo = {vec_binding}[pa]; let hi = {vec_binding}[pa + 1u]; "
    return pre, "vec4<f32>(lo.x, lo.z, hi.x, hi.z)"
