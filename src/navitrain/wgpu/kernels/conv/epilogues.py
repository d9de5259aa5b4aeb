"""Epilogues of the convolution passes: where C[row, col] of the implicit GEMM goes -- an image (forward,
grad-input), a weight (grad-weight) or a split-K slice of partial products. They write through the
`o_*` lets of params.PREAMBLE; the plain output fields of gemm.Epilogue are not used.
"""
from __future__ import annotations

from navitrain.wgpu.kernels.conv.params import CONV_PARAMS
from navitrain.wgpu.kernels.gemm import Epilogue


class ImageEpilogue(Epilogue):
    """Writes a GEMM result into a 4-D image `o` (strides o_s0..3) of spatial size OHxOW (or HxW).
    channels == "rows": C[ch, pos] (NCHW orientation), "cols": C[pos, ch] (NHWC orientation)."""

    def __init__(self, out_wgsl, store, channels: str, spatial: str, bias: bool, bindings: str, relu: bool = False,
                 vec_out: str | None = None):
        super().__init__(CONV_PARAMS, out_wgsl, store,
                         bias="row" if (bias and channels == "rows") else ("col" if bias else None),
                         relu=relu, bindings=bindings, extra_key=(channels, spatial), vec_out=vec_out)
        self.channels = channels
        self.sh, self.sw = ("cOH", "cOW") if spatial == "out" else ("cH", "cW")
        self.chan_per_group = "cOCg" if spatial == "out" else "cCg"

    def setup(self):
        lines = []
        if self.bias is not None:
            lines.append(f"let bias_base = {CONV_PARAMS.ref('bias_off')} + bz * {self.chan_per_group};")
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
        super().__init__(CONV_PARAMS, out_wgsl, store, bindings=bindings, extra_key=(q_order,))
        self.q_order = q_order

    def setup(self):
        return []

    def row_setup(self, gm):
        return [f"let c_row = o_off + (bz * cOCg + ({gm})) * o_s0;"]

    def col_setup(self, gn, tag):
        if self.q_order == "ckk":
            return [f"let qo{tag} = (({gn}) / (cKH * cKW)) * o_s1 + ((({gn}) % (cKH * cKW)) / cKW) * o_s2"
                    f" + (({gn}) % cKW) * o_s3;"]
        return [f"let qo{tag} = (({gn}) / (cKW * cCg)) * o_s2 + ((({gn}) % (cKW * cCg)) / cCg) * o_s3"
                f" + (({gn}) % cCg) * o_s1;"]

    def address(self, gm, gn, tag):
        return f"c_row + qo{tag}"


class SlicesEpilogue(Epilogue):
    """Writes a split-K slice's C[m, n] into o = f32 partial products [slices * groups, M, N] (slab
    wid.z), for the caller to sum: split grad-weights and grad-inputs."""

    def __init__(self, out_wgsl, store, bindings: str):
        super().__init__(CONV_PARAMS, out_wgsl, store, bindings=bindings, extra_key=("slices",))

    def setup(self):
        return []

    def row_setup(self, gm):
        return [f"let c_row = o_off + wid.z * o_s0 + ({gm}) * N;"]

    def col_setup(self, gn, tag):
        return []

    def address(self, gm, gn, tag):
        return f"c_row + ({gn})"
