"""Direct depthwise convolution kernels (groups == in channels == out channels): forward, grad-input,
grad-weight.

As an implicit GEMM a depthwise layer is one tiny product per channel (K = kh*kw: 9, 25, 49), so it
runs at a fraction of the memory bandwidth it is bound by (issue 23: MobileNet/EfficientNet/ConvNeXt
3.5-7x slower than CUDA). Here each output is a short sum read straight from the image:
- `correlate`: out[n, c, oy, ox] = bias[c] + sum_{i,j} x[n, c, oy*sh - ph + i, ox*sw - pw + j] * w[c, i, j]
  (w optionally rotated by 180 degrees). It is the forward, and the stride-1 grad-input (dy with the
  rotated kernel and padding k-1-p), for any kh x kw (the implicit GEMM's output phases of a strided
  grad-input come here too when the tuner picks that route).
  NCHW planes with enough outputs: a workgroup computes an output tile of one (n, c) plane, loading
  the input tile + halo into workgroup memory once; each thread computes 4 outputs along W with the
  weights in registers. Otherwise (channels_last, or small planes such as 7x7) each thread computes 4
  outputs along W reading the image directly, threads ordered along C (channels_last, coalesced) or
  along W (NCHW); channels_last f32 with C % 4 == 0 reads and writes 4 channels as one vec4.
- `_strided_grad_input` (stride 2): a gather in one dispatch, each thread 4 neighbouring dx along W,
  the taps that land on each of them fixed when the kernel is generated (from the padding's parity).
- `grad_weight`: dw[c, i, j] = sum over (n, oy, ox) of dy * x at the tap. The positions are split
  into slices so that small C still fills the GPU; NCHW: one 64-thread workgroup per (slice, channel),
  each thread keeping kh*kw sums in registers, combined by a fixed-order sum in workgroup memory;
  channels_last: one thread per (slice, channel) walking the slice's positions (coalesced along C).
  Slices land in an f32 [slices, C, kh*kw] buffer, summed by the reduction engine.
All sums are f32 products and adds (no min/max/clamp on data, so NaN and inf propagate like the CPU's);
storage dtypes through rt.stypes (f32, f16, bf16). Every tensor is read through its own strides.
"""
from __future__ import annotations

import contextlib

import torch

from navitrain.wgpu.kernels import codegen, gemm_tuning
from navitrain.wgpu.kernels.copy import copy_into
from navitrain.wgpu.kernels.reduction import reduce
from navitrain.wgpu.runtime import runtime
from navitrain.wgpu.tensor import WgpuTensor, empty

WG = 64
MAX_TAPS = 15          # per dimension: keeps a tile + halo well inside 16 KiB of workgroup memory
_FLOATS = (torch.float32, torch.float16, torch.bfloat16)
_enabled = True        # off while the tuner times the implicit GEMM against these kernels


@contextlib.contextmanager
def disabled():
    """Route depthwise layers to the implicit GEMM meanwhile (the tuner's other candidate)."""
    global _enabled
    was, _enabled = _enabled, False
    try:
        yield
    finally:
        _enabled = was


def eligible(g, *tensors, any_kernel: bool = False) -> bool:
    """Whether the direct kernels handle geometry `g` (conv.Geometry) with these tensors: depthwise
    with multiplier 1, dilation 1, stride 1 or 2, one float storage dtype. Forward and grad-weight
    want an odd square kernel; a stride-1 grad-input (`any_kernel`, the strided grad-input's phases
    have sub-kernels such as 2x1) takes any kh x kw."""
    if not _enabled or not (g.groups == g.C == g.OC <= 65535) or tuple(g.dilation) != (1, 1):
        return False
    if not all(s in (1, 2) for s in g.stride) or not (1 <= g.KH <= MAX_TAPS and 1 <= g.KW <= MAX_TAPS):
        return False
    if not any_kernel and (g.KH != g.KW or g.KH % 2 == 0):
        return False
    dtypes = {t.dtype for t in tensors if t is not None}
    return len(dtypes) == 1 and dtypes.pop() in _FLOATS


def use_direct(pass_name: str, g, image: WgpuTensor, run_direct, run_gemm) -> bool:
    """Direct kernel or implicit GEMM for this shape and `image`'s layout: timed once per shape class
    where the tuner runs (`gemm_tuning.pick_choice`), the direct kernel with tuning off (lavapipe, CI)."""

    def gemm():
        with disabled():
            run_gemm()

    layout = "nhwc" if _channels_inner(image) else "nchw"
    shape = f"{pass_name}-{layout}-k{g.KH}x{g.KW}-s{g.stride[0]}{g.stride[1]}"
    key = "conv_dw|" + gemm_tuning.shape_class(shape, g.C, g.N * g.OH * g.OW, g.H * g.W, 1)
    return gemm_tuning.pick_choice(key, {"direct": run_direct, "gemm": gemm}, "direct") == "direct"


# ---------------------------------------------------------------------------------------------
# correlate: forward and stride-1 grad-input; the stride-2 grad-input gather shares its parameters
# (x = dy, out = dx). x is C channels of IH x IW, out OH x OW, padded by (ph, pw) before the image.
# groups_w: tiles (tiled kernel) or 4-output column groups (the others) along W; tiles_h: tiles along
# H (tiled only); work: workgroups (tiled) or threads in all. Each tensor: element offset and 4 strides.
_CORRELATE_P = codegen.ParamBlock(
    "C", "IH: i32", "IW: i32", "OH", "OW", "ph: i32", "pw: i32", "groups_w", "tiles_h", "work",
    "x_off", "x_s[4]", "w_off", "w_s[4]", "o_off", "o_s[4]", "b_off", defaults={"tiles_h": 0, "b_off": 0})
_PRE = "\n" + _CORRELATE_P.wgsl()

# Tiled NCHW kernel shapes: threads along W per row (each 4 outputs) -> tile of (64 / t) rows x 4t columns.
_TILES = {2: (32, 8), 4: (16, 16), 8: (8, 32)}


def _weights(kh: int, kw: int, flip: bool, st_w) -> list[str]:
    lines = ["  let wb = w_off + c * w_s_0;"]
    for i in range(kh):
        for j in range(kw):
            si, sj = (kh - 1 - i, kw - 1 - j) if flip else (i, j)
            lines.append(f"  let w{i}_{j} = {st_w.load(f'b2[wb + {si}u * w_s_2 + {sj}u * w_s_3]', 'f32')};")
    return lines


def _fma_rows(kh: int, kw: int, sw: int, value) -> list[str]:
    """acc_q += sum_{i,j} w_ij * in(i, q*sw + j) for the 4 outputs q of a thread; value(i, t) is the
    WGSL for column t of the thread's input span in tap row i (None: a zero, skipped)."""
    lines = []
    span = 3 * sw + kw
    for i in range(kh):
        vals = [value(i, t) for t in range(span)]
        lines += [f"  let v{i}_{t} = {v};" for t, v in enumerate(vals)]
        for q in range(4):
            terms = " + ".join(f"w{i}_{j} * v{i}_{q * sw + j}" for j in range(kw))
            lines.append(f"  a{q} = a{q} + ({terms});")
    return lines


def _store(st_o, bias: bool, st_b) -> list[str]:
    b = f" + {st_b.load('b3[b_off + c]', 'f32')}" if bias else ""
    return [f"    if (ox + {q}u < OW) {{ b0[ob + (ox + {q}u) * o_s_3] = {st_o.store(f'a{q}{b}')}; }}" for q in range(4)]


def _tiled_source(kh, kw, sh, sw, flip, tw_threads, st_o, st_x, st_w, st_b) -> str:
    rows, cols = _TILES[tw_threads]
    tin_h, tin_w = (rows - 1) * sh + kh, (cols - 1) * sw + kw
    lines = [_PRE,
             "  if (group >= work) { return; }",
             "  let tiles_w = groups_w; let per_plane = tiles_w * tiles_h;",
             "  let plane = group / per_plane; let tr = group % per_plane;",
             f"  let oy0 = (tr / tiles_w) * {rows}u; let ox0 = (tr % tiles_w) * {cols}u;",
             "  let n = plane / C; let c = plane % C;",
             "  let xb = x_off + n * x_s_0 + c * x_s_1;",
             f"  let iy0 = i32(oy0 * {sh}u) - ph; let ix0 = i32(ox0 * {sw}u) - pw;",
             # the input tile + halo, zero outside the image (padding)
             f"  for (var e = lid; e < {tin_h * tin_w}u; e = e + {WG}u) {{",
             f"    let iy = iy0 + i32(e / {tin_w}u); let ix = ix0 + i32(e % {tin_w}u);",
             "    var v = 0.0;",
             f"    if (iy >= 0 && iy < IH && ix >= 0 && ix < IW) {{ v = {st_x.load('b1[xb + u32(iy) * x_s_2 + u32(ix) * x_s_3]', 'f32')}; }}",
             "    tile[e] = v;",
             "  }"]
    lines += _weights(kh, kw, flip, st_w)
    lines += ["  workgroupBarrier();",
              f"  let ty = lid / {tw_threads}u; let tx = lid % {tw_threads}u;",
              f"  let tb = ty * {sh * tin_w}u + tx * {4 * sw}u;",
              "  var a0 = 0.0; var a1 = 0.0; var a2 = 0.0; var a3 = 0.0;"]
    lines += _fma_rows(kh, kw, sw, lambda i, t: f"tile[tb + {i * tin_w + t}u]")
    lines += ["  let oy = oy0 + ty; let ox = ox0 + tx * 4u;",
              "  if (oy < OH) {",
              "    let ob = o_off + n * o_s_0 + c * o_s_1 + oy * o_s_2;"]
    lines += _store(st_o, st_b is not None, st_b)
    lines.append("  }")
    types = [st_o.wgsl, st_x.wgsl, st_w.wgsl] + ([st_b.wgsl] if st_b is not None else [])
    shared = f"var<workgroup> tile: array<f32, {tin_h * tin_w}>;"
    return codegen.module(types, "\n".join(lines), WG, shared=shared)


def _direct_source(kh, kw, sh, sw, flip, channels_inner, st_o, st_x, st_w, st_b) -> str:
    """One thread = 4 neighbouring outputs along W of one (n, c, oy); no workgroup memory."""
    if channels_inner:   # thread index (n, oy, column group, c): neighbouring threads, neighbouring channels
        split = ["  let c = gi % C; let r = gi / C; let g4 = r % groups_w; let r2 = r / groups_w;",
                 "  let oy = r2 % OH; let n = r2 / OH;"]
    else:                # (n, c, oy, column group): neighbouring threads, neighbouring columns
        split = ["  let g4 = gi % groups_w; let r = gi / groups_w; let oy = r % OH; let r2 = r / OH;",
                 "  let c = r2 % C; let n = r2 / C;"]
    lines = [_PRE, "  if (gi >= work) { return; }"] + split + [
        "  let xb = x_off + n * x_s_0 + c * x_s_1; let ox = g4 * 4u;",
        f"  let iy0 = i32(oy * {sh}u) - ph; let ix0 = i32(ox * {sw}u) - pw;"]
    span = 3 * sw + kw
    for t in range(span):
        lines.append(f"  let cok{t} = ix0 + {t} >= 0 && ix0 + {t} < IW; let cx{t} = u32(ix0 + {t}) * x_s_3;")
    for i in range(kh):
        lines.append(f"  let rok{i} = iy0 + {i} >= 0 && iy0 + {i} < IH; let rx{i} = xb + u32(iy0 + {i}) * x_s_2;")
    lines += _weights(kh, kw, flip, st_w)
    lines.append("  var a0 = 0.0; var a1 = 0.0; var a2 = 0.0; var a3 = 0.0;")

    def value(i, t):
        # select() evaluates both sides: the address is clamped to the row start when out of range,
        # so no read leaves the binding; the value read there is discarded.
        load = st_x.load(f"b1[select(xb, rx{i} + cx{t}, rok{i} && cok{t})]", "f32")
        return f"select(0.0, {load}, rok{i} && cok{t})"
    lines += _fma_rows(kh, kw, sw, value)
    lines += ["  let ob = o_off + n * o_s_0 + c * o_s_1 + oy * o_s_2;", "  {"]
    lines += _store(st_o, st_b is not None, st_b)
    lines.append("  }")
    types = [st_o.wgsl, st_x.wgsl, st_w.wgsl] + ([st_b.wgsl] if st_b is not None else [])
    return codegen.module(types, "\n".join(lines), WG)


def _vec4_source(kh, kw, sh, sw, flip, st_w, st_b) -> str:
    """channels_last f32 with C % 4 == 0 and 16-byte aligned pixels: one thread = 4 channels x 4
    neighbouring outputs along W, x read and out written as vec4 (b0 = out, b1 = x, both vec4 views)."""
    lines = [_PRE, "  if (gi >= work) { return; }",
             "  let c = (gi % (C / 4u)) * 4u; let r = gi / (C / 4u); let g4 = r % groups_w; let r2 = r / groups_w;",
             "  let oy = r2 % OH; let n = r2 / OH;",
             "  let xb = x_off + n * x_s_0 + c; let ox = g4 * 4u;",
             f"  let iy0 = i32(oy * {sh}u) - ph; let ix0 = i32(ox * {sw}u) - pw;"]
    for t in range(3 * sw + kw):
        lines.append(f"  let cok{t} = ix0 + {t} >= 0 && ix0 + {t} < IW; let cx{t} = u32(ix0 + {t}) * x_s_3;")
    for i in range(kh):
        lines.append(f"  let rok{i} = iy0 + {i} >= 0 && iy0 + {i} < IH; let rx{i} = xb + u32(iy0 + {i}) * x_s_2;")
    lines.append("  let wb = w_off + c * w_s_0;")
    for i in range(kh):
        for j in range(kw):
            si, sj = (kh - 1 - i, kw - 1 - j) if flip else (i, j)
            taps = ", ".join(st_w.load(f"b2[wb + {q}u * w_s_0 + {si}u * w_s_2 + {sj}u * w_s_3]", "f32")
                             for q in range(4))
            lines.append(f"  let w{i}_{j} = vec4<f32>({taps});")
    lines.append("  var a0 = vec4<f32>(0.0); var a1 = vec4<f32>(0.0); var a2 = vec4<f32>(0.0); var a3 = vec4<f32>(0.0);")

    def value(i, t):
        ok = f"rok{i} && cok{t}"
        return f"select(vec4<f32>(0.0), b1[select(xb, rx{i} + cx{t}, {ok}) >> 2u], {ok})"
    lines += _fma_rows(kh, kw, sw, value)
    if st_b is not None:
        taps = ", ".join(st_b.load(f"b3[b_off + c + {q}u]", "f32") for q in range(4))
        lines.append(f"  let bv = vec4<f32>({taps});")
    b = " + bv" if st_b is not None else ""
    lines.append("  let ob = o_off + n * o_s_0 + c + oy * o_s_2;")
    lines += [f"  if (ox + {q}u < OW) {{ b0[(ob + (ox + {q}u) * o_s_3) >> 2u] = a{q}{b}; }}" for q in range(4)]
    types = ["vec4<f32>", "vec4<f32>", st_w.wgsl] + ([st_b.wgsl] if st_b is not None else [])
    return codegen.module(types, "\n".join(lines), WG)


def _vec4_ok(x: WgpuTensor, out: WgpuTensor) -> bool:
    """Whether 4 neighbouring channels of every pixel of x and out are one aligned 16-byte f32 word."""
    return (x.dtype == out.dtype == torch.float32 and x.shape[1] % 4 == 0
            and all(t.stride(1) == 1 and t.elem_offset % 4 == 0 and t.stride(0) % 4 == 0
                    and t.stride(2) % 4 == 0 and t.stride(3) % 4 == 0 for t in (x, out)))


def _channels_inner(t: WgpuTensor) -> bool:
    return t.shape[1] > 1 and t.stride(1) < t.stride(3)


def correlate(x: WgpuTensor, w: WgpuTensor, bias: WgpuTensor | None, out: WgpuTensor, stride, padding,
              flip: bool = False) -> WgpuTensor:
    """out[n, c, oy, ox] = bias[c] + sum_{i,j} x[n, c, oy*s0 - p0 + i, ox*s1 - p1 + j] * w'[c, 0, i, j]
    (w' = w rotated by 180 degrees when `flip`); out's size sets the output range."""
    rt = runtime()
    N, C = x.shape[0], x.shape[1]
    _, _, OH, OW = out.shape
    kh, kw = w.shape[2], w.shape[3]
    sh, sw = stride
    st_o, st_x, st_w = rt.stypes[out.dtype], rt.stypes[x.dtype], rt.stypes[w.dtype]
    st_b = rt.stypes[bias.dtype] if bias is not None else None
    inner = _channels_inner(out)
    if not inner and OH * OW >= 128:
        tw_threads = 2 if OW <= 8 else (4 if OW <= 16 else 8)
        rows, cols = _TILES[tw_threads]
        groups_w, tiles_h = -(-OW // cols), -(-OH // rows)
        work = N * C * groups_w * tiles_h
        key = ("dw_tiled", kh, kw, sh, sw, flip, tw_threads, out.dtype, x.dtype, w.dtype, st_b and bias.dtype)
        source = lambda: _tiled_source(kh, kw, sh, sw, flip, tw_threads, st_o, st_x, st_w, st_b)
        groups = codegen.grid(work)
    else:
        groups_w, tiles_h = -(-OW // 4), 0
        work = N * C * OH * groups_w
        if inner and _vec4_ok(x, out):
            work //= 4
            key = ("dw_vec4", kh, kw, sh, sw, flip, w.dtype, st_b and bias.dtype)
            source = lambda: _vec4_source(kh, kw, sh, sw, flip, st_w, st_b)
        else:
            key = ("dw_direct", kh, kw, sh, sw, flip, inner, out.dtype, x.dtype, w.dtype, st_b and bias.dtype)
            source = lambda: _direct_source(kh, kw, sh, sw, flip, inner, st_o, st_x, st_w, st_b)
        groups = codegen.groups_for(work, WG)
    params = _correlate_params(x, w, out, bias, padding, groups_w, tiles_h, work)
    heaps = (out._ws.heap, x._ws.heap, w._ws.heap) + ((bias._ws.heap,) if bias is not None else ())
    kernel = rt.kernel(key, "conv2d_depthwise", len(heaps), source)
    rt.dispatch(kernel, heaps, params, groups)
    return out


def _correlate_params(x: WgpuTensor, w: WgpuTensor, out: WgpuTensor, bias: WgpuTensor | None, padding,
                      groups_w: int, tiles_h: int, work: int) -> bytes:
    """The parameter block of `correlate`'s kernels and of the strided grad-input gather (x = dy, out = dx)."""
    return _CORRELATE_P.pack(
        C=x.shape[1], IH=x.shape[2], IW=x.shape[3], OH=out.shape[2], OW=out.shape[3], ph=padding[0], pw=padding[1],
        groups_w=groups_w, tiles_h=tiles_h, work=work, x_off=x.elem_offset, x_s=x.stride(),
        w_off=w.elem_offset, w_s=w.stride(), o_off=out.elem_offset, o_s=out.stride(),
        b_off=bias.elem_offset if bias is not None else 0)


def forward(x: WgpuTensor, w: WgpuTensor, bias: WgpuTensor | None, g, out: WgpuTensor) -> WgpuTensor:
    if bias is not None and bias.dim() != 1:
        bias = bias.reshape(-1)
    return correlate(x, w, bias, out, g.stride, g.padding)


def grad_input(dy: WgpuTensor, w: WgpuTensor, g, dx: WgpuTensor) -> WgpuTensor:
    """Stride 1: dx is dy correlated with the rotated kernel, padded by k-1-p. Stride 2: a gather,
    one dispatch (not conv.py's four output phases, each paying for views and a launch)."""
    if tuple(g.stride) == (1, 1):
        return correlate(dy, w, None, dx, (1, 1), (g.KH - 1 - g.padding[0], g.KW - 1 - g.padding[1]), flip=True)
    return _strided_grad_input(dy, w, g, dx)


def _dgrad_source(kh, kw, sh, sw, rw, channels_inner, st_o, st_y, st_w) -> str:
    """dx[n, c, iy, ix] = sum over taps (i, j) with oy = (iy + ph - i) / sh and ox = (ix + pw - j) / sw
    exact of dy[n, c, oy, ox] * w[c, i, j]; a thread computes 4 neighbouring ix (ix0 = 4*g, so sw | ix0).
    Which (q, j) land is decided here, from rw = pw mod sw (compiled in): ix0 + q + pw - j is a
    multiple of sw exactly when q + rw - j is, and then ox = ix0/sw + pw div sw + (q + rw - j)/sw.
    Whether tap row i lands depends on iy: one test per row, the same for the thread's 4 outputs."""
    if channels_inner:
        split = ["  let c = gi % C; let r = gi / C; let g4 = r % groups_w; let r2 = r / groups_w;",
                 "  let oy = r2 % OH; let n = r2 / OH;"]
    else:
        split = ["  let g4 = gi % groups_w; let r = gi / groups_w; let oy = r % OH; let r2 = r / OH;",
                 "  let c = r2 % C; let n = r2 / C;"]
    # (names from _PRE: x = dy of IH x IW, out = dx of OH x OW; oy, ox index dx)
    lines = [_PRE, "  if (gi >= work) { return; }"] + split + [
        "  let yb = x_off + n * x_s_0 + c * x_s_1; let ox = g4 * 4u;",
        f"  let owb = i32(ox / {sw}u) + pw / {sw};"]
    taps = {(q, j): (q + rw - j) // sw for q in range(4) for j in range(kw) if (q + rw - j) % sw == 0}
    offsets = sorted(set(taps.values()))
    for d in offsets:
        name = f"{d}".replace("-", "m")
        lines.append(f"  let cok{name} = owb + {d} >= 0 && owb + {d} < IW; let cx{name} = u32(owb + {d}) * x_s_3;")
    lines += _weights(kh, kw, False, st_w)
    lines.append("  var a0 = 0.0; var a1 = 0.0; var a2 = 0.0; var a3 = 0.0;")
    for i in range(kh):
        lines.append(f"  let nh{i} = i32(oy) + ph - {i};")
        lines.append(f"  if (nh{i} >= 0 && nh{i} % {sh} == 0 && nh{i} / {sh} < IH) {{")
        lines.append(f"    let rx = yb + u32(nh{i} / {sh}) * x_s_2;")
        for d in offsets:
            name = f"{d}".replace("-", "m")
            load = st_y.load(f"b1[select(yb, rx + cx{name}, cok{name})]", "f32")
            lines.append(f"    let v{name} = select(0.0, {load}, cok{name});")
        for q in range(4):
            terms = [f"w{i}_{j} * v{f'{taps[(q, j)]}'.replace('-', 'm')}" for j in range(kw) if (q, j) in taps]
            if terms:
                lines.append(f"    a{q} = a{q} + ({' + '.join(terms)});")
        lines.append("  }")
    lines += ["  let ob = o_off + n * o_s_0 + c * o_s_1 + oy * o_s_2;", "  {"]
    lines += _store(st_o, False, None)
    lines.append("  }")
    return codegen.module([st_o.wgsl, st_y.wgsl, st_w.wgsl], "\n".join(lines), WG)


def _strided_grad_input(dy: WgpuTensor, w: WgpuTensor, g, dx: WgpuTensor) -> WgpuTensor:
    rt = runtime()
    sh, sw = g.stride
    rw = g.padding[1] % sw
    inner = _channels_inner(dx)
    col_groups = -(-g.W // 4)
    total = g.N * g.C * g.H * col_groups
    params = _correlate_params(dy, w, dx, None, g.padding, col_groups, 0, total)
    st_o, st_y, st_w = rt.stypes[dx.dtype], rt.stypes[dy.dtype], rt.stypes[w.dtype]
    key = ("dw_dgrad", g.KH, g.KW, sh, sw, rw, inner, dx.dtype, dy.dtype, w.dtype)
    kernel = rt.kernel(key, "conv2d_depthwise_grad_input", 3,
                       lambda: _dgrad_source(g.KH, g.KW, sh, sw, rw, inner, st_o, st_y, st_w))
    rt.dispatch(kernel, (dx._ws.heap, dy._ws.heap, w._ws.heap), params, codegen.groups_for(total, WG))
    return dx


# ---------------------------------------------------------------------------------------------
# grad-weight. x is IH x IW, dy OH x OW; the P = N*OH*OW positions are cut into slices of `chunk`;
# out (partial sums or dw itself) is [slices, C, taps] by offset and 3 strides; step_ox, step_oy,
# step_n: the workgroup size (64 positions) written in the radix (OW, OH).
_WGRAD_P = codegen.ParamBlock(
    "C", "IH: i32", "IW: i32", "OH", "OW", "ph: i32", "pw: i32", "chunk", "P",
    "x_off", "x_s[4]", "y_off", "y_s[4]", "o_off", "o_s[3]", "step_ox", "step_oy", "step_n")
_WPRE = "\n" + _WGRAD_P.wgsl()

_RED = 16   # taps reduced per round in workgroup memory (64 threads x 16 floats = 4 KiB)


def _wgrad_accumulate(kh, kw, sh, sw, st_x, st_y) -> list[str]:
    """Body of the loop over positions (n, oy, ox): adds dy * x at each tap to s{i}_{j}."""
    lines = [f"    let dyv = {st_y.load('b2[y_off + n * y_s_0 + c * y_s_1 + oy * y_s_2 + ox * y_s_3]', 'f32')};",
             "    let xb = x_off + n * x_s_0 + c * x_s_1;",
             f"    let iy0 = i32(oy * {sh}u) - ph; let ix0 = i32(ox * {sw}u) - pw;"]
    for j in range(kw):
        lines.append(f"    let cok{j} = ix0 + {j} >= 0 && ix0 + {j} < IW; let cx{j} = u32(ix0 + {j}) * x_s_3;")
    for i in range(kh):
        lines.append(f"    if (iy0 + {i} >= 0 && iy0 + {i} < IH) {{ let rx = xb + u32(iy0 + {i}) * x_s_2;")
        for j in range(kw):
            v = st_x.load(f"b1[rx + cx{j}]", "f32")
            lines.append(f"      if (cok{j}) {{ s{i}_{j} = s{i}_{j} + dyv * {v}; }}")
        lines.append("    }")
    return lines


def _wgrad_source(kh, kw, sh, sw, channels_inner, st_o, st_x, st_y) -> str:
    taps = kh * kw
    names = [f"s{i}_{j}" for i in range(kh) for j in range(kw)]
    decl = "  " + " ".join(f"var {s} = 0.0;" for s in names)
    if channels_inner:
        # thread = (slice, channel), walking its slice's positions in order: neighbouring threads read
        # neighbouring channels.
        lines = [_WPRE, "  let c = wid.x * 64u + lid; let sl = wid.y;",
                 "  let p0 = sl * chunk; let p1 = min(p0 + chunk, P);", decl,
                 "  if (c < C && p0 < p1) {",
                 "  var ox = p0 % OW; var oy = (p0 / OW) % OH; var n = p0 / (OW * OH);",
                 "  for (var q = p0; q < p1; q = q + 1u) {"]
        lines += _wgrad_accumulate(kh, kw, sh, sw, st_x, st_y)
        lines += ["    ox = ox + 1u; if (ox == OW) { ox = 0u; oy = oy + 1u; if (oy == OH) { oy = 0u; n = n + 1u; } }",
                  "  }"]
        lines += [f"  b0[o_off + sl * o_s_0 + c * o_s_1 + {t}u * o_s_2] = {st_o.store(s)};"
                  for t, s in enumerate(names)]
        lines.append("  }")
        return codegen.module([st_o.wgsl, st_x.wgsl, st_y.wgsl], "\n".join(lines), WG)
    # NCHW: workgroup = (slice, channel); its 64 threads take every 64th position of the slice (so
    # neighbouring threads read neighbouring columns), then sum their partial sums in a fixed order.
    lines = [_WPRE, "  let c = wid.x; let sl = wid.y;",
             "  let p0 = sl * chunk; let p1 = min(p0 + chunk, P);", decl,
             # the position split into (n, oy, ox) once; then 64 positions on is added digit by digit
             # (step_ox, step_oy, step_n: 64 in the radix (OW, OH)), no division per position
             "  let q0 = p0 + lid; var ox = q0 % OW; var oy = (q0 / OW) % OH; var n = q0 / (OW * OH);",
             f"  for (var q = q0; q < p1; q = q + {WG}u) {{"]
    lines += _wgrad_accumulate(kh, kw, sh, sw, st_x, st_y)
    lines += ["    ox = ox + step_ox; var cy = 0u; if (ox >= OW) { ox = ox - OW; cy = 1u; }",
              "    oy = oy + step_oy + cy; cy = 0u; if (oy >= OH) { oy = oy - OH; cy = 1u; }",
              "    n = n + step_n + cy;",
              "  }"]
    for t0 in range(0, taps, _RED):
        chunk = names[t0:t0 + _RED]
        lines += [f"  red[{k}u * {WG}u + lid] = {s};" for k, s in enumerate(chunk)]
        lines += ["  workgroupBarrier();",
                  f"  if (lid < {len(chunk)}u) {{",
                  f"    var total = 0.0; for (var k = 0u; k < {WG}u; k = k + 1u) {{ total = total + red[lid * {WG}u + k]; }}",
                  f"    b0[o_off + sl * o_s_0 + c * o_s_1 + ({t0}u + lid) * o_s_2] = {st_o.store('total')};",
                  "  }",
                  "  workgroupBarrier();"]
    shared = f"var<workgroup> red: array<f32, {_RED * WG}>;"
    return codegen.module([st_o.wgsl, st_x.wgsl, st_y.wgsl], "\n".join(lines), WG, shared=shared)


def _slices(C: int, P: int, channels_inner: bool) -> int:
    """Slices of the N*OH*OW positions: enough workgroups to fill a large GPU (~2048 of 64 threads for
    NCHW, ~512 for channels_last, whose workgroups each hold 64 channels), each slice at least 256
    positions long (NCHW: 4 per thread)."""
    units = -(-C // 64) if channels_inner else C
    want = -(-(512 if channels_inner else 2048) // units)
    return max(1, min(want, P // 256, 65535))


def grad_weight(dy: WgpuTensor, x: WgpuTensor, g, dw: WgpuTensor) -> WgpuTensor:
    rt = runtime()
    kh, kw = g.KH, g.KW
    sh, sw = g.stride
    P = g.N * g.OH * g.OW
    inner = _channels_inner(x)
    slices = _slices(g.C, P, inner)
    chunk = -(-P // slices)
    slices = -(-P // chunk)
    direct = slices == 1 and dw.is_contiguous()
    out = dw if direct else empty([slices, g.C, kh * kw], torch.float32)
    st_o, st_x, st_y = rt.stypes[out.dtype], rt.stypes[x.dtype], rt.stypes[dy.dtype]
    params = _WGRAD_P.pack(
        C=g.C, IH=g.H, IW=g.W, OH=g.OH, OW=g.OW, ph=g.padding[0], pw=g.padding[1], chunk=chunk, P=P,
        x_off=x.elem_offset, x_s=x.stride(), y_off=dy.elem_offset, y_s=dy.stride(),
        o_off=out.elem_offset, o_s=(0 if direct else g.C * kh * kw, kh * kw, 1),
        step_ox=WG % g.OW, step_oy=(WG // g.OW) % g.OH, step_n=WG // (g.OW * g.OH))
    key = ("dw_wgrad", kh, kw, sh, sw, inner, out.dtype, x.dtype, dy.dtype)
    kernel = rt.kernel(key, "conv2d_depthwise_grad_weight", 3,
                       lambda: _wgrad_source(kh, kw, sh, sw, inner, st_o, st_x, st_y))
    groups = (-(-g.C // 64), slices, 1) if inner else (g.C, slices, 1)
    rt.dispatch(kernel, (out._ws.heap, x._ws.heap, dy._ws.heap), params, groups)
    if direct:
        return dw
    if slices == 1:
        return copy_into(dw, out.view(g.C, 1, kh, kw))
    if dw.dtype == torch.float32 and dw.is_contiguous():
        reduce(out, [0], False, "sum", torch.float32, out=dw)
        return dw
    return copy_into(dw, reduce(out, [0], False, "sum", torch.float32).view(g.C, 1, kh, kw))
