"""Forward and grad-input of a grouped convolution: one thread computes CB channels of one group at PX
neighbouring positions of a row, the taps unrolled (kh*kw known when the kernel is generated). Each
weight it loads serves its PX positions, each image value its CB channels.

- forward: thread = output row segment (n, oy, ox0 .. ox0+PX-1) x CB output channels of group g; it
  walks the group's Cg input channels. Taps in the padding read as zero and are multiplied like the
  CPU's im2col zeros (an inf weight there makes the CPU's NaN too).
- grad-input: thread = PX input positions of a row, sw apart (n, iy, ix0 + q*sw), x CB input channels
  of group g; it walks the group's OCg output channels. Tap (i, j) reaches output (oy, ox) =
  ((iy + ph - i*dh) / sh, ...) only when the division is exact and inside dy: taps that do not land
  are skipped, as the CPU's col2im never maps them (any stride and dilation in one dispatch, no
  output phases).
Each sum runs over channels, then taps, in a fixed order: the result is deterministic.
"""
from __future__ import annotations

from navitrain.wgpu.kernels import codegen
from navitrain.wgpu.kernels.conv_grouped.common import PRE, WG, split_thread


def _segment(rows: str, cols: str, px: int) -> str:
    """The thread's row segment: p = (n, row, column group), PX columns from x0."""
    return (f"  let segs = ({cols} + {px - 1}u) / {px}u; let xg = p % segs; let pt = p / segs; "
            f"let r = pt % {rows}; let n = pt / {rows}; let x0 = xg * {px}u;")


def _tap_tests_forward(kh: int, kw: int, px: int) -> list[str]:
    """rok{i}/roff{i}: tap row i inside x and its offset; cok{q}_{j}/coff{q}_{j}: the same for column j
    of output q of the segment."""
    lines = [_segment("OH", "OW", px), "  let iyb = i32(r * sh) - ph;"]
    lines += [f"  let iy{i} = iyb + {i} * dh; let rok{i} = iy{i} >= 0 && iy{i} < H; "
              f"let roff{i} = select(0u, u32(iy{i}) * x_s_2, rok{i});" for i in range(kh)]
    for q in range(px):
        for j in range(kw):
            lines.append(f"  let ix{q}_{j} = i32((x0 + {q}u) * sw) - pw + {j} * dw; "
                         f"let cok{q}_{j} = ix{q}_{j} >= 0 && ix{q}_{j} < W; "
                         f"let coff{q}_{j} = select(0u, u32(ix{q}_{j}) * x_s_3, cok{q}_{j});")
    return lines


def _tap_tests_grad_input(kh: int, kw: int, px: int) -> list[str]:
    """rok{i}/roff{i}: tap row i of the segment's input row lands on a row of dy, and that row's offset;
    cok{q}_{j}/coff{q}_{j}: the same for column j of input q of the segment."""
    # The segment's PX columns are sw apart (x0, x0 + sw, ..: one column phase a), so a column tap
    # lands for all of them or for none: segments enumerate (phase, run of PX columns of that phase).
    lines = [f"  let per = (u32(W) + sw - 1u) / sw; let segs = sw * ((per + {px - 1}u) / {px}u);",
             "  let xg = p % segs; let pt = p / segs; let r = pt % u32(H); let n = pt / u32(H);",
             f"  let x0 = xg % sw + sw * (xg / sw) * {px}u;"]
    for i in range(kh):
        lines.append(f"  let nh{i} = i32(r) + ph - {i} * dh; let oy{i} = u32(max(nh{i}, 0)) / sh; "
                     f"let rok{i} = nh{i} >= 0 && oy{i} * sh == u32(max(nh{i}, 0)) && oy{i} < OH; "
                     f"let roff{i} = select(0u, oy{i} * y_s_2, rok{i});")
    for q in range(px):
        for j in range(kw):
            nw, ox, cok = f"nw{q}_{j}", f"ox{q}_{j}", f"cok{q}_{j}"
            lines.append(f"  let {nw} = i32(x0 + {q}u * sw) + pw - {j} * dw; let {ox} = u32(max({nw}, 0)) / sw; "
                         f"let {cok} = x0 + {q}u * sw < u32(W) && {nw} >= 0 "
                         f"&& {ox} * sw == u32(max({nw}, 0)) && {ox} < OW; "
                         f"let coff{q}_{j} = select(0u, {ox} * y_s_3, {cok});")
    for i in range(kh):
        for j in range(kw):
            lines.append(f"  let lands{i}_{j} = rok{i} && ({' || '.join(f'cok{q}_{j}' for q in range(px))});")
    return lines


def _accumulate(kh, kw, cb, px, load_image, load_weight, skip_outside: bool) -> list[str]:
    """a{c}_{q} += image(q, i, j) * weight(c, i, j) over the taps: CB weights loaded once per tap for
    the PX positions. `skip_outside`: taps outside the image add nothing (grad-input); otherwise they
    read as zero and are multiplied (forward)."""
    lines = []
    for i in range(kh):
        for j in range(kw):
            # grad-input: a tap none of the PX positions takes (3/4 of them at stride 2) loads no weights
            opening = f"if (lands{i}_{j}) {{" if skip_outside else "{"
            lines.append(f"    {opening} let t = {i}u * w_s_2 + {j}u * w_s_3;")
            lines += [f"    let wv{c} = {load_weight(c, 't')};" for c in range(cb)]
            for q in range(px):
                ok = f"rok{i} && cok{q}_{j}"
                value = load_image(f"roff{i} + coff{q}_{j}")
                if skip_outside:
                    lines.append(f"    if ({ok}) {{ let v = {value}; "
                                 + " ".join(f"a{c}_{q} = a{c}_{q} + v * wv{c};" for c in range(cb)) + " }")
                else:
                    # the address is the channel's start where the tap is padding: no read leaves the binding
                    lines.append(f"    {{ let v = select(0.0, {value}, {ok}); "
                                 + " ".join(f"a{c}_{q} = a{c}_{q} + v * wv{c};" for c in range(cb)) + " }")
            lines.append("    }")
    return lines


def _accumulators(cb: int, px: int) -> str:
    return "  " + " ".join(f"var a{c}_{q} = 0.0;" for c in range(cb) for q in range(px))


def forward_source(kh, kw, cb, px, inner, st_y, st_x, st_w, st_b) -> str:
    """b0 = out (y), b1 = x, b2 = w, b3 = bias."""
    lines = [PRE, "  if (gi >= work) { return; }", split_thread(inner)] + _tap_tests_forward(kh, kw, px)
    # rows of the thread's output channels (a block past OCg repeats the last one and stores nothing)
    lines += [f"  let wr{c} = w_off + (g * OCg + min(cb * {cb}u + {c}u, OCg - 1u)) * w_s_0;" for c in range(cb)]
    lines += [_accumulators(cb, px),
              "  var xc = x_off + n * x_s_0 + g * Cg * x_s_1; var wc = 0u;",
              "  for (var c = 0u; c < Cg; c = c + 1u) {"]
    lines += _accumulate(kh, kw, cb, px, lambda off: st_x.load(f"b1[xc + ({off})]", "f32"),
                         lambda c, t: st_w.load(f"b2[wr{c} + wc + {t}]", "f32"), skip_outside=False)
    lines += ["    xc = xc + x_s_1; wc = wc + w_s_1;", "  }",
              "  let yb = y_off + n * y_s_0 + r * y_s_2 + x0 * y_s_3;"]
    for c in range(cb):
        oc = f"g * OCg + cb * {cb}u + {c}u"
        bias = f" + {st_b.load(f'b3[b_off + {oc}]', 'f32')}" if st_b is not None else ""
        stores = " ".join(f"if (x0 + {q}u < OW) {{ b0[yc + {q}u * y_s_3] = {st_y.store(f'a{c}_{q}{bias}')}; }}"
                          for q in range(px))
        lines.append(f"  if (cb * {cb}u + {c}u < OCg) {{ let yc = yb + ({oc}) * y_s_1; {stores} }}")
    types = [st_y.wgsl, st_x.wgsl, st_w.wgsl] + ([st_b.wgsl] if st_b is not None else [])
    return codegen.module(types, "\n".join(lines), WG)


def grad_input_source(kh, kw, cb, px, inner, st_x, st_y, st_w) -> str:
    """b0 = dx (x), b1 = dy (y), b2 = w."""
    lines = [PRE, "  if (gi >= work) { return; }", split_thread(inner)] + _tap_tests_grad_input(kh, kw, px)
    # columns of the thread's input channels (a block past Cg repeats the last one and stores nothing)
    lines += [f"  let wr{c} = w_off + g * OCg * w_s_0 + min(cb * {cb}u + {c}u, Cg - 1u) * w_s_1;" for c in range(cb)]
    lines += [_accumulators(cb, px),
              "  var yc = y_off + n * y_s_0 + g * OCg * y_s_1; var wc = 0u;",
              "  for (var oc = 0u; oc < OCg; oc = oc + 1u) {"]
    lines += _accumulate(kh, kw, cb, px, lambda off: st_y.load(f"b1[yc + {off}]", "f32"),
                         lambda c, t: st_w.load(f"b2[wr{c} + wc + {t}]", "f32"), skip_outside=True)
    lines += ["    yc = yc + y_s_1; wc = wc + w_s_0;", "  }",
              "  let xb = x_off + n * x_s_0 + r * x_s_2 + x0 * x_s_3;"]
    for c in range(cb):
        stores = " ".join(f"if (x0 + {q}u * sw < u32(W)) {{ b0[xq + {q}u * sw * x_s_3] = {st_x.store(f'a{c}_{q}')}; }}"
                          for q in range(px))
        channel = f"g * Cg + cb * {cb}u + {c}u"
        lines.append(f"  if (cb * {cb}u + {c}u < Cg) {{ let xq = xb + ({channel}) * x_s_1; {stores} }}")
    return codegen.module([st_x.wgsl, st_y.wgsl, st_w.wgsl], "\n".join(lines), WG)
