"""torch.cat as few kernels: one launch copies up to PIECES inputs into their slices of the output.

DenseNet concatenates every earlier feature map before each layer (densenet161's forward: ~1,000 input
copies over its 78 layers), and a kernel per input paid a dispatch each. Here the threads of a launch
are numbered over its pieces' elements one piece after another; a thread finds its piece from the
running counts, its coordinates from the piece's shape, reads the piece through its strides and
writes the output at the piece's start along the cat dim. Dims are visited in the output's memory
order (largest output stride first), so neighbouring threads write neighbouring addresses for NCHW and
channels-last outputs alike. Pieces may live in different heaps (each distinct heap is a binding)."""
from __future__ import annotations

import torch

from navitrain.wgpu.kernels import codegen
from navitrain.wgpu.runtime import runtime

PIECES = 6  # pieces per launch: 7 parameter words each plus the header fit the 64-word block
RANK = 4    # dims handled (shapes are padded at the front)
WG = 256
PER_THREAD = 4  # elements a thread copies: the piece's parameters are picked once for all of them
SPAN = WG * PER_THREAD  # elements of a workgroup; pieces start at multiples of it

_BLOCK = codegen.ParamBlock("out_off", f"o_s[{RANK}]", f"size[{RANK}]", f"p_off[{PIECES}]", f"p_cum[{PIECES + 1}]",
                            f"p_start[{PIECES + 1}]", *(f"p_s{k}[{PIECES}]" for k in range(RANK)))


def supports(out: torch.Tensor, pieces) -> bool:
    """Whether the kernel copies these: same dtype everywhere, one computed in f32/i32/i64, rank <= RANK."""
    st = runtime().stypes.get(out.dtype)
    return (st is not None and st.has_kernels and out.dtype != torch.bool and st.compute in ("f32", "i32", "i64")
            and out.dim() <= RANK and all(p.dtype == out.dtype for p in pieces))


def concat_into(out: torch.Tensor, pieces, starts, dim: int) -> None:
    """out[..., starts[k]:starts[k] + pieces[k].shape[dim], ...] = pieces[k] along `dim`, for non-empty
    pieces (supports() must hold)."""
    # A launch reads one heap: two bindings, no branch. Its pieces must also be neighbours along `dim`,
    # because the kernel takes a piece's extent from the next piece's start: grouping the pieces of one
    # heap across a piece from another heap gave the earlier piece the gap as extent (DenseNet's features
    # spread over several heaps once the allocator had grown: wrong and unwritten output slices).
    runs: list[list] = []
    for p, at in zip(pieces, starts):
        last = runs[-1] if runs else None
        if last and len(last) < PIECES and last[-1][0]._ws.heap is p._ws.heap:
            last.append((p, at))
        else:
            runs.append([(p, at)])
    for run in runs:
        _launch(out, *_collapse(out, [p for p, _ in run], [a for _, a in run], dim))


def _collapse(out, pieces, starts, dim):
    """The copy in as few dims as it allows (integer divisions per element are what a launch pays for):
    dims in the output's memory order, neighbours merged where every tensor has them contiguous; the
    cat dim absorbs the dims after it (scaling the pieces' extents and starts). Returns (sizes, output
    strides, per-piece strides, per-piece extents along the cat dim, starts, cat dim index, pieces)."""
    order = sorted(range(out.dim()), key=lambda k: -out.stride(k) if out.shape[k] > 1 else 0)  # stable
    d = order.index(dim)
    sizes = [out.shape[k] for k in order]
    strides = [[t.stride(k) for k in order] for t in (out, *pieces)]
    extents = [p.shape[dim] for p in pieces]
    starts = list(starts)
    j = len(sizes) - 2
    while j >= 0:
        if j + 1 != d and all(s[j] == s[j + 1] * sizes[j + 1] for s in strides):
            inner = sizes.pop(j + 1)
            if j == d:  # the cat dim takes the dims after it
                extents = [e * inner for e in extents]
                starts = [a * inner for a in starts]
            else:
                sizes[j] *= inner
                d -= j < d  # a dim before the cat dim is gone
            for s in strides:
                s[j] = s.pop(j + 1)
        j -= 1
    return sizes, strides[0], strides[1:], extents, starts, d, pieces


def _launch(out, sizes, o_strides, p_strides, extents, starts, d, pieces) -> None:
    rt = runtime()
    st = rt.stypes[out.dtype]
    n, rank = len(pieces), len(sizes)
    cum, total = [0], 0
    for p in pieces:
        total += -(-p.numel() // SPAN) * SPAN
        cum.append(total)
    fill = [0] * (PIECES - n)
    values = {"out_off": out.elem_offset, "o_s": o_strides + [0] * (RANK - rank),
              "size": sizes + [1] * (RANK - rank), "p_off": [p.elem_offset for p in pieces] + fill,
              "p_cum": cum + [total] * (PIECES - n), "p_start": starts + [starts[-1] + extents[-1]] + fill}
    for k in range(RANK):
        values[f"p_s{k}"] = [s[k] if k < rank else 0 for s in p_strides] + fill
    key = ("concat", st.wgsl, st.compute, rank, d, n)
    kernel = rt.kernel(key, "concat", 2, lambda: _source(st, rank, d, n))
    # The pieces get a binding of their own even when they share the output's heap (as the pointwise
    # copy binds them).
    rt.dispatch(kernel, (out._ws.heap, pieces[0]._ws.heap), _BLOCK.pack(**values), codegen.grid(total // SPAN))


def _source(st, rank: int, d: int, n: int) -> str:
    # Each piece starts at a workgroup boundary, so a workgroup's threads share one piece; its parameters
    # are picked with chains of selects. (A switch over the pieces ran all its cases masked on lavapipe,
    # 6x slower with six pieces; picking from per-thread arrays was as slow.)
    def pick(name: str) -> str:
        expr = f"{name}_0"
        for k in range(1, n):
            expr = f"select({expr}, {name}_{k}, k >= {k}u)"
        return expr

    def pick_next(name: str) -> str:  # element k + 1 of an array field
        expr = f"{name}_1"
        for k in range(1, n):
            expr = f"select({expr}, {name}_{k + 1}, k >= {k}u)"
        return expr

    lines = [_BLOCK.wgsl(), f"  let first = group * {SPAN}u;",
             f"  if (first >= p_cum_{n}) {{ return; }}",
             "  var k = 0u;",
             *(f"  k = k + u32(first >= p_cum_{j});" for j in range(1, n)),
             f"  let start = {pick('p_start')}; let extent = {pick_next('p_start')} - start;",
             f"  let off = {pick('p_off')};",
             *(f"  let ps{j} = {pick(f'p_s{j}')};" for j in range(rank)),
             f"  let local = first - {pick('p_cum')} + lid;"]
    sizes = ["extent" if j == d else f"size_{j}" for j in range(rank)]
    last = rank - 1

    def decompose(r: str) -> list[str]:
        out = [f"      var r = {r};"]
        for j in range(last, 0, -1):
            out.append(f"      i{j} = r % {sizes[j]}; r = r / {sizes[j]};")
        out.append("      i0 = r;")
        return out

    # The indices are split once; later elements step the last one by WG and split again only when it
    # passes its size (rarely, for NCHW rows): integer divisions are most of a copy's cost on lavapipe.
    lines += [f"  var i{j} = 0u;" for j in range(rank)]
    lines += ["  {", *decompose("local"), "  }"]
    lines.append(f"  for (var e = 0u; e < {PER_THREAD}u; e = e + 1u) {{")
    # Threads past the piece's end (its last workgroup's tail) write nothing.
    lines.append(f"    if (i0 >= {sizes[0]}) {{ return; }}")
    src = " + ".join(["off"] + [f"i{j} * ps{j}" for j in range(rank)])
    dst = " + ".join(["out_off"] + [f"(i{j} + start) * o_s_{j}" if j == d else f"i{j} * o_s_{j}" for j in range(rank)])
    lines.append(f"    b0[{dst}] = {st.store(st.load(f'b1[{src}]', st.compute))};")
    if rank == 1:
        lines.append(f"    i0 = i0 + {WG}u;")
    else:
        lines.append(f"    i{last} = i{last} + {WG}u;")
        lines.append(f"    if (i{last} >= {sizes[last]}) {{")
        lines += ["  " + x for x in decompose(f"local + (e + 1u) * {WG}u")]
        lines.append("    }")
    lines.append("  }")
    return codegen.module([st.wgsl] * 2, "\n".join(lines), WG)
