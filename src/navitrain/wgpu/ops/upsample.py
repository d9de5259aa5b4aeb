"""Upsampling: nearest, nearest-exact and (bi)linear, 1-d and 2-d, forward and backward.

F.interpolate and nn.Upsample reach these aten ops. A 1-d op runs the 2-d kernel on an [N, C, 1, L]
view. Source positions follow PyTorch's CPU code (ATen/native/UpSample.h) in float32, step for step,
so nearest picks the same pixel: the source of output o is floor(o * scale) (or o itself, or o / 2,
for the exact size ratios 1 and 2), nearest-exact floor((o + 0.5) * scale), clamped to the input;
scale is 1 / scale_factor when one was given, else in / out. Linear weights use the half-pixel rule
(or corner alignment) and the same clamping.

The backwards are gathers, not scatters: the source index of an output never decreases as the output
index grows, so the outputs fed by input i form a run [first(i), first(i + 1)) (for linear, the
outputs whose left tap is i - 1 or i), found by a short walk from an estimate. Each input element
sums its run in output order, as PyTorch's CPU loop adds them, without atomics.
"""
from __future__ import annotations

import numpy as np
import torch

from navitrain.wgpu.dispatch import cpu_fallback, implements
from navitrain.wgpu.kernels import codegen
from navitrain.wgpu.ops.pooling import compute_type, decompose, dict_packer, new_output, suggests_channels_last
from navitrain.wgpu.runtime import runtime

aten = torch.ops.aten
WG = 256

_PARAMS = codegen.ParamBlock("total", "C", "OH", "OW", "IH", "IW", "x_off", "xN", "xC", "xH", "xW", "out_off",
                             "scale_h: f32", "scale_w: f32")
_PACK = dict_packer(_PARAMS)

# Source index of output `o` (PyTorch's nearest_idx / nearest_exact_idx) and a first guess at the
# smallest output whose source reaches `t` (only a starting point for the walk in first_output).
_NEAREST = """
fn src_index(o: u32, isz: u32, osz: u32, scale: f32) -> u32 {
  if (osz == isz) { return o; }
  if (osz == 2u * isz) { return o >> 1u; }
  return min(u32(floor(f32(o) * scale)), isz - 1u);
}
fn guess(t: u32, isz: u32, osz: u32, scale: f32) -> f32 {
  if (osz == isz || osz == 2u * isz) { return f32(t) * f32(osz) / f32(isz); }
  return f32(t) / scale;
}
"""

_NEAREST_EXACT = """
fn src_index(o: u32, isz: u32, osz: u32, scale: f32) -> u32 {
  return min(u32(floor((f32(o) + 0.5) * scale)), isz - 1u);
}
fn guess(t: u32, isz: u32, osz: u32, scale: f32) -> f32 { return f32(t) / scale - 0.5; }
"""


def _linear_helpers(align_corners: bool) -> str:
    real = "scale * f32(o)" if align_corners else "max(scale * (f32(o) + 0.5) - 0.5, 0.0)"
    guess = ("select(0.0, f32(t) / scale, scale > 0.0)" if align_corners
             else "(f32(t) + 0.5) / scale - 0.5")
    return f"""
struct Taps {{ i0: u32, i1: u32, l0: f32, l1: f32 }}
fn taps(o: u32, isz: u32, osz: u32, scale: f32) -> Taps {{
  if (osz == isz) {{ return Taps(o, o, 1.0, 0.0); }}
  let real = {real};
  let i0 = min(u32(floor(real)), isz - 1u);
  let l1 = min(max(real - f32(i0), 0.0), 1.0);
  return Taps(i0, i0 + select(0u, 1u, i0 < isz - 1u), 1.0 - l1, l1);
}}
fn src_index(o: u32, isz: u32, osz: u32, scale: f32) -> u32 {{ return taps(o, isz, osz, scale).i0; }}
fn guess(t: u32, isz: u32, osz: u32, scale: f32) -> f32 {{
  if (osz == isz) {{ return f32(t); }}
  return {guess};
}}
"""


# The smallest output whose source index is >= t (osz when there is none): start near the estimate,
# step back while the previous output still qualifies, then forward until one does.
_FIRST_OUTPUT = """
fn first_output(t: u32, isz: u32, osz: u32, scale: f32) -> u32 {
  var o = u32(clamp(guess(t, isz, osz, scale) - 1.0, 0.0, f32(osz)));
  loop { if (o == 0u || src_index(o - 1u, isz, osz, scale) < t) { break; } o = o - 1u; }
  loop { if (o >= osz || src_index(o, isz, osz, scale) >= t) { break; } o = o + 1u; }
  return o;
}
"""


def _source(mode: str, backward: bool, in_st, out_st, compute: str, channels_last: bool, one_d: bool) -> str:
    # one_d: a 1-d op on its [N, C, 1, L] view. Its H taps are (0, 0, weights 1, 0); the weight-0 row is
    # left out, as the CPU's 1-d kernel has none (0 * inf would make NaN of an infinite value).
    helpers = {"nearest": _NEAREST, "nearest-exact": _NEAREST_EXACT}.get(mode) or _linear_helpers(mode == "align")
    linear = mode in ("align", "half")
    lines = ["  if (gi >= total) { return; }"]
    if not backward:
        lines.append(decompose(channels_last, "C", "OH", "OW"))
        lines.append("  let xb = x_off + n * xN + c * xC;")
        if linear:
            x = lambda r, col: in_st.load(f"b1[xb + th.{r} * xH + tw.{col} * xW]", "f32")  # noqa: E731
            lines.append(f"""
  let th = taps(h, IH, OH, scale_h); let tw = taps(w, IW, OW, scale_w);
  let top = {x('i0', 'i0')} * tw.l0 + {x('i0', 'i1')} * tw.l1;
  let bottom = {x('i1', 'i0')} * tw.l0 + {x('i1', 'i1')} * tw.l1;
  b0[out_off + gi] = {out_st.store("top" if one_d else "top * th.l0 + bottom * th.l1")};""")
        else:
            value = in_st.load("b1[xb + src_index(h, IH, OH, scale_h) * xH + src_index(w, IW, OW, scale_w) * xW]",
                               compute)
            lines.append(f"  b0[out_off + gi] = {out_st.store(value)};")
        types = [out_st.wgsl, in_st.wgsl]
        return codegen.module(types, _PARAMS.wgsl() + "\n".join(lines), WG, helpers=helpers + _FIRST_OUTPUT)

    # Backward: x_* describe grad_output (sizes OH, OW); the thread's element is of grad_input.
    lines.append(decompose(channels_last, "C", "IH", "IW"))
    lines.append("  let xb = x_off + n * xN + c * xC;")
    g = in_st.load("b1[xb + oh * xH + ow * xW]", "f32")
    if linear:
        lines.append(f"""
  let oh0 = select(first_output(h - 1u, IH, OH, scale_h), 0u, h == 0u); let oh1 = first_output(h + 1u, IH, OH, scale_h);
  let ow0 = select(first_output(w - 1u, IW, OW, scale_w), 0u, w == 0u); let ow1 = first_output(w + 1u, IW, OW, scale_w);
  var acc = 0.0;
  for (var oh = oh0; oh < oh1; oh = oh + 1u) {{
    let th = taps(oh, IH, OH, scale_h);
    for (var ow = ow0; ow < ow1; ow = ow + 1u) {{
      let tw = taps(ow, IW, OW, scale_w);
      let g = {g};
      if (th.i0 == h) {{
        if (tw.i0 == w) {{ acc = acc + th.l0 * tw.l0 * g; }}
        if (tw.i1 == w) {{ acc = acc + th.l0 * tw.l1 * g; }}
      }}
      if (th.i1 == h && {"false" if one_d else "true"}) {{
        if (tw.i0 == w) {{ acc = acc + th.l1 * tw.l0 * g; }}
        if (tw.i1 == w) {{ acc = acc + th.l1 * tw.l1 * g; }}
      }}
    }}
  }}""")
    else:
        lines.append(f"""
  let oh0 = first_output(h, IH, OH, scale_h); let oh1 = first_output(h + 1u, IH, OH, scale_h);
  let ow0 = first_output(w, IW, OW, scale_w); let ow1 = first_output(w + 1u, IW, OW, scale_w);
  var acc = 0.0;
  for (var oh = oh0; oh < oh1; oh = oh + 1u) {{
    for (var ow = ow0; ow < ow1; ow = ow + 1u) {{ acc = acc + {g}; }}
  }}""")
    lines.append(f"  b0[out_off + gi] = {out_st.store('acc')};")
    return codegen.module([out_st.wgsl, in_st.wgsl], _PARAMS.wgsl() + "\n".join(lines), WG,
                          helpers=helpers + _FIRST_OUTPUT)


# -- scales (float32, as UpSample.h computes them) -------------------------------------------------
def _f32(v) -> float:
    return float(np.float32(v))


def _nearest_scale(isz: int, osz: int, scale) -> float:
    if scale is not None and scale > 0:
        return _f32(1.0 / scale)
    return _f32(np.float32(isz) / np.float32(osz))


def _linear_scale(isz: int, osz: int, align_corners: bool, scale) -> float:
    if align_corners:
        return _f32(np.float32(isz - 1) / np.float32(osz - 1)) if osz > 1 else 0.0
    return _nearest_scale(isz, osz, scale)


# -- launching ------------------------------------------------------------------------------------
def _as_4d(t: torch.Tensor):
    """(sizes, strides) of an [N, C, L] or [N, C, H, W] tensor as 4-d (a 1-d signal has H = 1)."""
    if t.dim() == 3:
        return (t.shape[0], t.shape[1], 1, t.shape[2]), (t.stride(0), t.stride(1), 0, t.stride(2))
    return tuple(t.shape), tuple(t.stride())


def _launch(mode: str, backward: bool, src, out, in_hw, out_hw, scales, channels_last: bool, compute: str):
    total = out.numel()
    if total == 0:
        return out
    rt = runtime()
    sizes, strides = _as_4d(src)
    values = {"total": total, "C": sizes[1], "IH": in_hw[0], "IW": in_hw[1], "OH": out_hw[0], "OW": out_hw[1],
              "x_off": src.elem_offset, "xN": strides[0], "xC": strides[1], "xH": strides[2], "xW": strides[3],
              "out_off": out.elem_offset, "scale_h": scales[0], "scale_w": scales[1]}
    in_st, out_st = rt.stypes[src.dtype], rt.stypes[out.dtype]
    one_d = src.dim() == 3
    key = ("upsample", mode, backward, src.dtype, out.dtype, compute, channels_last, one_d)
    kernel = rt.kernel(key, f"upsample_{mode}{'_backward' if backward else ''}", 2,
                       lambda: _source(mode, backward, in_st, out_st, compute, channels_last, one_d))
    rt.dispatch(kernel, (out._ws.heap, src._ws.heap), _PACK(values), codegen.groups_for(total, WG))
    return out


def _check_sizes(in_size, out_size, dims: int, op: str) -> None:
    names = ("H", "W") if dims == 2 else ("W",)
    if len(in_size) != dims + 2:
        raise RuntimeError(f"{op}: expected a {dims + 2}-d input, but got a tensor with sizes {list(in_size)}")
    if len(out_size) != dims:
        raise RuntimeError(f"{op}: expected output_size of {dims} values, but got {list(out_size)}")
    spatial_in, spatial_out = in_size[2:], list(out_size)
    if min(spatial_in) <= 0 or min(spatial_out) <= 0:
        given_in = ", ".join(f"{n}: {s}" for n, s in zip(names, spatial_in))
        given_out = ", ".join(f"{n}: {s}" for n, s in zip(names, spatial_out))
        raise RuntimeError(f"{op}: Input and output sizes should be greater than 0, but got input ({given_in}) "
                           f"output ({given_out})")
    if in_size[1] == 0:
        raise RuntimeError(f"{op}: Non-empty {dims + 2}D data tensor expected but got a tensor with sizes "
                           f"{list(in_size)}")


def _hw(size, dims: int) -> tuple[int, int]:
    return (1, int(size[-1])) if dims == 1 else (int(size[-2]), int(size[-1]))


def _forward(func, args, mode: str, x, output_size, dims: int, scales):
    linear = mode in ("align", "half")
    compute = compute_type(x.dtype, floats_only=linear)
    if compute is None:
        return cpu_fallback(func, args, {})
    _check_sizes(tuple(x.shape), output_size, dims, str(func))
    in_hw, out_hw = _hw(x.shape, dims), _hw(output_size, dims)
    cl = dims == 2 and suggests_channels_last(x)
    out = new_output((x.shape[0], x.shape[1], *[int(s) for s in output_size]), x.dtype, cl)
    return _launch(mode, False, x, out, in_hw, out_hw, _scales(mode, in_hw, out_hw, scales), cl, compute)


def _backward(func, args, mode: str, grad_output, output_size, input_size, dims: int, scales):
    if compute_type(grad_output.dtype, floats_only=True) is None:
        return cpu_fallback(func, args, {})
    input_size = [int(s) for s in input_size]
    _check_sizes(tuple(input_size), output_size, dims, str(func))
    expected = [input_size[0], input_size[1], *[int(s) for s in output_size]]
    if list(grad_output.shape) != expected:
        raise RuntimeError(f"{func}: expected grad_output of shape {expected}, but got {list(grad_output.shape)}")
    in_hw, out_hw = _hw(input_size, dims), _hw(output_size, dims)
    cl = dims == 2 and suggests_channels_last(grad_output)
    grad_input = new_output(input_size, grad_output.dtype, cl)
    return _launch(mode, True, grad_output, grad_input, in_hw, out_hw, _scales(mode, in_hw, out_hw, scales), cl, "f32")


def _scales(mode: str, in_hw, out_hw, scales) -> tuple[float, float]:
    scales = (None, *scales) if len(scales) == 1 else scales
    if mode in ("align", "half"):
        return tuple(_linear_scale(i, o, mode == "align", s) for i, o, s in zip(in_hw, out_hw, scales))
    return tuple(_nearest_scale(i, o, s) for i, o, s in zip(in_hw, out_hw, scales))


# -- the aten ops ---------------------------------------------------------------------------------
@implements(aten.upsample_nearest2d.default)
def upsample_nearest2d(x, output_size, scales_h=None, scales_w=None):
    return _forward(aten.upsample_nearest2d.default, (x, output_size, scales_h, scales_w), "nearest",
                    x, output_size, 2, (scales_h, scales_w))


@implements(aten._upsample_nearest_exact2d.default)
def upsample_nearest_exact2d(x, output_size, scales_h=None, scales_w=None):
    return _forward(aten._upsample_nearest_exact2d.default, (x, output_size, scales_h, scales_w), "nearest-exact",
                    x, output_size, 2, (scales_h, scales_w))


@implements(aten.upsample_nearest1d.default)
def upsample_nearest1d(x, output_size, scales=None):
    return _forward(aten.upsample_nearest1d.default, (x, output_size, scales), "nearest", x, output_size, 1, (scales,))


@implements(aten._upsample_nearest_exact1d.default)
def upsample_nearest_exact1d(x, output_size, scales=None):
    return _forward(aten._upsample_nearest_exact1d.default, (x, output_size, scales), "nearest-exact",
                    x, output_size, 1, (scales,))


@implements(aten.upsample_bilinear2d.default)
def upsample_bilinear2d(x, output_size, align_corners, scales_h=None, scales_w=None):
    return _forward(aten.upsample_bilinear2d.default, (x, output_size, align_corners, scales_h, scales_w),
                    "align" if align_corners else "half", x, output_size, 2, (scales_h, scales_w))


@implements(aten.upsample_linear1d.default)
def upsample_linear1d(x, output_size, align_corners, scales=None):
    return _forward(aten.upsample_linear1d.default, (x, output_size, align_corners, scales),
                    "align" if align_corners else "half", x, output_size, 1, (scales,))


@implements(aten.upsample_nearest2d_backward.default)
def upsample_nearest2d_backward(grad_output, output_size, input_size, scales_h=None, scales_w=None):
    return _backward(aten.upsample_nearest2d_backward.default,
                     (grad_output, output_size, input_size, scales_h, scales_w),
                     "nearest", grad_output, output_size, input_size, 2, (scales_h, scales_w))


@implements(aten._upsample_nearest_exact2d_backward.default)
def upsample_nearest_exact2d_backward(grad_output, output_size, input_size, scales_h=None, scales_w=None):
    return _backward(aten._upsample_nearest_exact2d_backward.default,
                     (grad_output, output_size, input_size, scales_h, scales_w),
                     "nearest-exact", grad_output, output_size, input_size, 2, (scales_h, scales_w))


@implements(aten.upsample_nearest1d_backward.default)
def upsample_nearest1d_backward(grad_output, output_size, input_size, scales=None):
    return _backward(aten.upsample_nearest1d_backward.default, (grad_output, output_size, input_size, scales),
                     "nearest", grad_output, output_size, input_size, 1, (scales,))


@implements(aten._upsample_nearest_exact1d_backward.default)
def upsample_nearest_exact1d_backward(grad_output, output_size, input_size, scales=None):
    return _backward(aten._upsample_nearest_exact1d_backward.default, (grad_output, output_size, input_size, scales),
                     "nearest-exact", grad_output, output_size, input_size, 1, (scales,))


@implements(aten.upsample_bilinear2d_backward.default)
def upsample_bilinear2d_backward(grad_output, output_size, input_size, align_corners, scales_h=None, scales_w=None):
    return _backward(aten.upsample_bilinear2d_backward.default,
                     (grad_output, output_size, input_size, align_corners, scales_h, scales_w),
                     "align" if align_corners else "half", grad_output, output_size, input_size, 2,
                     (scales_h, scales_w))


@implements(aten.upsample_linear1d_backward.default)
def upsample_linear1d_backward(grad_output, output_size, input_size, align_corners, scales=None):
    return _backward(aten.upsample_linear1d_backward.default,
                     (grad_output, output_size, input_size, align_corners, scales),
                     "align" if align_corners else "half", grad_output, output_size, input_size, 1, (scales,))
