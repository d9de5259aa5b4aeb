"""Generated GEMM kernels: C[b] = alpha * A[b] @ B[b] + beta * Cin[b], any strides, any float dtype.

WGSL compilers do far better with straight-line code than with loops over small arrays (a loop-and-array
tiled GEMM reached 0.83 TFLOPS on an H100 where the same tiling fully unrolled reached 33), so the kernel
text is generated from a tile configuration:
- a workgroup computes a BM x BN tile of C; each thread a TM x TN block of it, held in TM*TN/4 vec4
  accumulators (separate variables, not an array, so they stay in registers);
- per step of BK along K, the A tile is staged transposed (As[k][m]) and the B tile as is (Bs[k][n]) in
  workgroup memory as vec4s; a thread then reads TM/4 + TN/4 vec4s per k and issues TM*TN/4 vec4 FMAs;
- global loads are arranged so consecutive threads read consecutive addresses of whichever dimension of
  A (k or m) and B (n or k) is contiguous in memory, which covers A, A^T, B and B^T without copies.
Bounds are checked on every load and store (a guard-free variant is chosen when the tile divides the
problem). Configurations are chosen per shape class by navitrain.wgpu.gemm_tuning.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from navitrain.wgpu import codegen
from navitrain.wgpu.runtime import runtime
from navitrain.wgpu.tensor import WgpuTensor


@dataclass(frozen=True)
class TileConfig:
    BM: int = 64
    BN: int = 64
    BK: int = 8
    TM: int = 4
    TN: int = 4

    @property
    def threads(self) -> int:
        return (self.BM // self.TM) * (self.BN // self.TN)

    def check(self) -> None:
        if self.TN % 4 or self.BN % self.TN or self.BM % self.TM or self.TM % 4:
            raise ValueError(f"invalid GEMM tile {self}")
        if (self.BM * self.BK) % self.threads or (self.BK * self.BN) % self.threads:
            raise ValueError(f"GEMM tile {self}: tile loads do not divide among {self.threads} threads")


# Parameter words.
_M, _N, _K, _AO, _SAM, _SAK, _SAB, _BO, _SBK, _SBN, _SBB = range(11)
_CO, _SCM, _SCN, _SCB, _IO, _SIM, _SIN, _SIB, _ALPHA, _BETA = range(11, 21)


def _source(cfg: TileConfig, a_wgsl: str, b_wgsl: str, c_store, cin_wgsl: str | None,
            a_mode: str, b_mode: str, guard: bool) -> str:
    BM, BN, BK, TM, TN = cfg.BM, cfg.BN, cfg.BK, cfg.TM, cfg.TN
    WG = cfg.threads
    cols = BN // TN  # threads along n
    LA = BM * BK // WG
    LB = BK * BN // WG
    lines = []
    w = lines.append
    w("  let n0 = wid.x * %du; let m0 = wid.y * %du; let bz = wid.z;" % (BN, BM))
    w("  let M = pu(%du); let N = pu(%du); let K = pu(%du);" % (_M, _N, _K))
    w("  let a_base = pu(%du) + bz * pu(%du); let sam = pu(%du); let sak = pu(%du);" % (_AO, _SAB, _SAM, _SAK))
    w("  let b_base = pu(%du) + bz * pu(%du); let sbk = pu(%du); let sbn = pu(%du);" % (_BO, _SBB, _SBK, _SBN))
    w("  let tx = lid %% %du; let ty = lid / %du;" % (cols, cols))
    for i in range(TM):
        for j in range(TN // 4):
            w(f"  var c{i}_{j} = vec4<f32>(0.0);")
    w("  for (var k0 = 0u; k0 < K; k0 = k0 + %du) {" % BK)
    # Stage A transposed: As[k * BM + m].
    for e in range(LA):
        w(f"    {{ let idx = lid + {e * WG}u;")
        if a_mode == "k":  # consecutive threads walk k (A row-major)
            w(f"      let ml = idx / {BK}u; let kl = idx % {BK}u;")
        else:              # consecutive threads walk m (A transposed in memory)
            w(f"      let kl = idx / {BM}u; let ml = idx % {BM}u;")
        w("      let gm = m0 + ml; let gk = k0 + kl;")
        load = f"f32(b1[a_base + gm * sam + gk * sak])"
        if guard:
            w(f"      var v = 0.0; if (gm < M && gk < K) {{ v = {load}; }}")
        else:
            w(f"      let v = {load};")
        w(f"      let s = kl * {BM}u + ml; As[s >> 2u][s & 3u] = v; }}")
    for e in range(LB):
        w(f"    {{ let idx = lid + {e * WG}u;")
        if b_mode == "n":  # consecutive threads walk n (B row-major)
            w(f"      let kl = idx / {BN}u; let nl = idx % {BN}u;")
        else:              # consecutive threads walk k (B transposed in memory)
            w(f"      let nl = idx / {BK}u; let kl = idx % {BK}u;")
        w("      let gn = n0 + nl; let gk = k0 + kl;")
        load = f"f32(b2[b_base + gk * sbk + gn * sbn])"
        if guard:
            w(f"      var v = 0.0; if (gn < N && gk < K) {{ v = {load}; }}")
        else:
            w(f"      let v = {load};")
        w(f"      let s = kl * {BN}u + nl; Bs[s >> 2u][s & 3u] = v; }}")
    w("    workgroupBarrier();")
    for kk in range(BK):
        for i4 in range(TM // 4):
            w(f"    let a{kk}_{i4} = As[{kk * BM // 4}u + ty * {TM // 4}u + {i4}u];")
        for j in range(TN // 4):
            w(f"    let b{kk}_{j} = Bs[{kk * BN // 4}u + tx * {TN // 4}u + {j}u];")
        for i in range(TM):
            a = f"a{kk}_{i // 4}[{i % 4}]"
            for j in range(TN // 4):
                w(f"    c{i}_{j} = fma(vec4<f32>({a}), b{kk}_{j}, c{i}_{j});")
    w("    workgroupBarrier();")
    w("  }")
    # Epilogue: alpha * acc (+ beta * Cin), converted to C's dtype.
    w("  let c_base = pu(%du) + bz * pu(%du); let scm = pu(%du); let scn = pu(%du);" % (_CO, _SCB, _SCM, _SCN))
    w("  let alpha = pf(%du);" % _ALPHA)
    if cin_wgsl is not None:
        w("  let i_base = pu(%du) + bz * pu(%du); let sim = pu(%du); let sin = pu(%du); let beta = pf(%du);"
          % (_IO, _SIB, _SIM, _SIN, _BETA))
    for i in range(TM):
        w(f"  {{ let gm = m0 + ty * {TM}u + {i}u;")
        for j in range(TN // 4):
            for q in range(4):
                w(f"    {{ let gn = n0 + tx * {TN}u + {4 * j + q}u;")
                cond = "gm < M && gn < N" if guard else "true"
                val = f"alpha * c{i}_{j}[{q}]"
                if cin_wgsl is not None:
                    val = f"{val} + beta * f32(b3[i_base + gm * sim + gn * sin])"
                w(f"      if ({cond}) {{ b0[c_base + gm * scm + gn * scn] = {c_store(val)}; }} }}")
        w("  }")
    shared = (f"var<workgroup> As: array<vec4<f32>, {BK * BM // 4}>;\n"
              f"var<workgroup> Bs: array<vec4<f32>, {BK * BN // 4}>;\n")
    types = [c_store.wgsl, a_wgsl, b_wgsl] + ([cin_wgsl] if cin_wgsl is not None else [])
    body = "\n".join(lines)
    return codegen.PARAM_DECL + codegen.bindings(types) + f"""{shared}
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


def choose_config(M: int, N: int, K: int, batch: int) -> TileConfig:
    from navitrain.wgpu.gemm_tuning import config_for

    return config_for(M, N, K, batch)


def gemm(a: WgpuTensor, b: WgpuTensor, out: WgpuTensor, alpha: float = 1.0, beta: float = 0.0,
         cin: WgpuTensor | None = None, a_batch_stride: int = 0, b_batch_stride: int = 0,
         cin_strides: tuple[int, int, int] | None = None, config: TileConfig | None = None) -> WgpuTensor:
    """out[b] = alpha * a[b] @ b[b] + beta * cin[b]; a is [B?, M, K], b [B?, K, N], out [B?, M, N]."""
    batched = out.dim() == 3
    B = out.shape[0] if batched else 1
    M, N = out.shape[-2], out.shape[-1]
    K = a.shape[-1]
    if M == 0 or N == 0 or B == 0:
        return out
    rt = runtime()
    cfg = config or choose_config(M, N, K, B)
    cfg.check()
    sam, sak = a.stride(-2), a.stride(-1)
    sbk, sbn = b.stride(-2), b.stride(-1)
    sab = a.stride(0) if a.dim() == 3 else a_batch_stride
    sbb = b.stride(0) if b.dim() == 3 else b_batch_stride
    scm, scn = out.stride(-2), out.stride(-1)
    scb = out.stride(0) if batched else 0
    a_mode = "m" if (sam == 1 and sak != 1) else "k"
    b_mode = "k" if (sbk == 1 and sbn != 1) else "n"
    guard = M % cfg.BM != 0 or N % cfg.BN != 0 or K % cfg.BK != 0
    if cin is not None and beta == 0.0:
        cin = None
    params = codegen.Params()
    params.u(M, N, K, a.elem_offset, sam, sak, sab, b.elem_offset, sbk, sbn, sbb,
             out.elem_offset, scm, scn, scb)
    if cin is not None:
        sim, sin, sib = cin_strides
        params.u(cin.elem_offset, sim, sin, sib)
    else:
        params.u(0, 0, 0, 0)
    params.f(alpha, beta)
    st_c = rt.stypes[out.dtype]
    st_a, st_b = rt.stypes[a.dtype], rt.stypes[b.dtype]
    st_i = rt.stypes[cin.dtype] if cin is not None else None
    key = ("gemm", cfg, st_a.wgsl, st_b.wgsl, out.dtype, st_i.wgsl if st_i else None, a_mode, b_mode, guard)
    kernel = rt._kernels.get(key)
    if kernel is None:
        kernel = rt.kernel(key, f"gemm_{cfg.BM}x{cfg.BN}x{cfg.BK}_{a_mode}{b_mode}{'_guard' if guard else ''}",
                           4 if cin is not None else 3,
                           lambda: _source(cfg, st_a.wgsl, st_b.wgsl, _Store(st_c), st_i.wgsl if st_i else None,
                                           a_mode, b_mode, guard))
    heaps = (out._ws.heap, a._ws.heap, b._ws.heap) + ((cin._ws.heap,) if cin is not None else ())
    groups = (-(-N // cfg.BN), -(-M // cfg.BM), B)
    if groups[0] > codegen.MAX_GROUPS or groups[1] > codegen.MAX_GROUPS or groups[2] > codegen.MAX_GROUPS:
        raise RuntimeError(f"GEMM of {B}x{M}x{N} exceeds the dispatch grid; split the batch")
    rt.dispatch(kernel, heaps, params.pack(), groups)
    return out


def result_dtype(a: torch.Tensor, b: torch.Tensor) -> torch.dtype:
    if a.dtype != b.dtype:
        raise RuntimeError(f"expected m1 and m2 to have the same dtype, but got: {a.dtype} != {b.dtype}")
    return a.dtype
