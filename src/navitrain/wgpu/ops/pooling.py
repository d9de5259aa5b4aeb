"""Pooling: max_pool2d (with indices), avg_pool2d, adaptive avg/max pooling, forward and backward.

The 1-d pools (max_pool1d, avg_pool1d, adaptive_*_pool1d) reach these 2-d ops through PyTorch's own
unsqueeze, and unbatched 3-d inputs are handled as a batch of one.

Every kernel has one thread per element of the tensor it writes, numbered in that tensor's memory
order (NCHW, or NHWC for channels_last), so writes are contiguous and, for channels_last, neighbouring
threads read neighbouring channels. Inputs are read through their strides, so no copies are made.
The backwards are gathers: each input element walks the few output windows that cover it and sums
what they send back (for max pooling, only where the saved index names it). No atomics, and the sum
runs in the same order as PyTorch's CPU scatter, so float32 gradients match it exactly.
Windows follow PyTorch's CPU kernels (ATen/native/cpu/MaxPoolKernel.cpp, AvgPoolKernel.cpp,
AdaptiveAvgPoolKernel.cpp, AdaptiveMaxPoolKernel.cpp): a NaN wins a max window (the last NaN does),
ties keep the first maximum, avg windows divide by the padded or clipped count or divisor_override.
"""
from __future__ import annotations

import torch

from navitrain.memory_format import is_channels_last_strides
from navitrain.wgpu.dispatch import cpu_fallback, implements
from navitrain.wgpu.kernels import codegen
from navitrain.wgpu.runtime import runtime
from navitrain.wgpu.tensor import empty

aten = torch.ops.aten
WG = 256

_LOWEST = {"f32": "bitcast<f32>(0xff800000u)", "i32": "(-2147483647 - 1)", "i64": "(-9223372036854775807li - 1li)"}
_ZERO = {"f32": "0.0", "i32": "0", "i64": "0li"}

# NaN test on the bits: naga compiles `v != v` to an ordered comparison, false for NaN (seen on lavapipe).
IS_NAN = "fn pool_is_nan(v: f32) -> bool { return (bitcast<u32>(v) & 0x7fffffffu) > 0x7f800000u; }\n"


# -- layouts ------------------------------------------------------------------------------------
def suggests_channels_last(t: torch.Tensor) -> bool:
    """PyTorch's `t.suggest_memory_format() == torch.channels_last` (c10's rule, navitrain.memory_format)."""
    return t.dim() == 4 and is_channels_last_strides(t.shape, t.stride())


def new_output(shape, dtype: torch.dtype, channels_last: bool):
    """A new tensor of `shape` (3-d or 4-d), NCHW-contiguous or channels_last like PyTorch lays it out."""
    if not channels_last:
        return empty(shape, dtype)
    n, c, h, w = shape
    return empty(shape, dtype, (h * w * c, 1, w * c, c))


def as_4d(shape) -> tuple[int, int, int, int]:
    """(N, C, H, W) of a 3-d (unbatched) or 4-d shape."""
    return (1, *shape) if len(shape) == 3 else tuple(shape)


def strides_4d(t: torch.Tensor) -> tuple[int, int, int, int]:
    s = t.stride()
    return (0, *s) if t.dim() == 3 else tuple(s)


def decompose(channels_last: bool, c: str, h: str, w: str) -> str:
    """WGSL giving n, c, h, w of thread `gi` over (C, H, W) sizes named by `c`, `h`, `w`, in memory order."""
    if channels_last:
        return (f"  let c = gi % {c}; var t = gi / {c}; let w = t % {w}; t = t / {w};\n"
                f"  let h = t % {h}; let n = t / {h};\n")
    return (f"  let w = gi % {w}; var t = gi / {w}; let h = t % {h}; t = t / {h};\n"
            f"  let c = t % {c}; let n = t / {c};\n")


def compute_type(dtype: torch.dtype, floats_only: bool = False) -> str | None:
    """The WGSL type a pooling kernel computes `dtype` in, or None when there is no kernel for it."""
    st = runtime().stypes.get(dtype)
    if st is None or not st.has_kernels or dtype == torch.bool:
        return None
    if dtype.is_floating_point:
        return "f32"
    return None if floats_only else st.compute


def dict_packer(block: codegen.ParamBlock):
    """block.pack(**values) for a dict of values, at the cost of one struct.pack (launches here gather
    their values in dicts; the checked keyword pack() adds ~10 us per launch). Single-word fields only."""
    if any(count is not None for _, _, count, _ in block.fields):
        raise ValueError("dict_packer: array fields need the keyword pack()")
    pack, names, defaults = block.pack_words, tuple(f[0] for f in block.fields), block.defaults
    return lambda values: pack(*[values[n] if n in values else defaults[n] for n in names])


def _geometry(prefix: str, t: torch.Tensor) -> dict:
    s = strides_4d(t)
    return {f"{prefix}_off": t.elem_offset, **{f"{prefix}{d}": st for d, st in zip("NCHW", s)}}


def has_kernel(*dtypes: torch.dtype, floats_only: bool = True) -> bool:
    """Whether kernels here handle these dtypes; others take the counted CPU fallback (float64, ...)."""
    return all(compute_type(d, floats_only) is not None for d in dtypes)


# -- argument checks and output sizes (PyTorch's Pool.h) -------------------------------------------
def _pair(value, name: str, op: str, allow_empty: bool = False, default=None) -> tuple[int, int]:
    if isinstance(value, int):
        value = [value]
    value = list(value)
    if allow_empty and not value:
        return default
    if len(value) not in (1, 2):
        raise RuntimeError(f"{op}: {name} must either be {'omitted, ' if allow_empty else ''}a single int, "
                           "or a tuple of two ints")
    return (int(value[0]), int(value[-1]))


def pooling_output_size(size: int, kernel: int, pad: int, stride: int, dilation: int, ceil_mode: bool) -> int:
    out = (size + 2 * pad - dilation * (kernel - 1) - 1 + (stride - 1 if ceil_mode else 0)) // stride + 1
    if ceil_mode and (out - 1) * stride >= size + pad:
        out -= 1  # the last window must start inside the input or its left padding
    return out


def _check_input(x, op: str) -> None:
    if x.dim() not in (3, 4) or any(s == 0 for s in x.shape[1:]):
        raise RuntimeError(f"{op}: Expected 3D or 4D (batch mode) tensor with optional 0 dim batch size for "
                           f"input, but got: {list(x.shape)}")


def _window_args(x, kernel_size, stride, padding, dilation, ceil_mode, op: str, effective_pad: bool):
    """Checked (kH, kW), (sH, sW), (pH, pW), (dH, dW) and the output (OH, OW)."""
    k = _pair(kernel_size, "kernel_size", op)
    s = _pair(stride, "stride", op, allow_empty=True, default=k)
    p = _pair(padding, "padding", op)
    d = _pair(dilation, "dilation", op)
    _check_input(x, op)
    if min(k) <= 0:
        raise RuntimeError(f"kernel size should be greater than zero, but got kH: {k[0]} kW: {k[1]}")
    if min(s) <= 0:
        raise RuntimeError(f"stride should be greater than zero, but got dH: {s[0]} dW: {s[1]}")
    if min(d) <= 0:
        raise RuntimeError(f"dilation should be greater than zero, but got dilationH: {d[0]} dilationW: {d[1]}")
    if min(p) < 0:
        raise RuntimeError(f"pad must be non-negative, but got pad: {min(p)}")
    for kk, pp, dd in zip(k, p, d):
        limit = ((kk - 1) * dd + 1) // 2 if effective_pad else kk // 2
        if pp > limit:
            raise RuntimeError(f"pad should be at most half of effective kernel size, but got pad={pp}, "
                               f"kernel_size={kk} and dilation={dd}" if effective_pad else
                               f"pad should be at most half of kernel size, but got pad={pp} and kernel_size={kk}")
    ih, iw = x.shape[-2], x.shape[-1]
    oh = pooling_output_size(ih, k[0], p[0], s[0], d[0], ceil_mode)
    ow = pooling_output_size(iw, k[1], p[1], s[1], d[1], ceil_mode)
    if oh < 1 or ow < 1:
        raise RuntimeError(f"Given input size: ({x.shape[-3]}x{ih}x{iw}). Calculated output size: "
                           f"({x.shape[-3]}x{oh}x{ow}). Output size is too small")
    return k, s, p, d, (oh, ow)


def _window_values(k, s, p, d) -> dict:
    return {"kH": k[0], "kW": k[1], "stH": s[0], "stW": s[1], "pH": p[0], "pW": p[1], "dH": d[0], "dW": d[1]}


# -- forward kernels ----------------------------------------------------------------------------
# kinds: "max" / "avg" (fixed windows), "amax" / "aavg" (adaptive windows)
_WINDOW_NAMES = ("kH", "kW", "stH", "stW", "pH", "pW", "dH", "dW", "include_pad", "divisor")
_WINDOW = tuple(f"{name}: i32" for name in _WINDOW_NAMES)
# Adaptive windows have no fixed window, and only avg pooling has include_pad and a divisor: the
# kernels that do not read a field launch with it 0.
_WINDOW_DEFAULTS = dict.fromkeys(_WINDOW_NAMES, 0)
_FWD = codegen.ParamBlock(
    "total", "C", "OH", "OW", "IH", "IW", "x_off", "xN", "xC", "xH", "xW", "out_off", "idx_off", *_WINDOW,
    defaults=_WINDOW_DEFAULTS)
_FWD_PACK = dict_packer(_FWD)

_FIXED_WINDOW = """
  let hs = i32(oh * u32(stH)) - pH; let ws = i32(ow * u32(stW)) - pW;
"""

_ADAPTIVE_WINDOW = """
  let h0 = i32((oh * IH) / OH); let h1 = i32(((oh + 1u) * IH + OH - 1u) / OH);
  let w0 = i32((ow * IW) / OW); let w1 = i32(((ow + 1u) * IW + OW - 1u) / OW);
"""


def _forward_source(kind: str, x_st, out_st, idx_st, compute: str, channels_last: bool) -> str:
    load = x_st.load("b1[rb + u32(iw) * xW]", compute)
    body = ["  if (gi >= total) { return; }", decompose(channels_last, "C", "OH", "OW"),
            "  let oh = h; let ow = w;", "  let xb = x_off + n * xN + c * xC;"]
    if kind in ("max", "amax"):
        if kind == "max":
            body.append(_FIXED_WINDOW)
            # The first tap inside the input, and one past the last tap (as the CPU kernel walks them).
            body.append("""
  var h0 = hs; if (h0 < 0) { h0 = h0 + ((-h0 + dH - 1) / dH) * dH; }
  var w0 = ws; if (w0 < 0) { w0 = w0 + ((-w0 + dW - 1) / dW) * dW; }
  let h1 = min(hs + (kH - 1) * dH + 1, i32(IH)); let w1 = min(ws + (kW - 1) * dW + 1, i32(IW));
  let sh = dH; let sw = dW;""")
        else:
            body.append(_ADAPTIVE_WINDOW + "  let sh = 1; let sw = 1;")
        nan = " || pool_is_nan(v)" if compute == "f32" else ""
        body.append(f"""
  var best: {compute} = {_LOWEST[compute]}; var at = h0 * i32(IW) + w0;
  for (var ih = h0; ih < h1; ih = ih + sh) {{
    let rb = xb + u32(ih) * xH;
    for (var iw = w0; iw < w1; iw = iw + sw) {{
      let v = {load};
      if (v > best{nan}) {{ best = v; at = ih * i32(IW) + iw; }}
    }}
  }}
  b0[out_off + gi] = {out_st.store("best")};
  b2[idx_off + gi] = {idx_st.store("at")};""")
    else:
        if kind == "avg":
            body.append(_FIXED_WINDOW)
            body.append("""
  var he = min(hs + kH, i32(IH) + pH); var we = min(ws + kW, i32(IW) + pW);
  let padded = (he - hs) * (we - ws);
  let h0 = max(hs, 0); let w0 = max(ws, 0); he = min(he, i32(IH)); we = min(we, i32(IW));
  var count = select((he - h0) * (we - w0), padded, include_pad != 0);
  if (divisor != 0) { count = divisor; }""")
            finish = f"acc / {compute}(count)"
        else:
            body.append(_ADAPTIVE_WINDOW + "  let he = h1; let we = w1;")
            finish = "acc / f32(h1 - h0) / f32(w1 - w0)"
        body.append(f"""
  var acc: {compute} = {_ZERO[compute]};
  var r: {compute} = {_ZERO[compute]};
  if (h0 < he && w0 < we) {{
    for (var ih = h0; ih < he; ih = ih + 1) {{
      let rb = xb + u32(ih) * xH;
      for (var iw = w0; iw < we; iw = iw + 1) {{ acc = acc + {load}; }}
    }}
    r = {finish};
  }}
  b0[out_off + gi] = {out_st.store("r")};""")
    types = [out_st.wgsl, x_st.wgsl] + ([idx_st.wgsl] if kind in ("max", "amax") else [])
    return codegen.module(types, _FWD.wgsl() + "\n".join(body), WG, helpers=IS_NAN)


def _run_forward(kind: str, x, out_hw, values: dict, compute: str):
    rt = runtime()
    cl = suggests_channels_last(x)
    N, C, IH, IW = as_4d(x.shape)
    OH, OW = out_hw
    shape = (*x.shape[:-2], OH, OW)
    out = new_output(shape, x.dtype, cl)
    with_idx = kind in ("max", "amax")
    idx = new_output(shape, torch.int64, cl) if with_idx else None
    total = out.numel()
    if total == 0:
        return (out, idx) if with_idx else out
    values = dict(values, total=total, C=C, OH=OH, OW=OW, IH=IH, IW=IW, out_off=out.elem_offset,
                  idx_off=idx.elem_offset if with_idx else 0, **_geometry("x", x))
    x_st, out_st, idx_st = rt.stypes[x.dtype], rt.stypes[out.dtype], rt.stypes[torch.int64]
    key = ("pool_fwd", kind, x.dtype, compute, cl)
    kernel = rt.kernel(key, f"pool_{kind}", 3 if with_idx else 2,
                       lambda: _forward_source(kind, x_st, out_st, idx_st, compute, cl))
    heaps = (out._ws.heap, x._ws.heap) + ((idx._ws.heap,) if with_idx else ())
    rt.dispatch(kernel, heaps, _FWD_PACK(values), codegen.groups_for(total, WG))
    return (out, idx) if with_idx else out


# -- backward kernels (gathers) -------------------------------------------------------------------
_BWD = codegen.ParamBlock(
    "total", "C", "OH", "OW", "IH", "IW", "g_off", "gN", "gC", "gH", "gW", "out_off",
    "i_off", "iN", "iC", "iH", "iW", *_WINDOW,
    defaults=dict(_WINDOW_DEFAULTS, i_off=0, iN=0, iC=0, iH=0, iW=0))  # i_*: the saved indices, max pools only
_BWD_PACK = dict_packer(_BWD)


def _backward_source(kind: str, g_st, out_st, idx_st, channels_last: bool) -> str:
    grad = g_st.load("b1[gb + u32(oh) * gH + u32(ow) * gW]", "f32")
    body = ["  if (gi >= total) { return; }", decompose(channels_last, "C", "IH", "IW"),
            "  let gb = g_off + n * gN + c * gC;"]
    if kind in ("max", "avg"):
        # Outputs whose window [o * stride - pad, + span] holds this element, in padded coordinates.
        span_h, span_w = ("(kH - 1) * dH", "(kW - 1) * dW") if kind == "max" else ("kH - 1", "kW - 1")
        body.append(f"""
  let hp = i32(h) + pH; let wp = i32(w) + pW;
  let ah = hp - ({span_h}); let aw = wp - ({span_w});
  let oh0 = select(0, (ah + stH - 1) / stH, ah > 0); let oh1 = min(i32(OH) - 1, hp / stH);
  let ow0 = select(0, (aw + stW - 1) / stW, aw > 0); let ow1 = min(i32(OW) - 1, wp / stW);""")
    else:
        body.append("""
  let oh0 = i32((h * OH) / IH); let oh1 = min(i32(OH) - 1, i32(((h + 1u) * OH - 1u) / IH));
  let ow0 = i32((w * OW) / IW); let ow1 = min(i32(OW) - 1, i32(((w + 1u) * OW - 1u) / IW));""")
    body.append("  var acc = 0.0;")
    body.append("  for (var oh = oh0; oh <= oh1; oh = oh + 1) {")
    if kind == "max":
        body.append("    if ((hp - oh * stH) % dH != 0) { continue; }")
    elif kind == "avg":
        body.append("""    let hs = oh * stH - pH; let he = min(hs + kH, i32(IH) + pH);
    let ph = he - hs; let ch = min(he, i32(IH)) - max(hs, 0);""")
    else:
        body.append("""    let h0 = (u32(oh) * IH) / OH; let h1 = ((u32(oh) + 1u) * IH + OH - 1u) / OH;
    if (h < h0 || h >= h1) { continue; }""")
    body.append("    for (var ow = ow0; ow <= ow1; ow = ow + 1) {")
    if kind in ("max", "amax"):
        if kind == "max":
            body.append("      if ((wp - ow * stW) % dW != 0) { continue; }")
        else:
            body.append("""      let w0 = (u32(ow) * IW) / OW; let w1 = ((u32(ow) + 1u) * IW + OW - 1u) / OW;
      if (w < w0 || w >= w1) { continue; }""")
        at = idx_st.load("b2[ib + u32(oh) * iH + u32(ow) * iW]", "i32")
        body.append(f"      if ({at} == me) {{ acc = acc + {grad}; }}")
        body.insert(3, "  let ib = i_off + n * iN + c * iC; let me = i32(h * IW + w);")
    elif kind == "avg":
        body.append(f"""      let ws = ow * stW - pW; let we = min(ws + kW, i32(IW) + pW);
      var count = select(ch * (min(we, i32(IW)) - max(ws, 0)), ph * (we - ws), include_pad != 0);
      if (divisor != 0) {{ count = divisor; }}
      acc = acc + {grad} / f32(count);""")
    else:
        body.append(f"""      let w0 = (u32(ow) * IW) / OW; let w1 = ((u32(ow) + 1u) * IW + OW - 1u) / OW;
      if (w < w0 || w >= w1) {{ continue; }}
      acc = acc + {grad} / f32(h1 - h0) / f32(w1 - w0);""")
    body.append("    }\n  }")
    body.append(f"  b0[out_off + gi] = {out_st.store('acc')};")
    types = [out_st.wgsl, g_st.wgsl] + ([idx_st.wgsl] if kind in ("max", "amax") else [])
    return codegen.module(types, _BWD.wgsl() + "\n".join(body), WG)


def _run_backward(kind: str, grad_output, x, indices, values: dict):
    rt = runtime()
    cl = suggests_channels_last(x)
    grad_input = new_output(x.shape, x.dtype, cl)
    total = grad_input.numel()
    if total == 0:
        return grad_input
    N, C, IH, IW = as_4d(x.shape)
    OH, OW = grad_output.shape[-2], grad_output.shape[-1]
    with_idx = indices is not None
    values = dict(values, total=total, C=C, OH=OH, OW=OW, IH=IH, IW=IW, out_off=grad_input.elem_offset,
                  **_geometry("g", grad_output), **(_geometry("i", indices) if with_idx else {}))
    g_st, out_st = rt.stypes[grad_output.dtype], rt.stypes[x.dtype]
    idx_st = rt.stypes[indices.dtype] if with_idx else None
    key = ("pool_bwd", kind, grad_output.dtype, x.dtype, indices.dtype if with_idx else None, cl)
    kernel = rt.kernel(key, f"pool_{kind}_backward", 3 if with_idx else 2,
                       lambda: _backward_source(kind, g_st, out_st, idx_st, cl))
    heaps = (grad_input._ws.heap, grad_output._ws.heap) + ((indices._ws.heap,) if with_idx else ())
    rt.dispatch(kernel, heaps, _BWD_PACK(values), codegen.groups_for(total, WG))
    return grad_input


def _check_grad_shape(grad_output, x, out_hw, op: str) -> None:
    expected = (*x.shape[:-2], *out_hw)
    if tuple(grad_output.shape) != expected:
        raise RuntimeError(f"{op}: expected grad_output of shape {list(expected)}, but got {list(grad_output.shape)}")


# -- max_pool2d -----------------------------------------------------------------------------------
@implements(aten.max_pool2d_with_indices.default)
def max_pool2d_with_indices(x, kernel_size, stride=(), padding=0, dilation=1, ceil_mode=False):
    if not has_kernel(x.dtype, floats_only=False):
        args = (x, kernel_size, stride, padding, dilation, ceil_mode)
        return cpu_fallback(aten.max_pool2d_with_indices.default, args, {})
    k, s, p, d, out_hw = _window_args(x, kernel_size, stride, padding, dilation, ceil_mode, "max_pool2d", True)
    return _run_forward("max", x, out_hw, _window_values(k, s, p, d), compute_type(x.dtype))


@implements(aten.max_pool2d_with_indices_backward.default)
def max_pool2d_with_indices_backward(grad_output, x, kernel_size, stride, padding, dilation, ceil_mode, indices):
    if not has_kernel(grad_output.dtype, x.dtype):
        args = (grad_output, x, kernel_size, stride, padding, dilation, ceil_mode, indices)
        return cpu_fallback(aten.max_pool2d_with_indices_backward.default, args, {})
    k, s, p, d, out_hw = _window_args(x, kernel_size, stride, padding, dilation, ceil_mode, "max_pool2d", True)
    _check_grad_shape(grad_output, x, out_hw, "max_pool2d_with_indices_backward")
    _check_grad_shape(indices, x, out_hw, "max_pool2d_with_indices_backward (indices)")
    return _run_backward("max", grad_output, x, indices, _window_values(k, s, p, d))


# -- avg_pool2d -----------------------------------------------------------------------------------
def _avg_values(k, s, p, count_include_pad, divisor_override) -> dict:
    if divisor_override is not None and divisor_override == 0:
        raise RuntimeError("divisor must be not zero")
    return dict(_window_values(k, s, p, (1, 1)), include_pad=int(bool(count_include_pad)),
                divisor=int(divisor_override or 0))


@implements(aten.avg_pool2d.default)
def avg_pool2d(x, kernel_size, stride=(), padding=0, ceil_mode=False, count_include_pad=True, divisor_override=None):
    if not (has_kernel(x.dtype) or x.dtype == torch.int64):  # the CPU averages int64 too, no other integers
        args = (x, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)
        return cpu_fallback(aten.avg_pool2d.default, args, {})
    k, s, p, _, out_hw = _window_args(x, kernel_size, stride, padding, 1, ceil_mode, "avg_pool2d", False)
    return _run_forward("avg", x, out_hw, _avg_values(k, s, p, count_include_pad, divisor_override),
                        compute_type(x.dtype))


@implements(aten.avg_pool2d_backward.default)
def avg_pool2d_backward(grad_output, x, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override):
    if not has_kernel(grad_output.dtype, x.dtype):
        args = (grad_output, x, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)
        return cpu_fallback(aten.avg_pool2d_backward.default, args, {})
    k, s, p, _, out_hw = _window_args(x, kernel_size, stride, padding, 1, ceil_mode, "avg_pool2d", False)
    _check_grad_shape(grad_output, x, out_hw, "avg_pool2d_backward")
    return _run_backward("avg", grad_output, x, None, _avg_values(k, s, p, count_include_pad, divisor_override))


# -- adaptive pooling -----------------------------------------------------------------------------
def _adaptive_args(x, output_size, op: str) -> tuple[int, int]:
    size = [output_size] if isinstance(output_size, int) else list(output_size)
    if len(size) != 2:
        raise RuntimeError(f"{op}: output_size must be 2")
    if x.dim() not in (3, 4) or any(s == 0 for s in x.shape[-3:]):
        raise RuntimeError(f"{op}(): Expected 3D or 4D tensor, but got {list(x.shape)}")
    if min(size) < 0:
        raise RuntimeError(f"{op}: elements of output_size must be greater than or equal to 0 but received "
                           f"{{{size[0]}, {size[1]}}}")
    return int(size[0]), int(size[1])


@implements(aten._adaptive_avg_pool2d.default)
def adaptive_avg_pool2d(x, output_size):
    if not has_kernel(x.dtype):
        return cpu_fallback(aten._adaptive_avg_pool2d.default, (x, output_size), {})
    out_hw = _adaptive_args(x, output_size, "adaptive_avg_pool2d")
    if out_hw == (1, 1) and not suggests_channels_last(x) and x.numel():
        # Global average pooling of NCHW planes: a mean over H*W, where the reduction engine gives each
        # long plane a workgroup (one thread per plane would read memory with a stride of H*W).
        from navitrain.wgpu.kernels.reduction import reduce

        return reduce(x, [-2, -1], True, "mean", x.dtype)
    return _run_forward("aavg", x, out_hw, {}, "f32")


@implements(aten._adaptive_avg_pool2d_backward.default)
def adaptive_avg_pool2d_backward(grad_output, x):
    if not has_kernel(grad_output.dtype, x.dtype):
        return cpu_fallback(aten._adaptive_avg_pool2d_backward.default, (grad_output, x), {})
    if grad_output.dim() != x.dim():
        raise RuntimeError("adaptive_avg_pool2d_backward: grad_output and input must have the same number of dims")
    _adaptive_args(x, grad_output.shape[-2:], "adaptive_avg_pool2d_backward")
    return _run_backward("aavg", grad_output, x, None, {})


@implements(aten.adaptive_max_pool2d.default)
def adaptive_max_pool2d(x, output_size):
    if not has_kernel(x.dtype):
        return cpu_fallback(aten.adaptive_max_pool2d.default, (x, output_size), {})
    out_hw = _adaptive_args(x, output_size, "adaptive_max_pool2d")
    return _run_forward("amax", x, out_hw, {}, "f32")


@implements(aten.adaptive_max_pool2d_backward.default)
def adaptive_max_pool2d_backward(grad_output, x, indices):
    if not has_kernel(grad_output.dtype, x.dtype):
        return cpu_fallback(aten.adaptive_max_pool2d_backward.default, (grad_output, x, indices), {})
    out_hw = _adaptive_args(x, grad_output.shape[-2:], "adaptive_max_pool2d_backward")
    _check_grad_shape(indices, x, out_hw, "adaptive_max_pool2d_backward (indices)")
    return _run_backward("amax", grad_output, x, indices, {})
