"""Per-channel sums over a tensor seen as [A, C, B] (the channel in the middle), in one pass over the
data: workgroups take a tile of channels and a chunk of rows, reduce in workgroup memory and write f32
partial sums, which a small per-channel kernel then totals (`sum_partials` inside the caller's own
kernel, or `finish_sums` into outputs). Batch norm's statistics and layer norm's weight and bias
gradients (columns of [M, L] are the channels of [M, L, 1]) are such sums."""
from __future__ import annotations

import functools
from typing import NamedTuple

import torch

from navitrain.wgpu.kernels import codegen
from navitrain.wgpu.kernels.norm_common import WG, launch, load, module, next_pow2, store, vec_stride
from navitrain.wgpu.tensor import empty

# The fields a kernel reading partials with `sum_partials` declares in its ParamBlock: the partials'
# geometry (as channel_sums returns it) and where they start.
PARTIAL_FIELDS = ("G", "Bp", "C", "part_off")


class _Geometry(NamedTuple):
    variant: str  # "cols": rows of C * B virtual channels, tiled; "rows": a workgroup walks one channel
    Bp: int       # partial sums per channel and chunk (B for "cols", 1 for "rows")
    TC: int       # tile of columns ("cols")
    R: int        # rows a "cols" workgroup reads at once
    tiles: int
    G: int        # chunks of rows
    chunk: int
    groups: tuple


def _geometry(A: int, C: int, B: int) -> _Geometry:
    """When B is small the data is read as rows of W = C * B "virtual channels" (the B of a channel
    summed later): a workgroup takes a tile of consecutive columns and strides down the rows, so its
    threads read consecutive addresses. When B is large a workgroup takes one channel and walks its
    runs of B."""
    W = C * B
    if B <= 16:
        TC = W if W <= WG else 64
        R = WG // TC
        tiles = -(-W // TC)
        G = max(1, min(-(-A * TC // 2048), -(-512 // tiles), 65535 // tiles))
        chunk = -(-A // G)
        G = -(-A // chunk)
        return _Geometry("cols", B, TC, R, tiles, G, chunk, codegen.grid(tiles * G))
    M = A * B
    G = max(1, min(-(-M // 4096), -(-512 // C), 65535))
    chunk = -(-M // G)
    G = -(-M // chunk)
    return _Geometry("rows", 1, 1, 1, 1, G, chunk, codegen.grid(C * G))


@functools.lru_cache(maxsize=None)
def _block(n_inputs: int, n_vecs: int) -> codegen.ParamBlock:
    return codegen.ParamBlock("A", "C", "B", "W", "TC", "R", "R_pow2", "tiles", "G", "chunk", "out_off",
                              f"in_off[{n_inputs}]", f"vec_off[{n_vecs}]", f"vec_stride[{n_vecs}]")


def channel_sums(name, A, C, B, inputs, terms, chan_vecs=(), row_vecs=(), shift=False, extra=0, prelude=""):
    """Partial sums of `terms` (WGSL over X0.. = inputs at the element, V0.. = chan_vecs[c],
    R0.. = row_vecs[a], SH = the channel's first element of input 0 when `shift`, and the `let` values
    of `prelude`, statements run at each element after its loads) for every channel c, over all (a, b).
    Returns (partials, G, Bp): f32 partials laid out [G, C, Bp, K] (then `extra`
    spare elements); a channel's total is the sum over G and Bp."""
    geo = _geometry(A, C, B)
    partials = empty([geo.G * C * geo.Bp * len(terms) + extra], torch.float32)
    vecs = (*chan_vecs, *row_vecs)
    tensors = [partials, *inputs, *vecs]
    blk = _block(len(inputs), len(vecs))
    params = blk.pack(A=A, C=C, B=B, W=C * B, TC=geo.TC, R=geo.R, R_pow2=next_pow2(geo.R), tiles=geo.tiles,
                      G=geo.G, chunk=geo.chunk, out_off=partials.elem_offset,
                      in_off=[t.elem_offset for t in inputs], vec_off=[t.elem_offset for t in vecs],
                      vec_stride=[vec_stride(t) for t in vecs])

    def source():
        return _sums_source(blk, geo.variant, terms, tensors, len(inputs), len(chan_vecs), shift, prelude)

    key = ("norm_sums", name, geo.variant, tuple(terms), tuple(t.dtype for t in tensors), len(inputs),
           len(chan_vecs), shift, prelude)
    launch(key, f"norm_sums_{name}", tensors, params, source, geo.groups)
    return partials, geo.G, geo.Bp


def _sums_source(blk, variant, terms, tensors, n_in, n_chan, shift, prelude="") -> str:
    inputs = tensors[1:1 + n_in]
    chan_vecs = tensors[1 + n_in:1 + n_in + n_chan]
    row_vecs = tensors[1 + n_in + n_chan:]
    lines = [blk.wgsl()]
    a = lines.append
    if variant == "cols":
        a("  if (group >= tiles * G) { return; }")
        a("  let tile = group % tiles; let g = group / tiles;")
        a("  let j = lid % TC; let r = lid / TC;")
        a("  let col = tile * TC + j; let c = min(col, W - 1u) / B;")
        a("  let live = r < R && col < W;")
        a("  let a0 = g * chunk; let a1 = min(A, a0 + chunk);")
    else:
        a("  if (group >= C * G) { return; }")
        a("  let c = group % C; let g = group / C;")
        a("  let l0 = g * chunk; let l1 = min(A * B, l0 + chunk);")
    for k, t in enumerate(chan_vecs):
        a(f"  let V{k} = {load(t, 1 + n_in + k, f'vec_off_{k} + c * vec_stride_{k}')};")
    if shift:
        # A non-finite shift would make every shifted value NaN (inf - inf): shift by 0 then.
        a(f"  let SH = finite_or_0({load(inputs[0], 1, 'in_off_0 + c * B')});")
    lines += _accumulate(variant, terms, inputs, row_vecs, n_in, n_chan, prelude)
    lines += _reduce_and_write(variant, len(terms))
    return module(tensors, "\n".join(lines), f"var<workgroup> red: array<f32, {len(terms) * WG}>;\n")


def _accumulate(variant, terms, inputs, row_vecs, n_in, n_chan, prelude="") -> list[str]:
    """Each thread's own sums of the terms over its share of (a, b)."""
    lines = [f"  var acc{k} = 0.0;" for k in range(len(terms))]
    if variant == "cols":
        lines += ["  if (live) {",
                  "    for (var ai = a0 + r; ai < a1; ai = ai + R) {",
                  "      let e = ai * W + col;"]
    else:
        lines += ["  {",
                  f"    for (var l = l0 + lid; l < l1; l = l + {WG}u) {{",
                  "      let ai = l / B; let e = (ai * C + c) * B + (l - ai * B);"]
    lines += [f"      let X{k} = {load(t, 1 + k, f'in_off_{k} + e')};" for k, t in enumerate(inputs)]
    for k, t in enumerate(row_vecs):
        v = n_chan + k
        lines.append(f"      let R{k} = {load(t, 1 + n_in + n_chan + k, f'vec_off_{v} + ai * vec_stride_{v}')};")
    if prelude:
        lines.append(prelude)
    lines += [f"      acc{k} = acc{k} + ({term});" for k, term in enumerate(terms)]
    lines += ["    }", "  }"]
    return lines


def _reduce_and_write(variant, K: int) -> list[str]:
    """The workgroup's tree sum in `red`, and its partials written to b0."""
    lines = [f"  red[{k * WG}u + lid] = acc{k};" for k in range(K)]
    lines.append("  workgroupBarrier();")
    if variant == "cols":
        lines += ["  for (var s = R_pow2 >> 1u; s > 0u; s = s >> 1u) {", "    if (r < s && r + s < R) {"]
        lines += [f"      red[{k * WG}u + lid] = red[{k * WG}u + lid] + red[{k * WG}u + lid + s * TC];"
                  for k in range(K)]
        lines += ["    }", "    workgroupBarrier();", "  }",
                  "  if (r == 0u && col < W) {",
                  f"    let o = out_off + (g * W + col) * {K}u;"]
    else:
        lines += [f"  for (var s = {WG // 2}u; s > 0u; s = s >> 1u) {{", "    if (lid < s) {"]
        lines += [f"      red[{k * WG}u + lid] = red[{k * WG}u + lid] + red[{k * WG}u + lid + s];" for k in range(K)]
        lines += ["    }", "    workgroupBarrier();", "  }",
                  "  if (lid == 0u) {",
                  f"    let o = out_off + (g * C + c) * {K}u;"]
    lines += [f"    b0[o + {k}u] = red[{k * WG}u + lid];" for k in range(K)]
    lines.append("  }")
    return lines


def sum_partials(K: int, terms: list[tuple[int, str]], binding: int = 0) -> str:
    """WGSL declaring, for each (k, var) in `terms`, var = the total of term k of channel c, from the
    partials of channel_sums bound at `binding`; the kernel's ParamBlock has PARTIAL_FIELDS."""
    decl = "".join(f"  var {v} = 0.0;\n" for _, v in terms)
    adds = "".join(f"      {v} = {v} + b{binding}[at + {k}u];\n" for k, v in terms)
    return (decl
            + "  for (var g = 0u; g < G; g = g + 1u) {\n"
            + "    for (var q = 0u; q < Bp; q = q + 1u) {\n"
            + f"      let at = part_off + ((g * C + c) * Bp + q) * {K}u;\n"
            + adds
            + "    }\n  }\n")


@functools.lru_cache(maxsize=None)
def _finish_block(K: int) -> codegen.ParamBlock:
    return codegen.ParamBlock(*PARTIAL_FIELDS, f"out_off[{K}]", f"out_stride[{K}]")


def finish_sums(partials, G, Bp, C, outputs) -> None:
    """outputs[k][c] = the total of term k of channel c (a thread per channel)."""
    K = len(outputs)
    tensors = [partials, *outputs]
    blk = _finish_block(K)
    params = blk.pack(G=G, Bp=Bp, C=C, part_off=partials.elem_offset, out_off=[t.elem_offset for t in outputs],
                      out_stride=[vec_stride(t) for t in outputs])

    def source():
        lines = [blk.wgsl(), "  let c = gi; if (c >= C) { return; }"]
        lines.append(sum_partials(K, [(k, f"t{k}") for k in range(K)]))
        for k, t in enumerate(outputs):
            lines.append("  " + store(t, 1 + k, f"out_off_{k} + c * out_stride_{k}", f"t{k}"))
        return module(tensors, "\n".join(lines))

    key = ("norm_finish", K, tuple(t.dtype for t in tensors))
    launch(key, "norm_finish_sums", tensors, params, source, codegen.groups_for(C, WG))
