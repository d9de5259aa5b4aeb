"""Generated GEMM kernels: C = alpha * A @ B (+ beta * Cin) (+ bias), for plain matrices and for
implicit-GEMM convolution, where an operand tile is gathered from the image on the fly.

WGSL compilers do far better with straight-line code than with loops over small arrays (a loop-and-array
tiled GEMM reached 0.83 TFLOPS on an H100 where the same tiling fully unrolled reached 33), so the kernel
text is generated from a tile configuration:
- a workgroup computes a BM x BN tile of C; each thread a TM x TN block of it, held in TM*TN/4 vec4
  accumulators (separate variables, not an array, so they stay in registers);
- per step of BK along K, the A tile is staged transposed (As[k][m]) and the B tile as is (Bs[k][n]) in
  workgroup memory as vec4s; a thread then reads TM/4 + TN/4 vec4s per k and issues TM*TN/4 vec4 FMAs;
- operands are `Operand` objects that say how to fetch element (row, k) -- a strided matrix, or a
  convolution's implicit im2col -- and which tile index consecutive threads walk, so that loads are
  coalesced for whichever dimension is contiguous in memory (A, A^T, B, B^T, NCHW or NHWC images);
  everything about a load slot that does not depend on k (its row, and for images the (n, oh, ow) of
  that row) is computed once, outside the K loop;
- an `Epilogue` says where C[row, col] goes (any strides, or an NCHW/NHWC image) and what is added.
Bounds are checked on every load and store unless the tile divides the problem.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field

import torch

from navitrain.wgpu.kernels import codegen
from navitrain.wgpu.runtime import runtime
from navitrain.wgpu.tensor import WgpuTensor


@dataclass(frozen=True)
class TileConfig:
    BM: int = 64
    BN: int = 64
    BK: int = 8
    TM: int = 4
    TN: int = 4
    buffers: int = 2   # 2: next tile's loads overlap this tile's FMAs (double-buffered workgroup memory)
    splits: int = 1    # >1: K is cut into this many slices run by separate workgroups, then summed;
                       # 0: as many slices as fill the GPU (auto_splits), for long K and a small output
    # True: a thread's vec4 groups of rows (and of columns) are spread a thread-row (column) apart, so
    # the 32 threads of a warp read 32 consecutive vec4s of the B tile (no bank conflicts) and write
    # neighbouring columns of C. False: each thread owns one contiguous TMxTN block (the first design;
    # kept so that sweeps can compare the two).
    interleave: bool = True
    # True: each k-row of the workgroup tiles is padded by one vec4 (see source()); False only for sweeps.
    pad: bool = True

    @property
    def name(self) -> str:
        return f"{self.BM}x{self.BN}x{self.BK}/{self.TM}x{self.TN}" + ("" if self.buffers == 2 else "/b1") + (
            f"/s{self.splits}" if self.splits > 1 else "/sA" if self.splits == 0 else "") + (
            "" if self.interleave else "/blk") + ("" if self.pad else "/np")

    @property
    def shared_bytes(self) -> int:
        return self.buffers * self.BK * (self.BM + self.BN + (8 if self.pad else 0)) * 4

    @property
    def threads(self) -> int:
        return (self.BM // self.TM) * (self.BN // self.TN)

    def fits(self, limits: dict) -> bool:
        """Whether the adapter can run it (threads per workgroup, workgroup memory)."""
        return (self.threads <= int(limits.get("max-compute-invocations-per-workgroup", 256))
                and self.shared_bytes <= int(limits.get("max-compute-workgroup-storage-size", 16384)))

    def check(self) -> None:
        if self.TN % 4 or self.BN % self.TN or self.BM % self.TM or self.TM % 4:
            raise ValueError(f"invalid GEMM tile {self}")
        if (self.BM * self.BK) % self.threads or (self.BK * self.BN) % self.threads:
            raise ValueError(f"GEMM tile {self}: tile loads do not divide among {self.threads} threads")


class Operand:
    """How to fetch element (row, k) of an operand. `binding` is its buffer's name in WGSL (b1, b2)."""

    fastest = "k"    # "k": consecutive threads walk k; "row": they walk rows
    key: tuple = ()

    def setup(self, p: str) -> list[str]:
        return []

    def hoist(self, p: str, e: int, row: str) -> list[str]:
        return []

    def advance(self, p: str, e: int) -> list[str]:
        """Statements run after each load of slot e: the K index moves on by BK. Operands that keep
        a decomposed K index (c, kh, kw) in variables update it here with adds and carries."""
        return []

    def load(self, p: str, e: int, row: str, k: str) -> tuple:
        """(condition, f32 value expression[, statements computing what both use]) for slot e and the
        K index `k`; the value is only read when the condition holds."""
        raise NotImplementedError


@dataclass(frozen=True)
class Strided(Operand):
    """A plain matrix: element (row, k) at base + batch*sb + row*srow + k*sk (words from `first`).
    With `vec_binding` (the same heap bound as array<vec4<f32>>), each load slot fetches four
    consecutive elements along the contiguous dimension in one 16-byte load; the caller guarantees
    the alignment (offsets and strides multiples of 4, no partial tiles)."""
    first: int            # parameter word of [offset, srow, sk, sbatch]
    binding: str
    wgsl: str
    fastest: str = "k"
    vec_binding: str | None = None

    @property
    def vec(self) -> int:
        return 4 if self.vec_binding else 1

    @property
    def key(self):
        return ("strided", self.first, self.binding, self.wgsl, self.fastest, self.vec_binding)

    def load_vec(self, p, e, row, k):
        if self.fastest == "k":    # four consecutive k of one row
            return f"{self.vec_binding}[({p}_r{e} + {k}) >> 2u]"
        return f"{self.vec_binding}[({p}_r{e} + ({k}) * {p}_sk) >> 2u]"  # four consecutive rows

    def setup(self, p):
        f = self.first
        return [f"let {p}_base = pu({f}u) + bz * pu({f + 3}u); let {p}_sr = pu({f + 1}u); let {p}_sk = pu({f + 2}u);"]

    def hoist(self, p, e, row):
        return [f"let {p}_r{e} = {p}_base + ({row}) * {p}_sr;"]

    def load(self, p, e, row, k):
        return f"({row}) < {p}_rows && ({k}) < K", f"f32({self.binding}[{p}_r{e} + ({k}) * {p}_sk])"


@dataclass
class Epilogue:
    """Where C[row, col] goes. Default: out at base + batch*sb + row*srow + col*scol (words from `first`)."""
    first: int
    out_wgsl: str
    store: object                 # callable: f32 expression -> stored expression
    cin: str | None = None        # WGSL type of a Cin operand (beta * Cin[row, col]) bound as b3
    cin_first: int = 0
    bias: str | None = None       # "row" or "col": a 1-D bias added per row / per column, bound as b3
    relu: bool = False
    extra_key: tuple = field(default_factory=tuple)
    out_binding: str = "b0"
    bindings: str = ""            # the WGSL binding declarations of the whole kernel
    batch_var: str = "bz"         # "wid.z" for split-K partials: one output slab per (batch, slice)
    # The output heap bound a second time as array<vec4<f32>> under this name: four neighbouring columns
    # are then written with one 16-byte store. The caller guarantees that four columns starting at a
    # multiple of 4 are contiguous and 16-byte aligned, and that N is a multiple of 4.
    vec_out: str | None = None

    @property
    def key(self):
        return ("plain", self.first, self.out_wgsl, self.cin, self.cin_first, self.bias, self.relu, self.extra_key,
                self.batch_var, self.vec_out)

    def setup(self) -> list[str]:
        f = self.first
        lines = [f"let c_base = pu({f}u) + {self.batch_var} * pu({f + 3}u); let scm = pu({f + 1}u); let scn = pu({f + 2}u);"]
        if self.cin is not None:
            g = self.cin_first
            lines.append(f"let i_base = pu({g}u) + bz * pu({g + 3}u); let sim = pu({g + 1}u); let sin = pu({g + 2}u);")
        if self.bias is not None:
            lines.append(f"let bias_base = pu({self.cin_first}u) + bz * pu({self.cin_first + 1}u);")
        return lines

    def row_setup(self, gm: str) -> list[str]:
        return [f"let c_row = c_base + ({gm}) * scm;"]

    def col_setup(self, gn: str, tag: str) -> list[str]:
        return []

    def address(self, gm: str, gn: str, tag: str) -> str:
        return f"c_row + ({gn}) * scn"

    def value(self, acc: str, gm: str, gn: str) -> str:
        v = f"pf({_ALPHA}u) * {acc}"
        if self.cin is not None:
            v = f"{v} + pf({_BETA}u) * f32(b3[i_base + ({gm}) * sim + ({gn}) * sin])"
        if self.bias == "row":
            v = f"{v} + f32(b3[bias_base + ({gm})])"
        elif self.bias == "col":
            v = f"{v} + f32(b3[bias_base + ({gn})])"
        if self.relu:
            v = f"relu_nan({v})"  # WGSL's max may turn NaN into 0
        return v


# Fixed parameter words shared by every GEMM kernel; operands and epilogues use words from 8 on.
_M, _N, _K, _ALPHA, _BETA, _KSPLIT = 0, 1, 2, 3, 4, 5
FIRST_FREE = 8


def source(cfg: TileConfig, A: Operand, B: Operand, E: Epilogue, guard: bool, split_k: bool = False,
           preamble: tuple[str, ...] = ()) -> str:
    """WGSL for C[bz][m, n] = sum_k A(m, k) * B(k, n), epilogue E. With split_k, workgroup z also picks
    a slice of K (length pu(_KSPLIT)) and the batch index is z / slices."""
    BM, BN, BK, TM, TN = cfg.BM, cfg.BN, cfg.BK, cfg.TM, cfg.TN
    WG = cfg.threads
    cols = BN // TN
    LA = BM * BK // WG
    LB = BK * BN // WG
    lines: list[str] = []
    w = lines.append
    w(f"  let n0 = wid.x * {BN}u; let m0 = wid.y * {BM}u;")
    w(f"  let M = pu({_M}u); let N = pu({_N}u); let Kfull = pu({_K}u);")
    if split_k:
        # z = batch * slices + slice; each slice covers [k_lo, k_hi) of K.
        w(f"  let kslice = pu({_KSPLIT}u); let slices = (Kfull + kslice - 1u) / kslice;")
        w("  let bz = wid.z / slices; let ks = wid.z % slices;")
        w("  let k_lo = ks * kslice; let K = min(Kfull, k_lo + kslice);")
    else:
        w("  let bz = wid.z; let k_lo = 0u; let K = Kfull;")
    w("  let a_rows = M; let b_rows = N;")
    for line in preamble:
        w("  " + line)
    w(f"  let tx = lid % {cols}u; let ty = lid / {cols}u;")
    rows_t = BM // TM

    def row_group(t: str, i4: int) -> str:
        """Index of the i4-th vec4 group of rows (within the tile) that thread row t owns."""
        return f"({t} + {i4 * rows_t}u)" if cfg.interleave else f"({t} * {TM // 4}u + {i4}u)"

    def col_group(t: str, j: int) -> str:
        return f"({t} + {j * cols}u)" if cfg.interleave else f"({t} * {TN // 4}u + {j}u)"
    for line in A.setup("a") + B.setup("b"):
        w("  " + line)
    # Per load slot: its tile coordinates and everything that depends on its row only.
    vec = {}
    for p, op, rows in (("a", A, BM), ("b", B, BN)):
        # (Under the guard only an operand that knows its own rows and K are whole tiles keeps vec loads.)
        v = getattr(op, "vec", 1) if not guard or getattr(op, "whole_tiles", False) else 1
        vec[p] = v if (rows * BK) % (WG * v) == 0 else 1
    LA //= vec["a"]
    LB //= vec["b"]
    for p, op, rows, slots in (("a", A, BM, LA), ("b", B, BN, LB)):
        origin = "m0" if p == "a" else "n0"
        v = vec[p]
        for e in range(slots):
            w(f"  let {p}_idx{e} = lid + {e * WG}u;")
            if op.fastest == "row":
                w(f"  let {p}_kl{e} = {p}_idx{e} / {rows // v}u; let {p}_rl{e} = ({p}_idx{e} % {rows // v}u) * {v}u;")
            else:
                w(f"  let {p}_rl{e} = {p}_idx{e} / {BK // v}u; let {p}_kl{e} = ({p}_idx{e} % {BK // v}u) * {v}u;")
            w(f"  let {p}_row{e} = {origin} + {p}_rl{e};")
            for line in op.hoist(p, e, f"{p}_row{e}"):
                w("  " + line)
    for i in range(TM):
        for j in range(TN // 4):
            w(f"  var c{i}_{j} = vec4<f32>(0.0);")
    operands = (("a", A, BM, LA, "As"), ("b", B, BN, LB, "Bs"))
    # Workgroup tiles are [k][row] in vec4s, each k-row padded by one vec4: operands loaded along K
    # store a column of the tile (consecutive threads: consecutive k, same row), and without the pad
    # those stores all hit one memory bank (8-way conflicts at BK=8, measured as the main cost of
    # weight-gradient convolutions).
    row_words = {"As": BM // 4 + cfg.pad, "Bs": BN // 4 + cfg.pad}
    tile_words = {name: BK * words for name, words in row_words.items()}   # vec4 words of one buffer

    def fetch(indent: str, k0: str) -> None:
        """Global loads of the tile starting at k0 into the registers r<p><e>."""
        for p, op, rows, slots, smem in operands:
            for e in range(slots):
                if vec[p] == 4:
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
                if guard or getattr(op, "gather", False):  # image gathers always check (padding)
                    w(f"{indent}  r{p}{e} = 0.0; if ({cond}) {{ r{p}{e} = {val}; }}")
                else:
                    w(f"{indent}  r{p}{e} = {val};")
                for line in op.advance(p, e):  # move per-slot index state on by BK (no divisions)
                    w(f"{indent}  {line}")
                w(f"{indent}}}")

    def stash(indent: str, buf: str) -> None:
        """Registers into workgroup memory buffer `buf` (an expression: 0u or 1u)."""
        for p, op, rows, slots, smem in operands:
            base = f"{buf} * {tile_words[smem]}u"
            for e in range(slots):
                if vec[p] == 4 and op.fastest == "row":   # four rows at one k: one 16-byte store
                    w(f"{indent}{smem}[{base} + {p}_kl{e} * {row_words[smem]}u + ({p}_rl{e} >> 2u)] = r{p}{e};")
                elif vec[p] == 4:                         # four k of one row: into the transposed tile
                    for q in range(4):
                        w(f"{indent}{smem}[{base} + ({p}_kl{e} + {q}u) * {row_words[smem]}u + ({p}_rl{e} >> 2u)]"
                          f"[{p}_rl{e} & 3u] = r{p}{e}[{q}];")
                else:
                    w(f"{indent}{smem}[{base} + {p}_kl{e} * {row_words[smem]}u + ({p}_rl{e} >> 2u)][{p}_rl{e} & 3u] = r{p}{e};")

    def compute(indent: str, buf: str) -> None:
        w(f"{indent}let ab = {buf} * {tile_words['As']}u; let bb = {buf} * {tile_words['Bs']}u;")
        for kk in range(BK):
            for i4 in range(TM // 4):
                w(f"{indent}let a{kk}_{i4} = As[ab + {kk * row_words['As']}u + {row_group('ty', i4)}];")
            for j in range(TN // 4):
                w(f"{indent}let b{kk}_{j} = Bs[bb + {kk * row_words['Bs']}u + {col_group('tx', j)}];")
            for i in range(TM):
                a = f"a{kk}_{i // 4}[{i % 4}]"
                for j in range(TN // 4):
                    w(f"{indent}c{i}_{j} = fma(vec4<f32>({a}), b{kk}_{j}, c{i}_{j});")

    for p, op, rows, slots, smem in operands:
        for e in range(slots):
            w(f"  var r{p}{e}: {'vec4<f32>' if vec[p] == 4 else 'f32'};")
    if cfg.buffers == 1:
        w(f"  for (var k0 = k_lo; k0 < K; k0 = k0 + {BK}u) {{")
        fetch("    ", "k0")
        stash("    ", "0u")
        w("    workgroupBarrier();")
        compute("    ", "0u")
        w("    workgroupBarrier();")
        w("  }")
    else:
        # Software pipelining: while the tile in one buffer is multiplied, the next tile's global loads
        # are in flight into registers, then land in the other buffer; one barrier per tile.
        w("  if (k_lo < K) {")
        fetch("    ", "k_lo")
        stash("    ", "0u")
        w("  }")
        w("  workgroupBarrier();")
        w("  var cur = 0u;")
        w(f"  for (var k0 = k_lo; k0 < K; k0 = k0 + {BK}u) {{")
        w(f"    let more = k0 + {BK}u < K;")
        w("    if (more) {")
        fetch("      ", f"(k0 + {BK}u)")
        w("    }")
        compute("    ", "cur")
        w("    if (more) {")
        stash("      ", "(1u - cur)")
        w("    }")
        w("    workgroupBarrier();")
        w("    cur = 1u - cur;")
        w("  }")
    for line in E.setup():
        w("  " + line)
    # Column-only parts of each output address are computed once, not once per row.
    for j in range(TN // 4):
        for q in range(4):
            w(f"  let gn{j}_{q} = n0 + {col_group('tx', j)} * 4u + {q}u;")
            if E.vec_out and q:
                continue  # a 16-byte store needs only the first column's address
            for line in E.col_setup(f"gn{j}_{q}", f"{j}_{q}"):
                w("  " + line)
    for i in range(TM):
        w(f"  {{ let gm = m0 + {row_group('ty', i // 4)} * 4u + {i % 4}u;")
        w(f"    if ({'gm < M' if guard else 'true'}) {{")
        for line in E.row_setup("gm"):
            w("    " + line)
        for j in range(TN // 4):
            if E.vec_out:
                gn = f"gn{j}_0"
                cond = f"{gn} < N" if guard else "true"
                vals = ", ".join(E.value(f"c{i}_{j}[{q}]", "gm", f"gn{j}_{q}") for q in range(4))
                w(f"    if ({cond}) {{ {E.vec_out}[({E.address('gm', gn, f'{j}_0')}) >> 2u] = vec4<f32>({vals}); }}")
                continue
            for q in range(4):
                gn = f"gn{j}_{q}"
                cond = f"{gn} < N" if guard else "true"
                addr = E.address("gm", gn, f"{j}_{q}")
                w(f"    if ({cond}) {{ {E.out_binding}[{addr}] = {E.store(E.value(f'c{i}_{j}[{q}]', 'gm', gn))}; }}")
        w("  } }")
    shared = (f"var<workgroup> As: array<vec4<f32>, {cfg.buffers * tile_words['As']}>;\n"
              f"var<workgroup> Bs: array<vec4<f32>, {cfg.buffers * tile_words['Bs']}>;\n")
    body = "\n".join(lines)
    return codegen.PARAM_DECL + E.bindings + f"""{shared}
@compute @workgroup_size({WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {{
{body}
}}
"""


class _Store:
    """Converts the f32 result to C's storage type (callable, with the WGSL element type attached)."""

    def __init__(self, st):
        self.st = st
        self.wgsl = st.wgsl

    def __call__(self, expr: str) -> str:
        return self.st.store(expr)


def compile_kernel(key, name: str, cfg: TileConfig, A: Operand, B: Operand, E: Epilogue, n_heaps: int,
                   M: int, N: int, batch: int, guard: bool, split_k: int = 0, K: int = 0,
                   preamble: tuple[str, ...] = ()):
    """(kernel, grid) of a GEMM over an M x N x batch grid of tiles, compiled once per key."""
    rt = runtime()
    full_key = ("gemm", key, cfg, A.key, B.key, E.key, guard, bool(split_k), preamble)
    kernel = rt._kernels.get(full_key)
    if kernel is None:
        cfg.check()
        kernel = rt.kernel(full_key, name, n_heaps, lambda: source(cfg, A, B, E, guard, bool(split_k), preamble))
    slices = -(-K // split_k) if split_k else 1
    groups = (-(-N // cfg.BN), -(-M // cfg.BM), batch * slices)
    if max(groups) > codegen.MAX_GROUPS:
        raise RuntimeError(f"GEMM grid {groups} exceeds {codegen.MAX_GROUPS} workgroups per dimension")
    return kernel, groups


def launch(key, name: str, cfg: TileConfig, A: Operand, B: Operand, E: Epilogue, heaps: tuple,
           params: codegen.Params, M: int, N: int, batch: int, guard: bool, split_k: int = 0,
           K: int = 0, preamble: tuple[str, ...] = ()) -> None:
    """Compile (once per key) and dispatch a GEMM over an M x N x batch grid of tiles."""
    kernel, groups = compile_kernel(key, name, cfg, A, B, E, len(heaps), M, N, batch, guard, split_k, K, preamble)
    runtime().dispatch(kernel, heaps, params.pack(), groups)


def gemm(a: WgpuTensor, b: WgpuTensor, out: WgpuTensor, alpha: float = 1.0, beta: float = 0.0,
         cin: WgpuTensor | None = None, a_batch_stride: int = 0, b_batch_stride: int = 0,
         cin_strides: tuple[int, int, int] | None = None, config: TileConfig | None = None) -> WgpuTensor:
    """out[b] = alpha * a[b] @ b[b] + beta * cin[b]; a is [B?, M, K], b [B?, K, N], out [B?, M, N]."""
    B = out.shape[0] if out.dim() == 3 else 1
    M, N = out.shape[-2], out.shape[-1]
    K = a.shape[-1]
    if M == 0 or N == 0 or B == 0:
        return out
    if cin is not None and beta == 0.0:
        cin = None
    args = (a, b, out, alpha, beta, cin, a_batch_stride, b_batch_stride, cin_strides)
    if config is None:
        from navitrain.wgpu.kernels import gemm_tuning

        kind = ("mm", a.stride(-1) == 1, b.stride(-1) == 1, B > 1, cin is not None)
        config = gemm_tuning.pick(kind, M, N, K, B, lambda cfg: _gemm(*args, cfg))
    return _gemm(*args, config)


# A training step repeats the same few dozen products: what a product needs besides its operands'
# offsets and alpha/beta (the kernel, its grid, which operands are also bound as vec4 arrays) is worked
# out once per layout and kept here. Building it each time (operand descriptions, bindings text, keys)
# cost about half of a small product's host time.
_PLANS: dict = {}
_PACK = struct.Struct("<3I2f3I12I").pack
_PACK_CIN = struct.Struct("<3I2f3I16I").pack


# Split-K with splits=0 aims at this many workgroups (a couple per SM on big GPUs), each still walking at
# least MIN_K_STEPS steps of K so that the partial products stay a small share of the work.
TARGET_WORKGROUPS = 256
MIN_K_STEPS = 16


def k_slices(K: int, splits: int, BK: int) -> tuple[int, int]:
    """(slice length, number of slices) for cutting K about `splits` ways into whole BK tiles."""
    kslice = -(-K // max(1, splits))
    kslice = -(-kslice // BK) * BK
    return kslice, -(-K // kslice)


def auto_splits(cfg: TileConfig, M: int, N: int, K: int, batch: int) -> int:
    """How many K slices a product needs to make ~TARGET_WORKGROUPS workgroups (1: no split)."""
    tiles = -(-M // cfg.BM) * -(-N // cfg.BN) * batch
    return max(1, min(-(-TARGET_WORKGROUPS // tiles), K // (cfg.BK * MIN_K_STEPS)))


def _gemm(a, b, out, alpha, beta, cin, a_batch_stride, b_batch_stride, cin_strides, cfg: TileConfig):
    B = out.shape[0] if out.dim() == 3 else 1
    K = a.shape[-1]
    splits = cfg.splits or auto_splits(cfg, out.shape[-2], out.shape[-1], K, B)
    if splits > 1 and K >= 2 * cfg.BK * splits:
        return _gemm_split(a, b, out, alpha, beta, cin, a_batch_stride, b_batch_stride, cin_strides, cfg, B, splits)
    return _dispatch(a, b, out, alpha, beta, cin, a_batch_stride, b_batch_stride, cin_strides, cfg, B, 0)


def _dispatch(a, b, out, alpha, beta, cin, a_batch_stride, b_batch_stride, cin_strides, cfg: TileConfig,
              B: int, kslice: int):
    """One GEMM launch. With kslice, `out` is a split-K partial buffer [B * slices, M, N]."""
    M, N = out.shape[-2], out.shape[-1]
    K = a.shape[-1]
    a_off, b_off, o_off = a.elem_offset, b.elem_offset, out.elem_offset
    sa, sb, so = a.stride(), b.stride(), out.stride()
    key = (cfg, M, N, K, B, kslice, sa, sb, so, a_batch_stride, b_batch_stride, a.dtype, b.dtype, out.dtype,
           None if cin is None else cin.dtype, cin_strides, a_off % 4 == 0, b_off % 4 == 0, o_off % 4 == 0)
    plan = _PLANS.get(key)
    if plan is None:
        if len(_PLANS) > 4096:
            _PLANS.clear()
        plan = _PLANS[key] = _plan(a, b, out, cin, a_batch_stride, b_batch_stride, cfg, B, kslice)
    kernel, groups, vec_views, sab, sbb = plan
    heaps = [out._ws.heap, a._ws.heap, b._ws.heap]
    if cin is not None:
        heaps.append(cin._ws.heap)
    for name in vec_views:  # the same heaps again, bound as vec4 arrays
        heaps.append({"a": a, "b": b, "out": out}[name]._ws.heap)
    words = (M, N, K, alpha, beta, kslice, 0, 0, a_off, sa[-2], sa[-1], sab, b_off, sb[-1], sb[-2], sbb,
             o_off, so[-2], so[-1], so[0] if out.dim() == 3 else 0)
    if cin is None:
        params = _PACK(*words)
    else:
        sim, sin, sib = cin_strides
        params = _PACK_CIN(*words, cin.elem_offset, sim, sin, sib)
    runtime().dispatch(kernel, tuple(heaps), params, groups)
    return out


def _plan(a, b, out, cin, a_batch_stride, b_batch_stride, cfg: TileConfig, B: int, kslice: int):
    """(kernel, grid, which of a/b/out are also bound as vec4 arrays (in binding order), a batch stride,
    b batch stride)."""
    batched = out.dim() == 3
    M, N = out.shape[-2], out.shape[-1]
    K = a.shape[-1]
    rt = runtime()
    sam, sak = a.stride(-2), a.stride(-1)
    sbk, sbn = b.stride(-2), b.stride(-1)
    sab = a.stride(0) if a.dim() == 3 else a_batch_stride
    sbb = b.stride(0) if b.dim() == 3 else b_batch_stride
    st_c, st_a, st_b = rt.stypes[out.dtype], rt.stypes[a.dtype], rt.stypes[b.dtype]
    # Split-K slices are multiples of BK, so only the last one can end inside a K step.
    guard = M % cfg.BM != 0 or N % cfg.BN != 0 or K % cfg.BK != 0
    # Coalescing: walk whichever index of the operand is contiguous in memory.
    a_fast = "row" if (sam == 1 and sak != 1) else "k"
    b_fast = "k" if (sbk == 1 and sbn != 1) else "row"
    cin_wgsl = rt.stypes[cin.dtype].wgsl if cin is not None else None
    types = [st_c.wgsl, st_a.wgsl, st_b.wgsl] + ([cin_wgsl] if cin_wgsl else [])
    vec_names = {}
    for name, t, st, fast, (s_row, s_k), s_batch in (("a", a, st_a, a_fast, (sam, sak), sab),
                                                      ("b", b, st_b, b_fast, (sbn, sbk), sbb)):
        contiguous_step = s_k if fast == "k" else s_row
        other = s_row if fast == "k" else s_k
        rows = cfg.BM if name == "a" else cfg.BN
        if (not guard and st.wgsl == "f32" and contiguous_step == 1 and t.elem_offset % 4 == 0
                and other % 4 == 0 and s_batch % 4 == 0 and (rows * cfg.BK) % (cfg.threads * 4) == 0):
            vec_names[name] = f"b{len(types)}"
            types.append("vec4<f32>")
    A = Strided(8, "b1", st_a.wgsl, a_fast, vec_names.get("a"))
    Bop = Strided(12, "b2", st_b.wgsl, b_fast, vec_names.get("b"))
    so = out.stride()
    if (st_c.wgsl == "f32" and out.dtype == torch.float32 and so[-1] == 1 and so[-2] % 4 == 0 and N % 4 == 0
            and out.elem_offset % 4 == 0 and (not batched or so[0] % 4 == 0)):
        vec_names["out"] = f"b{len(types)}"
        types.append("vec4<f32>")
    E = Epilogue(16, st_c.wgsl, _Store(st_c), cin=cin_wgsl, cin_first=20, bindings=codegen.bindings(types),
                 vec_out=vec_names.get("out"), batch_var="wid.z" if kslice else "bz")
    # Parameter words (packed by _dispatch): M N K alpha beta kslice 0 0 | a: offset, row, k, batch
    # strides | b: offset, column (n), k, batch strides (B's "rows" are its columns n) | out: offset,
    # strides | cin: offset, strides.
    name = f"gemm_{cfg.BM}x{cfg.BN}x{cfg.BK}" + ("_split" if kslice else "")
    kernel, groups = compile_kernel(("mm", out.dtype), name, cfg, A, Bop, E, len(types), M, N, B, guard,
                                    split_k=kslice, K=K)
    return kernel, groups, tuple(vec_names), sab, sbb


def _gemm_split(a, b, out, alpha, beta, cin, a_batch_stride, b_batch_stride, cin_strides, cfg: TileConfig, B: int,
                splits: int):
    """Split-K: workgroup z = (batch, slice) writes the f32 partial product of its slice of K; one
    pointwise pass then sums the slices and applies alpha/beta. Worth it when M x N alone is too few
    tiles to fill the GPU (a 1024^2 product is 64 tiles of 128^2 on a 132-SM card)."""
    from navitrain.wgpu.kernels import pointwise
    from navitrain.wgpu.kernels.reduction import reduce
    from navitrain.wgpu.tensor import empty, wrap

    batched = out.dim() == 3
    M, N = out.shape[-2], out.shape[-1]
    K = a.shape[-1]
    kslice, slices = k_slices(K, splits, cfg.BK)
    partial = empty([B * slices, M, N], torch.float32)
    _dispatch(a, b, partial, 1.0, 0.0, None, a_batch_stride, b_batch_stride, None, cfg, B, kslice)
    # Views of the partial buffer made directly (tensor.wrap): indexing through torch costs ~20 us of
    # host time per view, which made a 1024^2 split product host-bound at 4x its GPU time (run 10).
    ws, f32 = partial._ws, torch.float32
    if slices + (cin is not None) <= len(pointwise.NAMES):   # the sum fused into the epilogue pass
        terms = [wrap(ws, (B, M, N), (slices * M * N, N, 1), s * M * N, f32) if batched
                 else wrap(ws, (M, N), (N, 1), s * M * N, f32) for s in range(slices)]
    else:
        summed = reduce(wrap(ws, (B, slices, M, N), (slices * M * N, M * N, N, 1), 0, f32), [1], False, "sum", f32)
        terms = [summed if batched else wrap(summed._ws, (M, N), (N, 1), 0, f32)]
    total = " + ".join(pointwise.NAMES[:len(terms)])
    if cin is None:
        return pointwise.run(f"gemm_split{len(terms)}", f"({total}) * s0", terms, out.dtype, "f32", [alpha], out=out)
    sim, sin, sib = cin_strides
    cstr = [sib, sim, sin] if batched else [sim, sin]
    cview = cin.as_strided(list(out.shape), cstr, cin.storage_offset())
    c = pointwise.NAMES[len(terms)]
    return pointwise.run(f"gemm_split{len(terms)}_beta", f"({total}) * s0 + {c} * s1", terms + [cview], out.dtype,
                         "f32", [alpha, beta], out=out)


def result_dtype(a: torch.Tensor, b: torch.Tensor) -> torch.dtype:
    if a.dtype != b.dtype:
        raise RuntimeError(f"expected m1 and m2 to have the same dtype, but got: {a.dtype} != {b.dtype}")
    return a.dtype
