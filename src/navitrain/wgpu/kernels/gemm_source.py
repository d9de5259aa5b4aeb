"""WGSL of a generated GEMM kernel: C[bz][m, n] = sum_k A(m, k) * B(k, n), written out by an Epilogue.

WGSL compilers do far better with straight-line code than with loops over small arrays (a loop-and-array
tiled GEMM reached 0.83 TFLOPS on an H100 where the same tiling fully unrolled reached 33), so the kernel
text is generated from a tile configuration:
- a workgroup computes a BM x BN tile of C; each thread a TM x TN block of it, held in TM*TN/4 vec4
  accumulators (separate variables, not an array, so they stay in registers);
- per step of BK along K, the A tile is staged transposed (As[k][m]) and the B tile as is (Bs[k][n]) in
  workgroup memory as vec4s; a thread then reads TM/4 + TN/4 vec4s per k and issues TM*TN/4 vec4 FMAs;
- each of a thread's load slots (tile elements it fetches per step) computes everything that does not
  depend on k (its row, and for images the (n, oh, ow) of that row) once, outside the K loop.
The pieces below write the kernel body in order: prologue, load slots, accumulators, the K loop (fetch
into registers, stash into workgroup memory, compute), then the stores of the epilogue.
"""
from __future__ import annotations

from navitrain.wgpu.kernels import codegen
from navitrain.wgpu.kernels.gemm_config import TileConfig
from navitrain.wgpu.kernels.gemm_operands import Epilogue, Operand


def source(cfg: TileConfig, A: Operand, B: Operand, E: Epilogue, guard: bool, params: codegen.ParamBlock,
           split_k: bool = False, preamble: tuple[str, ...] = ()) -> str:
    """The kernel's WGSL. `params`: its parameter block (GEMM_FIELDS first). With split_k, workgroup z
    also picks a slice of K (length `kslice`) and the batch index is z / slices. `preamble`: WGSL
    statements run after the prologue (the convolution geometry's `let`s)."""
    return _Writer(cfg, A, B, E, guard, params).kernel(split_k, preamble)


class _Writer:
    """Writes one kernel body line by line (self.lines)."""

    def __init__(self, cfg: TileConfig, A: Operand, B: Operand, E: Epilogue, guard: bool,
                 params: codegen.ParamBlock):
        self.cfg, self.A, self.B, self.E, self.guard, self.params = cfg, A, B, E, guard, params
        self.lines: list[str] = []
        self.threads = cfg.threads
        self.cols = cfg.BN // cfg.TN          # threads across a tile row
        self.rows_t = cfg.BM // cfg.TM        # threads down a tile column
        # Workgroup tiles are [k][row] in vec4s, each k-row padded by one vec4: operands loaded along K
        # store a column of the tile (consecutive threads: consecutive k, same row), and without the pad
        # those stores all hit one memory bank (8-way conflicts at BK=8, measured as the main cost of
        # weight-gradient convolutions).
        self.row_words = {"As": cfg.BM // 4 + cfg.pad, "Bs": cfg.BN // 4 + cfg.pad}
        self.tile_words = {name: cfg.BK * words for name, words in self.row_words.items()}  # vec4s per buffer
        self.vec = self._vector_widths()
        # (prefix, operand, tile rows, load slots per thread, workgroup buffer)
        self.operands = (("a", A, cfg.BM, cfg.BM * cfg.BK // self.threads // self.vec["a"], "As"),
                         ("b", B, cfg.BN, cfg.BK * cfg.BN // self.threads // self.vec["b"], "Bs"))

    def w(self, line: str) -> None:
        self.lines.append(line)

    def _vector_widths(self) -> dict:
        """Elements per load slot (4: one 16-byte load) for A and B."""
        vec = {}
        for p, op, rows in (("a", self.A, self.cfg.BM), ("b", self.B, self.cfg.BN)):
            # (Under the guard only an operand that knows its own rows and K are whole tiles keeps vec loads.)
            v = getattr(op, "vec", 1) if not self.guard or getattr(op, "whole_tiles", False) else 1
            vec[p] = v if (rows * self.cfg.BK) % (self.threads * v) == 0 else 1
        return vec

    def row_group(self, t: str, i4: int) -> str:
        """Index of the i4-th vec4 group of rows (within the tile) that thread row t owns."""
        cfg = self.cfg
        return f"({t} + {i4 * self.rows_t}u)" if cfg.interleave else f"({t} * {cfg.TM // 4}u + {i4}u)"

    def col_group(self, t: str, j: int) -> str:
        cfg = self.cfg
        return f"({t} + {j * self.cols}u)" if cfg.interleave else f"({t} * {cfg.TN // 4}u + {j}u)"

    def kernel(self, split_k: bool, preamble: tuple[str, ...]) -> str:
        self.prologue(split_k, preamble)
        self.load_slots()
        self.accumulators()
        self.k_loop()
        self.stores()
        cfg = self.cfg
        shared = (f"var<workgroup> As: array<vec4<f32>, {cfg.buffers * self.tile_words['As']}>;\n"
                  f"var<workgroup> Bs: array<vec4<f32>, {cfg.buffers * self.tile_words['Bs']}>;\n")
        body = "\n".join(self.lines)
        return codegen.PARAM_DECL + self.E.bindings + self.E.helpers() + f"""{shared}
@compute @workgroup_size({self.threads})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {{
{body}
}}
"""

    def prologue(self, split_k: bool, preamble: tuple[str, ...]) -> None:
        """The tile's origin, the product's size, this workgroup's batch and range of K."""
        cfg, ref, w = self.cfg, self.params.ref, self.w
        w(f"  let n0 = wid.x * {cfg.BN}u; let m0 = wid.y * {cfg.BM}u;")
        w(f"  let M = {ref('M')}; let N = {ref('N')}; let Kfull = {ref('K')};")
        if split_k:
            # z = batch * slices + slice; each slice covers [k_lo, k_hi) of K.
            w(f"  let kslice = {ref('kslice')}; let slices = (Kfull + kslice - 1u) / kslice;")
            w("  let bz = wid.z / slices; let ks = wid.z % slices;")
            w("  let k_lo = ks * kslice; let K = min(Kfull, k_lo + kslice);")
        else:
            w("  let bz = wid.z; let k_lo = 0u; let K = Kfull;")
        w("  let a_rows = M; let b_rows = N;")
        for line in preamble:
            w("  " + line)
        w(f"  let tx = lid % {self.cols}u; let ty = lid / {self.cols}u;")
        for line in self.A.setup("a") + self.B.setup("b"):
            w("  " + line)

    def load_slots(self) -> None:
        """Per load slot: its tile coordinates and everything that depends on its row only."""
        BK, w = self.cfg.BK, self.w
        for p, op, rows, slots, _ in self.operands:
            origin = "m0" if p == "a" else "n0"
            v = self.vec[p]
            for e in range(slots):
                w(f"  let {p}_idx{e} = lid + {e * self.threads}u;")
                if op.fastest == "row":
                    w(f"  let {p}_kl{e} = {p}_idx{e} / {rows // v}u; "
                      f"let {p}_rl{e} = ({p}_idx{e} % {rows // v}u) * {v}u;")
                else:
                    w(f"  let {p}_rl{e} = {p}_idx{e} / {BK // v}u; let {p}_kl{e} = ({p}_idx{e} % {BK // v}u) * {v}u;")
                w(f"  let {p}_row{e} = {origin} + {p}_rl{e};")
                for line in op.hoist(p, e, f"{p}_row{e}"):
                    w("  " + line)

    def accumulators(self) -> None:
        cfg = self.cfg
        for i in range(cfg.TM):
            for j in range(cfg.TN // 4):
                self.w(f"  var c{i}_{j} = vec4<f32>(0.0);")

    def fetch(self, indent: str, k0: str) -> None:
        """Global loads of the tile starting at k0 into the registers r<p><e>."""
        w = self.w
        for p, op, rows, slots, smem in self.operands:
            for e in range(slots):
                if self.vec[p] == 4:
                    loaded = op.load_vec(p, e, f"{p}_row{e}", "gk")
                    pre, val = loaded if isinstance(loaded, tuple) else ("", loaded)   # (statements, value)
                    w(f"{indent}{{ let gk = {k0} + {p}_kl{e}; {pre}r{p}{e} = {val};")
                    for line in op.advance(p, e):
                        w(f"{indent}  {line}")
                    w(f"{indent}}}")
                    continue
                loaded = op.load(p, e, f"{p}_row{e}", "gk")
                cond, val = loaded[0], loaded[1]
                w(f"{indent}{{ let gk = {k0} + {p}_kl{e};")
                if len(loaded) > 2:  # index arithmetic the load needs (e.g. k -> (c, kh, kw))
                    w(f"{indent}  " + loaded[2])
                if self.guard or getattr(op, "gather", False):  # image gathers always check (padding)
                    w(f"{indent}  r{p}{e} = 0.0; if ({cond}) {{ r{p}{e} = {val}; }}")
                else:
                    w(f"{indent}  r{p}{e} = {val};")
                for line in op.advance(p, e):  # move per-slot index state on by BK (no divisions)
                    w(f"{indent}  {line}")
                w(f"{indent}}}")

    def stash(self, indent: str, buf: str) -> None:
        """Registers into workgroup memory buffer `buf` (an expression: 0u or 1u)."""
        w, row_words = self.w, self.row_words
        for p, op, rows, slots, smem in self.operands:
            base = f"{buf} * {self.tile_words[smem]}u"
            for e in range(slots):
                if self.vec[p] == 4 and op.fastest == "row":   # four rows at one k: one 16-byte store
                    w(f"{indent}{smem}[{base} + {p}_kl{e} * {row_words[smem]}u + ({p}_rl{e} >> 2u)] = r{p}{e};")
                elif self.vec[p] == 4:                         # four k of one row: into the transposed tile
                    for q in range(4):
                        w(f"{indent}{smem}[{base} + ({p}_kl{e} + {q}u) * {row_words[smem]}u + ({p}_rl{e} >> 2u)]"
                          f"[{p}_rl{e} & 3u] = r{p}{e}[{q}];")
                else:
                    w(f"{indent}{smem}[{base} + {p}_kl{e} * {row_words[smem]}u + ({p}_rl{e} >> 2u)]"
                      f"[{p}_rl{e} & 3u] = r{p}{e};")

    def compute(self, indent: str, buf: str) -> None:
        """The FMAs of one BK step, from workgroup memory buffer `buf`."""
        cfg, w, row_words = self.cfg, self.w, self.row_words
        w(f"{indent}let ab = {buf} * {self.tile_words['As']}u; let bb = {buf} * {self.tile_words['Bs']}u;")
        for kk in range(cfg.BK):
            for i4 in range(cfg.TM // 4):
                w(f"{indent}let a{kk}_{i4} = As[ab + {kk * row_words['As']}u + {self.row_group('ty', i4)}];")
            for j in range(cfg.TN // 4):
                w(f"{indent}let b{kk}_{j} = Bs[bb + {kk * row_words['Bs']}u + {self.col_group('tx', j)}];")
            for i in range(cfg.TM):
                a = f"a{kk}_{i // 4}[{i % 4}]"
                for j in range(cfg.TN // 4):
                    w(f"{indent}c{i}_{j} = fma(vec4<f32>({a}), b{kk}_{j}, c{i}_{j});")

    def k_loop(self) -> None:
        BK, w = self.cfg.BK, self.w
        for p, op, rows, slots, smem in self.operands:
            for e in range(slots):
                w(f"  var r{p}{e}: {'vec4<f32>' if self.vec[p] == 4 else 'f32'};")
        if self.cfg.buffers == 1:
            w(f"  for (var k0 = k_lo; k0 < K; k0 = k0 + {BK}u) {{")
            self.fetch("    ", "k0")
            self.stash("    ", "0u")
            w("    workgroupBarrier();")
            self.compute("    ", "0u")
            w("    workgroupBarrier();")
            w("  }")
            return
        # Software pipelining: while the tile in one buffer is multiplied, the next tile's global loads
        # are in flight into registers, then land in the other buffer; one barrier per tile.
        w("  if (k_lo < K) {")
        self.fetch("    ", "k_lo")
        self.stash("    ", "0u")
        w("  }")
        w("  workgroupBarrier();")
        w("  var cur = 0u;")
        w(f"  for (var k0 = k_lo; k0 < K; k0 = k0 + {BK}u) {{")
        w(f"    let more = k0 + {BK}u < K;")
        w("    if (more) {")
        self.fetch("      ", f"(k0 + {BK}u)")
        w("    }")
        self.compute("    ", "cur")
        w("    if (more) {")
        self.stash("      ", "(1u - cur)")
        w("    }")
        w("    workgroupBarrier();")
        w("    cur = 1u - cur;")
        w("  }")

    def stores(self) -> None:
        """The accumulators through the epilogue into C (bounds-checked under the guard)."""
        cfg, E, w, guard = self.cfg, self.E, self.w, self.guard
        for line in E.setup():
            w("  " + line)
        # Column-only parts of each output address are computed once, not once per row.
        for j in range(cfg.TN // 4):
            for q in range(4):
                w(f"  let gn{j}_{q} = n0 + {self.col_group('tx', j)} * 4u + {q}u;")
                if E.vec_out and q:
                    continue  # a 16-byte store needs only the first column's address
                for line in E.col_setup(f"gn{j}_{q}", f"{j}_{q}"):
                    w("  " + line)
        for i in range(cfg.TM):
            w(f"  {{ let gm = m0 + {self.row_group('ty', i // 4)} * 4u + {i % 4}u;")
            w(f"    if ({'gm < M' if guard else 'true'}) {{")
            for line in E.row_setup("gm"):
                w("    " + line)
            for j in range(cfg.TN // 4):
                if E.vec_out:
                    gn = f"gn{j}_0"
                    cond = f"{gn} < N" if guard else "true"
                    vals = ", ".join(E.value(f"c{i}_{j}[{q}]", "gm", f"gn{j}_{q}") for q in range(4))
                    w(f"    if ({cond}) {{ {E.vec_out}[({E.address('gm', gn, f'{j}_0')}) >> 2u]"
                      f" = vec4<f32>({vals}); }}")
                    continue
                for q in range(4):
                    gn = f"gn{j}_{q}"
                    cond = f"{gn} < N" if guard else "true"
                    addr = E.address("gm", gn, f"{j}_{q}")
                    w(f"    if ({cond}) {{ {E.out_binding}[{addr}]"
                      f" = {E.store(E.value(f'c{i}_{j}[{q}]', 'gm', gn))}; }}")
            w("  } }")
