"""Generated GEMM kernels: C = alpha * A @ B (+ beta * Cin) (+ bias), for plain matrices and for
implicit-GEMM convolution (the conv package), where an operand tile is gathered from the image on the fly.

The kernel text comes from gemm_source.py, assembled from the parts in gemm_operands.py: `Operand`s say
how to fetch element (row, k) -- a strided matrix, or a convolution's implicit im2col -- and which tile
index consecutive threads walk, so that loads are coalesced for whichever dimension is contiguous in
memory (A, A^T, B, B^T, NCHW or NHWC images); an `Epilogue` says where C[row, col] goes (any strides,
or an NCHW/NHWC image) and what is added. Bounds are checked on every load and store unless the tile
divides the problem. The tile itself (gemm_config.TileConfig) is picked by gemm_tuning.

This module is the host side: compiling a kernel once per layout (`compile_kernel`, `launch`) and the
plain matrix product `gemm()` with its split-K variant.
"""
from __future__ import annotations

import torch

from navitrain.wgpu.kernels import codegen, gemm_tuning, loop_budget

# (Re-exported, so that kernels built on GEMM and the tests need only `gemm`: gemm.TileConfig, gemm.Strided, ...)
from navitrain.wgpu.kernels.gemm_config import (  # noqa: F401
    MIN_K_STEPS,
    TARGET_WORKGROUPS,
    TileConfig,
    auto_splits,
    k_slices,
)
from navitrain.wgpu.kernels.gemm_operands import (
    GEMM_DEFAULTS,
    GEMM_FIELDS,
    Epilogue,
    Operand,
    Store,
    Strided,
    operand_fields,
    output_fields,
)
from navitrain.wgpu.kernels.gemm_source import source
from navitrain.wgpu.runtime import runtime
from navitrain.wgpu.tensor import WgpuTensor

# A plain product's parameters: A and B as strided operands, C and an optional Cin as strided results.
# B's "rows" are its columns n (the operand is read as B^T: element (n, k)).
MATRIX_PARAMS = codegen.ParamBlock(
    *GEMM_FIELDS, *operand_fields("a"), *operand_fields("b"), *output_fields("c"), *output_fields("cin"),
    defaults={**GEMM_DEFAULTS, **dict.fromkeys(output_fields("cin"), 0)})


_PACK_MATRIX = MATRIX_PARAMS.pack_words


def compile_kernel(key, name: str, cfg: TileConfig, A: Operand, B: Operand, E: Epilogue, n_heaps: int,
                   M: int, N: int, batch: int, guard: bool, split_k: int = 0, K: int = 0,
                   preamble: tuple[str, ...] = (), *, params: codegen.ParamBlock):
    """(kernel, grid) of a GEMM over an M x N x batch grid of tiles, compiled once per key. `params` is
    the kernel's parameter block (GEMM_FIELDS, then what its operands and epilogue read)."""
    rt = runtime()
    full_key = ("gemm", key, cfg, A.key, B.key, E.key, guard, bool(split_k), preamble, params)
    kernel = rt._kernels.get(full_key)
    if kernel is None:
        cfg.check()
        kernel = rt.kernel(full_key, name, n_heaps,
                           lambda: source(cfg, A, B, E, guard, params, bool(split_k), preamble))
    slices = -(-K // split_k) if split_k else 1
    groups = (-(-N // cfg.BN), -(-M // cfg.BM), batch * slices)
    if max(groups) > codegen.MAX_GROUPS:
        raise RuntimeError(f"GEMM grid {groups} exceeds {codegen.MAX_GROUPS} workgroups per dimension")
    return kernel, groups


def launch(key, name: str, cfg: TileConfig, A: Operand, B: Operand, E: Epilogue, heaps: tuple,
           packed: bytes, M: int, N: int, batch: int, guard: bool, split_k: int = 0,
           K: int = 0, preamble: tuple[str, ...] = (), *, params: codegen.ParamBlock) -> None:
    """Compile (once per key) and dispatch a GEMM over an M x N x batch grid of tiles; `packed` holds
    the values of `params`."""
    kernel, groups = compile_kernel(key, name, cfg, A, B, E, len(heaps), M, N, batch, guard, split_k, K, preamble,
                                    params=params)
    runtime().dispatch(kernel, heaps, packed, groups)


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
        kind = ("mm", a.stride(-1) == 1, b.stride(-1) == 1, B > 1, cin is not None)
        config = gemm_tuning.pick(kind, M, N, K, B, lambda cfg: _gemm(*args, cfg))
    return _gemm(*args, config)


# A training step repeats the same few dozen products: what a product needs besides its operands'
# offsets and alpha/beta (the kernel, its grid, which operands are also bound as vec4 arrays) is worked
# out once per layout and kept here. Building it each time (operand descriptions, bindings text, keys)
# cost about half of a small product's host time.
_PLANS: dict = {}



def _gemm(a, b, out, alpha, beta, cin, a_batch_stride, b_batch_stride, cin_strides, cfg: TileConfig):
    B = out.shape[0] if out.dim() == 3 else 1
    K = a.shape[-1]
    splits = cfg.splits or auto_splits(cfg, out.shape[-2], out.shape[-1], K, B)
    # A thread walks its K slice one BK step per loop pass; llvmpipe stops a kernel's loops after 65535
    # passes (kernels/loop_budget.py), so a K longer than that many steps is always split.
    splits = max(splits, -(-K // (cfg.BK * loop_budget.PASS_BUDGET)))
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
    # MATRIX_PARAMS in declaration order: GEMM_FIELDS, then a, b, c and cin (offset, row, k/col, batch).
    if cin is None:
        cin_words = (0, 0, 0, 0)
    else:
        sim, sin, sib = cin_strides
        cin_words = (cin.elem_offset, sim, sin, sib)
    params = _PACK_MATRIX(M, N, K, alpha, beta, kslice, 0, 0, a_off, sa[-2], sa[-1], sab, b_off, sb[-1], sb[-2], sbb,
                          o_off, so[-2], so[-1], so[0] if out.dim() == 3 else 0, *cin_words)
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
    A = Strided(MATRIX_PARAMS, "a", "b1", st_a.wgsl, a_fast, vec_names.get("a"))
    Bop = Strided(MATRIX_PARAMS, "b", "b2", st_b.wgsl, b_fast, vec_names.get("b"))
    so = out.stride()
    if (st_c.wgsl == "f32" and out.dtype == torch.float32 and so[-1] == 1 and so[-2] % 4 == 0 and N % 4 == 0
            and out.elem_offset % 4 == 0 and (not batched or so[0] % 4 == 0)):
        vec_names["out"] = f"b{len(types)}"
        types.append("vec4<f32>")
    E = Epilogue(MATRIX_PARAMS, st_c.wgsl, Store(st_c), "c", cin=cin_wgsl, bindings=codegen.bindings(types),
                 vec_out=vec_names.get("out"), batch_var="wid.z" if kslice else "bz")
    name = f"gemm_{cfg.BM}x{cfg.BN}x{cfg.BK}" + ("_split" if kslice else "")
    kernel, groups = compile_kernel(("mm", out.dtype), name, cfg, A, Bop, E, len(types), M, N, B, guard,
                                    split_k=kslice, K=K, params=MATRIX_PARAMS)
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
