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

from dataclasses import dataclass

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
    TAIL_BATCH_FIELDS,
    Epilogue,
    Operand,
    Store,
    Strided,
    Tail,
    operand_fields,
    output_fields,
    tail_fields,
)
from navitrain.wgpu.kernels.gemm_source import source
from navitrain.wgpu.param_arena import MAX_BUFFERS
from navitrain.wgpu.runtime import runtime
from navitrain.wgpu.tensor import WgpuTensor, empty, wrap

# A plain product's parameters: A and B as strided operands, C and an optional Cin as strided results.
# B's "rows" are its columns n (the operand is read as B^T: element (n, k)).
_MATRIX_FIELDS = (*GEMM_FIELDS, *operand_fields("a"), *operand_fields("b"), *output_fields("c"), *output_fields("cin"))
_MATRIX_DEFAULTS = {**GEMM_DEFAULTS, **dict.fromkeys(output_fields("cin"), 0)}
MATRIX_PARAMS = codegen.ParamBlock(*_MATRIX_FIELDS, defaults=_MATRIX_DEFAULTS)


MAX_TAIL_INPUTS = 3
# A product with a tail reading k other tensors (and keeping the product or not): MATRIX_PARAMS, then
# tail_fields(0..k-1), then output_fields("kept").
_TAIL_PARAMS = {(k, keep): codegen.ParamBlock(*_MATRIX_FIELDS, *(f for j in range(k) for f in tail_fields(j)),
                                              *(output_fields("kept") if keep else ()), *TAIL_BATCH_FIELDS,
                                              defaults=_MATRIX_DEFAULTS)
                for k in range(MAX_TAIL_INPUTS + 1) for keep in (False, True)}


def strides_broadcast_to(t, M: int, N: int) -> tuple[int, int] | None:
    """Strides of `t` (0 to 2 dims) read as an M x N matrix under broadcasting, or None where it does not
    broadcast. The GEMM epilogue only needs these: making the expanded view itself (t.expand(M, N)) is
    a whole trip through the dispatcher for every Linear layer's bias."""
    shape, stride = t.shape, t.stride()
    nd = len(shape)
    if nd > 2:
        return None
    rows = 1 if nd < 2 else shape[0]
    cols = 1 if nd < 1 else shape[-1]
    if (rows != M and rows != 1) or (cols != N and cols != 1):
        return None
    return (stride[0] if nd == 2 and rows != 1 else 0, stride[-1] if nd >= 1 and cols != 1 else 0)


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
         cin_strides: tuple[int, int, int] | None = None, config: TileConfig | None = None,
         tail: Tail | None = None, tail_inputs: tuple = (), kept: WgpuTensor | None = None,
         out_batch_lo: tuple[int, int] = (1, 0)) -> WgpuTensor:
    """out[b] = alpha * a[b] @ b[b] + beta * cin[b]; a is [B?, M, K], b [B?, K, N], out [B?, M, N]. With
    `tail`, out[b] is the tail's chain of that value; `tail_inputs` are the tensors it reads, each with
    its (row, col, batch) strides over the product (at most MAX_TAIL_INPUTS); `kept` (a tail that keeps
    its product; shaped as `out`) receives the product itself. With a tail, `out_batch_lo` (lo, stride)
    splits out's batch in two: batch b is stored at (b // lo) * out.stride(0) + (b % lo) * stride."""
    B = out.shape[0] if out.dim() == 3 else 1
    M, N = out.shape[-2], out.shape[-1]
    K = a.shape[-1]
    if M == 0 or N == 0 or B == 0:
        return out
    if cin is not None and beta == 0.0:
        cin = None
    tc = None
    if tail is not None:
        if len(tail_inputs) > MAX_TAIL_INPUTS:
            raise ValueError(f"a GEMM tail reads at most {MAX_TAIL_INPUTS} tensors, not {len(tail_inputs)}")
        if tail.keep_product != (kept is not None):
            raise ValueError("a GEMM tail that keeps its product needs `kept`, and only such a tail takes it")
        tc = _TailCall(tail, tuple(tail_inputs), None if kept is None else (kept, _over(kept)), out_batch_lo)
    elif kept is not None or out_batch_lo != (1, 0):
        raise ValueError("`kept` and a batch stored in two dimensions come with a tail")
    args = (a, b, out, alpha, beta, cin, a_batch_stride, b_batch_stride, cin_strides, tc)
    if config is None:
        # A tail leaves the tile choice to the plain product's (the same key: its cost is in the loop over K).
        kind = ("mm", a.stride(-1) == 1, b.stride(-1) == 1, B > 1, cin is not None)
        config = gemm_tuning.pick(kind, M, N, K, B, lambda cfg: _gemm(*args, cfg))
    return _gemm(*args, config)


@dataclass(frozen=True)
class _TailCall:
    """What a product with a tail is given besides its operands (see gemm())."""
    tail: Tail
    inputs: tuple              # (tensor, (row, col, batch) strides) per tensor the tail reads
    kept: tuple | None         # (tensor, its (row, col, batch) strides) receiving the product, or None
    batch_lo: tuple[int, int]  # out's batch split in two: (inner count, inner stride); (1, 0): not split


def _over(t: WgpuTensor) -> tuple[int, int, int]:
    """(row, col, batch) strides of a tensor shaped as the product ([B?, M, N])."""
    s = t.stride()
    return (s[-2], s[-1], s[0] if t.dim() == 3 else 0)


# A training step repeats the same few dozen products: what a product needs besides its operands'
# offsets and alpha/beta (the kernel, its grid, which operands are also bound as vec4 arrays) is worked
# out once per layout and kept here. Building it each time (operand descriptions, bindings text, keys)
# cost about half of a small product's host time.
_PLANS: dict = {}



def _gemm(a, b, out, alpha, beta, cin, a_batch_stride, b_batch_stride, cin_strides, tc: _TailCall | None,
          cfg: TileConfig):
    B = out.shape[0] if out.dim() == 3 else 1
    K = a.shape[-1]
    splits = cfg.splits or auto_splits(cfg, out.shape[-2], out.shape[-1], K, B)
    # A thread walks its K slice one BK step per loop pass; llvmpipe stops a kernel's loops after 65535
    # passes (kernels/loop_budget.py), so a K longer than that many steps is always split.
    splits = max(splits, -(-K // (cfg.BK * loop_budget.PASS_BUDGET)))
    if splits > 1 and K >= 2 * cfg.BK * splits:
        if tc is not None and tc.batch_lo != (1, 0):   # the summing pass writes plain strides: then a copy
            result = _gemm_split(a, b, empty(list(out.shape), out.dtype), alpha, beta, cin, a_batch_stride,
                                 b_batch_stride, cin_strides, cfg, B, splits, tc)
            return _copy_batch_split(result, out, tc.batch_lo)
        return _gemm_split(a, b, out, alpha, beta, cin, a_batch_stride, b_batch_stride, cin_strides, cfg, B, splits,
                           tc)
    return _dispatch(a, b, out, alpha, beta, cin, a_batch_stride, b_batch_stride, cin_strides, cfg, B, 0, tc)


def _copy_batch_split(result, out, out_batch_lo):
    """`result` [B, M, N] copied into out's memory, whose batch is split as gemm()'s out_batch_lo says."""
    from navitrain.wgpu.kernels import pointwise

    lo, slo = out_batch_lo
    B, M, N = result.shape
    so = out.stride()
    target = wrap(out._ws, (B // lo, lo, M, N), (so[0], slo, so[1], so[2]), out.storage_offset(), out.dtype)
    pointwise.run("copy", "a", [wrap(result._ws, (B // lo, lo, M, N), (lo * M * N, M * N, N, 1),
                                      result.storage_offset(), result.dtype)], out.dtype, "f32", out=target)
    return out


def _dispatch(a, b, out, alpha, beta, cin, a_batch_stride, b_batch_stride, cin_strides, cfg: TileConfig,
              B: int, kslice: int, tc: _TailCall | None = None):
    """One GEMM launch. With kslice, `out` is a split-K partial buffer [B * slices, M, N]."""
    M, N = out.shape[-2], out.shape[-1]
    K = a.shape[-1]
    a_off, b_off, o_off = a.elem_offset, b.elem_offset, out.elem_offset
    sa, sb, so = a.stride(), b.stride(), out.stride()
    key = (cfg, M, N, K, B, kslice, sa, sb, so, a_batch_stride, b_batch_stride, a.dtype, b.dtype, out.dtype,
           None if cin is None else cin.dtype, cin_strides, a_off % 4 == 0, b_off % 4 == 0, o_off % 4 == 0)
    tensors = ()
    if tc is not None:   # the tail's inputs, then the kept product: bound and given fields in that order
        tensors = tc.inputs + ((tc.kept,) if tc.kept is not None else ())
        key += (tc.tail, tuple(t.dtype for t, _ in tensors), tc.batch_lo[1] % 4 == 0)
    plan = _PLANS.get(key)
    if plan is None:
        if len(_PLANS) > 4096:
            _PLANS.clear()
        plan = _PLANS[key] = _plan(a, b, out, cin, a_batch_stride, b_batch_stride, cfg, B, kslice, tc)
    kernel, groups, vec_views, sab, sbb, pack = plan
    heaps = [out._ws.heap, a._ws.heap, b._ws.heap]
    if cin is not None:
        heaps.append(cin._ws.heap)
    heaps.extend(t._ws.heap for t, _ in tensors)
    for name in vec_views:  # the same heaps again, bound as vec4 arrays
        heaps.append({"a": a, "b": b, "out": out}[name]._ws.heap)
    # The parameter block in declaration order: GEMM_FIELDS, then a, b, c and cin (offset, row, k/col,
    # batch), then with a tail each of its tensors' (offset, row, col, batch) and out's batch split.
    if cin is None:
        cin_words = (0, 0, 0, 0)
    else:
        sim, sin, sib = cin_strides
        cin_words = (cin.elem_offset, sim, sin, sib)
    tail_words = [w for t, (srow, scol, sbatch) in tensors for w in (t.elem_offset, srow, scol, sbatch)]
    if tc is not None:
        tail_words += tc.batch_lo
    params = pack(M, N, K, alpha, beta, kslice, 0, 0, a_off, sa[-2], sa[-1], sab, b_off, sb[-1], sb[-2], sbb,
                  o_off, so[-2], so[-1], so[0] if out.dim() == 3 else 0, *cin_words, *tail_words)
    runtime().dispatch(kernel, tuple(heaps), params, groups)
    return out


def _plan(a, b, out, cin, a_batch_stride, b_batch_stride, cfg: TileConfig, B: int, kslice: int,
          tc: _TailCall | None = None):
    """(kernel, grid, which of a/b/out are also bound as vec4 arrays (in binding order), a batch stride,
    b batch stride, the packer of its parameter block)."""
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
    params = MATRIX_PARAMS
    tail_parts = {}
    if tc is not None:
        tail = tc.tail
        params = _TAIL_PARAMS[(len(tail.inputs), tail.keep_product)]
        loads, keep = [], ""
        for (t, _), load_type in zip(tc.inputs, tail.load_types):
            st = rt.stypes[t.dtype]
            loads.append(st.load(f"b{len(types)}[{{i}}]", load_type))
            types.append(st.wgsl)
        if tc.kept is not None:
            st = rt.stypes[tc.kept[0].dtype]
            keep = f"b{len(types)}[{{i}}] = {st.store('{v}')};"
            types.append(st.wgsl)
        tail_parts = dict(tail=tail, tail_loads=tuple(loads), tail_round=_rounded("{v}", tail.product_dtype),
                          tail_keep=keep)
    vec_names = {}
    for name, t, st, fast, (s_row, s_k), s_batch in (("a", a, st_a, a_fast, (sam, sak), sab),
                                                      ("b", b, st_b, b_fast, (sbn, sbk), sbb)):
        contiguous_step = s_k if fast == "k" else s_row
        other = s_row if fast == "k" else s_k
        rows = cfg.BM if name == "a" else cfg.BN
        if (len(types) < MAX_BUFFERS and not guard and st.wgsl == "f32" and contiguous_step == 1
                and t.elem_offset % 4 == 0
                and other % 4 == 0 and s_batch % 4 == 0 and (rows * cfg.BK) % (cfg.threads * 4) == 0):
            vec_names[name] = f"b{len(types)}"
            types.append("vec4<f32>")
    A = Strided(params, "a", "b1", st_a.wgsl, a_fast, vec_names.get("a"))
    Bop = Strided(params, "b", "b2", st_b.wgsl, b_fast, vec_names.get("b"))
    so = out.stride()
    if (len(types) < MAX_BUFFERS and st_c.wgsl == "f32" and out.dtype == torch.float32 and so[-1] == 1
            and so[-2] % 4 == 0 and N % 4 == 0 and out.elem_offset % 4 == 0 and (not batched or so[0] % 4 == 0)
            and (tc is None or tc.batch_lo[1] % 4 == 0)):
        vec_names["out"] = f"b{len(types)}"
        types.append("vec4<f32>")
    E = Epilogue(params, st_c.wgsl, Store(st_c), "c", cin=cin_wgsl, bindings=codegen.bindings(types),
                 vec_out=vec_names.get("out"), batch_var="wid.z" if kslice else "bz", **tail_parts)
    name = f"gemm_{cfg.BM}x{cfg.BN}x{cfg.BK}" + ("_split" if kslice else "") + ("_tail" if tc is not None else "")
    kernel, groups = compile_kernel(("mm", out.dtype), name, cfg, A, Bop, E, len(types), M, N, B, guard,
                                    split_k=kslice, K=K, params=params)
    return kernel, groups, tuple(vec_names), sab, sbb, params.pack_words


def _gemm_split(a, b, out, alpha, beta, cin, a_batch_stride, b_batch_stride, cin_strides, cfg: TileConfig, B: int,
                splits: int, tc: _TailCall | None = None):
    """Split-K: workgroup z = (batch, slice) writes the f32 partial product of its slice of K; one
    pointwise pass then sums the slices and applies alpha/beta (and the tail). Worth it when M x N alone
    is too few tiles to fill the GPU (a 1024^2 product is 64 tiles of 128^2 on a 132-SM card)."""
    from navitrain.wgpu.kernels import pointwise
    from navitrain.wgpu.kernels.reduction import reduce

    batched = out.dim() == 3
    M, N = out.shape[-2], out.shape[-1]
    K = a.shape[-1]
    names = pointwise.NAMES
    tail_inputs = tc.inputs if tc is not None else ()
    if tc is not None and (tc.kept is not None or 1 + (cin is not None) + len(tail_inputs) > len(names)):
        # The product kept, or too many tensors for one summing pass: the product first, then the tail over it.
        product = tc.kept[0] if tc.kept is not None else empty(list(out.shape), tc.tail.product_dtype)
        _gemm_split(a, b, product, alpha, beta, cin, a_batch_stride, b_batch_stride, cin_strides, cfg, B, splits)
        return _tail_pass(tc.tail, "a", [product], tail_inputs, out)
    kslice, slices = k_slices(K, splits, cfg.BK)
    partial = empty([B * slices, M, N], torch.float32)
    _dispatch(a, b, partial, 1.0, 0.0, None, a_batch_stride, b_batch_stride, None, cfg, B, kslice)
    # Views of the partial buffer made directly (tensor.wrap): indexing through torch costs ~20 us of
    # host time per view, which made a 1024^2 split product host-bound at 4x its GPU time (run 10).
    ws, f32 = partial._ws, torch.float32
    if slices + (cin is not None) + len(tail_inputs) <= len(names):   # the sum fused into the epilogue pass
        terms = [wrap(ws, (B, M, N), (slices * M * N, N, 1), s * M * N, f32) if batched
                 else wrap(ws, (M, N), (N, 1), s * M * N, f32) for s in range(slices)]
    else:
        summed = reduce(wrap(ws, (B, slices, M, N), (slices * M * N, M * N, N, 1), 0, f32), [1], False, "sum", f32)
        terms = [summed if batched else wrap(summed._ws, (M, N), (N, 1), 0, f32)]
    n_terms = len(terms)
    total = f"({' + '.join(names[:n_terms])}) * s0"
    scalars = [alpha]
    if cin is not None:
        sim, sin, sib = cin_strides
        cstr = [sib, sim, sin] if batched else [sim, sin]
        terms.append(cin.as_strided(list(out.shape), cstr, cin.storage_offset()))
        total += f" + {names[len(terms) - 1]} * s1"
        scalars.append(beta)
    if tc is not None:
        return _tail_pass(tc.tail, total, terms, tail_inputs, out, scalars)
    return pointwise.run(f"gemm_split{n_terms}" + ("_beta" if cin is not None else ""), total, terms, out.dtype, "f32",
                         scalars, out=out)


def _rounded(expr: str, dtype: torch.dtype) -> str:
    """WGSL of f32 value `expr` rounded to `dtype` and read back as f32: what a stored product holds."""
    if dtype == torch.float32:
        return expr
    st = runtime().stypes[dtype]
    return st.load(st.store(expr), "f32")


def _tail_pass(tail: Tail, product: str, inputs: list, tail_inputs, out, scalars=()):
    """One pointwise pass: `product` (WGSL over the first inputs and the scalars) through the tail, reading
    the tail's inputs at each element of `out` through their (row, col, batch) strides."""
    from navitrain.wgpu.kernels import pointwise

    names = pointwise.NAMES
    batched = out.dim() == 3
    views = []
    for t, (srow, scol, sbatch) in tail_inputs:
        views.append(wrap(t._ws, tuple(out.shape), (sbatch, srow, scol) if batched else (srow, scol),
                          t.storage_offset(), t.dtype))
    first = len(inputs)
    lets = [f"  let {tail.product} = {_rounded(product, tail.product_dtype)};"]
    lets += [f"  let {name} = {names[first + k]};" for k, name in enumerate(tail.inputs)]
    if tail.prelude:
        lets.append(tail.prelude)
    load_types = ["f32"] * first + list(tail.load_types)
    return pointwise.run("gemm_tail", tail.expr, inputs + views, out.dtype, "f32", list(scalars), out=out,
                         load_types=load_types, prelude="\n".join(lets))


def result_dtype(a: torch.Tensor, b: torch.Tensor) -> torch.dtype:
    if a.dtype != b.dtype:
        raise RuntimeError(f"expected m1 and m2 to have the same dtype, but got: {a.dtype} != {b.dtype}")
    return a.dtype
