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


class StatsImageEpilogue(ImageEpilogue):
    """An NCHW-orientation ImageEpilogue (rows = output channels, columns = positions) that also writes,
    per output channel and column tile (workgroup x), statistics of the values it stores -- a batch
    norm's statistics of this output, without another pass over it: the tile's f32 mean `hi`, then
    S1 = sum(v - hi) and S2 = sum((v - hi)^2) over the tile. S1 keeps what rounding hi lost (a mean of
    1e4 is 5e-4 off at worst, which the spread between tiles would feel), S2 is around the tile's own
    mean, so nothing cancels when the mean is large next to the spread; batch_norm combines the tiles
    (in a fixed order) around one shift. Each sum is reduced across the threads of a row in workgroup
    memory in a fixed order (deterministic, no atomics), from the accumulators still in registers.

    The forward pass reads no dy, so the partials' place comes in the `y` tensor fields: y_off, y_s0 (a
    column tile's stride) and y_s1 (a channel's); three words each. `rounded` turns the f32 value into
    what the stored element reads back as (a half dtype's rounding), so the statistics are those of the
    stored output. `cfg` is the kernel's tile, whose thread layout (gemm_source) the rows and columns
    follow."""

    WORDS = 3   # hi, S1, S2 per channel and column tile

    def __init__(self, out_wgsl, store, bias: bool, bindings: str, stats_binding: str, rounded, cfg,
                 vec_out: str | None = None):
        # The reduction's workgroup array is declared with the bindings (module scope, before the tiles).
        bindings += f"var<workgroup> conv_stat: array<f32, {stat_words(cfg)}>;\n"
        super().__init__(out_wgsl, store, "rows", "out", bias, bindings, vec_out=vec_out)
        self.stats_binding, self.rounded, self.cfg = stats_binding, rounded, cfg
        self.extra_key = self.extra_key + ("stats", stats_binding, rounded("v"))

    def _row(self, i: int) -> str:
        """Tile-local row of a thread's accumulator row i (gemm_source's row_group, times 4, plus i % 4)."""
        cfg = self.cfg
        g = f"(ty + {(i // 4) * (cfg.BM // cfg.TM)}u)" if cfg.interleave else f"(ty * {cfg.TM // 4}u + {i // 4}u)"
        return f"({g} * 4u + {i % 4}u)"

    def _col(self, j: int, q: int) -> str:
        cfg = self.cfg
        cols = cfg.BN // cfg.TN
        g = f"(tx + {j * cols}u)" if cfg.interleave else f"(tx * {cfg.TN // 4}u + {j}u)"
        return f"({g} * 4u + {q}u)"

    def setup(self):
        cfg = self.cfg
        cols = cfg.BN // cfg.TN
        cells = [(j, q) for j in range(cfg.TN // 4) for q in range(4)]
        lines = super().setup()
        lines.append(f"let st_cnt = f32(min({cfg.BN}u, N - n0));")
        for j, q in cells:
            lines.append(f"let st_ok{j}_{q} = n0 + {self._col(j, q)} < N;")
        for i in range(cfg.TM):
            lines.append(f"let st_lr{i} = {self._row(i)}; let st_gm{i} = m0 + st_lr{i};")
            for j, q in cells:
                # A row past M reads no bias out of range (min); its statistics are never written.
                v = self.value(f"c{i}_{j}[{q}]", f"min(st_gm{i}, M - 1u)", f"n0 + {self._col(j, q)}")
                lines.append(f"let st_v{i}_{j}_{q} = {self.rounded(v)};")

        def row_totals(term, name):
            """Each thread's share of term(i, j, q) per row into conv_stat, then every thread's row total
            `name{i}`, summed in the same fixed order by each thread of the row."""
            out = []
            for i in range(cfg.TM):
                parts = " + ".join(f"select(0.0, {term(i, j, q)}, st_ok{j}_{q})" for j, q in cells)
                out.append(f"conv_stat[st_lr{i} * {cols}u + tx] = {parts};")
            out.append("workgroupBarrier();")
            for i in range(cfg.TM):
                out.append(f"var {name}{i} = 0.0;")
                out.append(f"for (var t = 0u; t < {cols}u; t = t + 1u) "
                           f"{{ {name}{i} = {name}{i} + conv_stat[st_lr{i} * {cols}u + t]; }}")
            out.append("workgroupBarrier();")   # before conv_stat is written again
            return out

        lines += row_totals(lambda i, j, q: f"st_v{i}_{j}_{q}", "st_sum")
        lines += [f"let st_hi{i} = st_sum{i} / st_cnt;" for i in range(cfg.TM)]
        lines += row_totals(lambda i, j, q: f"(st_v{i}_{j}_{q} - st_hi{i})", "st_s1_")
        lines += row_totals(lambda i, j, q: f"(st_v{i}_{j}_{q} - st_hi{i}) * (st_v{i}_{j}_{q} - st_hi{i})", "st_s2_")
        sb = self.stats_binding
        for i in range(cfg.TM):
            lines.append(f"if (tx == 0u && st_gm{i} < M) {{")
            lines.append(f"  let at = y_off + wid.x * y_s0 + (bz * cOCg + st_gm{i}) * y_s1;")
            lines.append(f"  {sb}[at] = st_hi{i}; {sb}[at + 1u] = st_s1_{i}; {sb}[at + 2u] = st_s2_{i};")
            lines.append("}")
        return lines


def stat_words(cfg) -> int:
    """Floats of StatsImageEpilogue's workgroup array: a partial per row and thread column."""
    return cfg.BM * (cfg.BN // cfg.TN)
