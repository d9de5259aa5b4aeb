"""Fractional max pooling (aten.fractional_max_pool2d / 3d and their backwards), PyTorch's CPU kernel on
the GPU.

The pseudo-random windows come from the `random_samples` argument ([N, C, 2] or [N, C, 3], one
sample per plane and dimension: W, H for 2-d (sample 0 is W), T, H, W for 3-d), so results are
deterministic given it. Window starts follow FractionalMaxPooling.h's generate_intervals:
start[i] = int((i + u) * alpha) - int(u * alpha), alpha = (in - pool) / (out - 1), the last window at
in - pool, all in the input's dtype (computed with device ops in that dtype, which round after every
operation as the CPU's Half / BFloat16 arithmetic does). One thread per output then scans its window
in d, h, w order: the first maximum wins, a NaN replaces it (the last NaN wins), as on the CPU.
2-d is the 3-d kernel with one depth slice. The backward sends each output gradient to its saved
flat index (scatter_add: a window overlap sums).
"""
from __future__ import annotations

import torch

from navitrain.wgpu.dispatch import cpu_fallback, implements
from navitrain.wgpu.kernels import codegen
from navitrain.wgpu.runtime import runtime
from navitrain.wgpu.tensor import empty

aten = torch.ops.aten
WG = 256
_FLOATS = (torch.float32, torch.float16, torch.bfloat16)

_PARAMS = codegen.ParamBlock(
    "total", "C", "OT", "OH", "OW", "IH", "IW", "kT", "kH", "kW",
    "x_off", "xN", "xC", "xT", "xH", "xW", "out_off", "idx_off", "t_starts", "h_starts", "w_starts")


def _source(x_st, out_st, idx_st, starts_st) -> str:
    start = lambda name, o, count: starts_st.load(f"b3[{name} + plane * {count} + {o}]", "i32")
    body = f"""
  if (gi >= total) {{ return; }}
  let ow = gi % OW; var r = gi / OW; let oh = r % OH; r = r / OH; let ot = r % OT; let plane = r / OT;
  let n = plane / C; let c = plane % C;
  let t0 = {start("t_starts", "ot", "OT")};
  let h0 = {start("h_starts", "oh", "OH")};
  let w0 = {start("w_starts", "ow", "OW")};
  let xb = x_off + n * xN + c * xC;
  var best = bitcast<f32>(0xff800000u);
  var at = (t0 * i32(IH) + h0) * i32(IW) + w0;
  for (var t = t0; t < t0 + i32(kT); t = t + 1) {{
    for (var h = h0; h < h0 + i32(kH); h = h + 1) {{
      for (var w = w0; w < w0 + i32(kW); w = w + 1) {{
        let v = {x_st.load("b1[xb + u32(t) * xT + u32(h) * xH + u32(w) * xW]", "f32")};
        // NaN-safe: lavapipe may answer v > NaN with true, so a NaN best is kept explicitly.
        if ((v > best && !is_nan(best)) || is_nan(v)) {{ best = v; at = (t * i32(IH) + h) * i32(IW) + w; }}
      }}
    }}
  }}
  b0[out_off + gi] = {out_st.store("best")};
  b2[idx_off + gi] = {idx_st.store("at")};"""
    types = [out_st.wgsl, x_st.wgsl, idx_st.wgsl, starts_st.wgsl]
    return codegen.module(types, _PARAMS.wgsl() + body, WG)


def _window_starts(samples, in_size: int, out_size: int, pool: int):
    """generate_intervals for every plane at once: [N, C] samples -> [N, C, out_size] int64 starts."""
    n, c = samples.shape[:2]
    last = aten.full.default([n, c, 1], in_size - pool, dtype=torch.int64, device=samples.device)
    if out_size == 1:
        return last
    dtype = samples.dtype
    alpha = (torch.tensor(in_size - pool, dtype=dtype) / torch.tensor(out_size - 1, dtype=dtype)).item()
    steps = aten.arange.start(0, out_size - 1, dtype=dtype, device=samples.device)
    u = aten.unsqueeze.default(samples, 2)
    scaled = aten.mul.Scalar(aten.add.Tensor(u, steps), alpha)
    first = aten._to_copy.default(scaled, dtype=torch.int64)  # truncation, as the CPU's static_cast<int>
    offset = aten._to_copy.default(aten.mul.Scalar(u, alpha), dtype=torch.int64)
    return aten.cat.default([aten.sub.Tensor(first, offset), last], 2)


def _check(x, kernel, out_size, samples, dims: int, op: str):
    if x.dim() not in (dims + 1, dims + 2) or any(s == 0 for s in x.shape[1:]):
        raise RuntimeError(f"{op}: Expected {dims + 1}D or {dims + 2}D tensor, but got: {list(x.shape)}")
    names = ("time", "height", "width")[3 - dims:]
    for name, size, k, o in zip(names, x.shape[-dims:], kernel, out_size):
        if o + k - 1 > size:
            raise RuntimeError(f"{op}(): pool {name} {k} too large relative to input {name} {size} "
                               f"(output {name} {o})")
    planes = x.shape[0] * x.shape[1] if x.dim() == dims + 2 else x.shape[0]
    if samples.dim() != 3 or samples.shape[2] != dims or samples.shape[0] * samples.shape[1] < planes:
        raise RuntimeError(f"{op}: random_samples of shape {list(samples.shape)} do not fit the input "
                           f"{list(x.shape)}")


def _pool(x, kernel, out_size, samples, dims: int, op):
    batched = x.dim() == dims + 2
    x5 = x if batched else aten.unsqueeze.default(x, 0)
    while x5.dim() < 5:
        x5 = aten.unsqueeze.default(x5, 2)  # 2-d: one depth slice
    n, c, it, ih, iw = x5.shape
    kt, kh, kw = ([1] * (3 - dims)) + list(kernel)
    ot, oh, ow = ([1] * (3 - dims)) + list(out_size)
    shape = list(x.shape[:-dims]) + list(out_size)
    out, idx = empty(shape, x.dtype), empty(shape, torch.int64)
    total = out.numel()
    if total == 0:
        return out, idx
    samples = samples[:n, :c] if batched else aten.reshape.default(samples, [1, -1, dims])[:, :c]
    # samples[..., k] belongs to dimension k of (T, H, W) for 3-d, but to W then H for 2-d.
    which = {"t": 0, "h": 1, "w": 2} if dims == 3 else {"h": 1, "w": 0}
    per_dim = {"t": None, "h": (ih, oh, kh), "w": (iw, ow, kw)}
    if dims == 3:
        per_dim["t"] = (it, ot, kt)
    pieces = []
    for d in ("t", "h", "w"):
        if per_dim[d] is None:
            pieces.append(aten.zeros.default([n, c, 1], dtype=torch.int64, device=x.device))
        else:
            pieces.append(_window_starts(aten.select.int(samples, 2, which[d]), *per_dim[d]))
    starts = aten.cat.default([aten.reshape.default(p, [-1]) for p in pieces], 0)
    rt = runtime()
    base = starts.elem_offset
    xs = x5.stride()
    params = _PARAMS.pack(
        total=total, C=c, OT=ot, OH=oh, OW=ow, IH=ih, IW=iw, kT=kt, kH=kh, kW=kw, x_off=x5.elem_offset,
        xN=xs[0], xC=xs[1], xT=xs[2], xH=xs[3], xW=xs[4], out_off=out.elem_offset, idx_off=idx.elem_offset,
        t_starts=base, h_starts=base + n * c * ot, w_starts=base + n * c * (ot + oh))
    x_st, out_st, idx_st, starts_st = (rt.stypes[d] for d in (x.dtype, out.dtype, torch.int64, torch.int64))
    kernel = rt.kernel(("fractional_max_pool", x.dtype), "fractional_max_pool", 4,
                       lambda: _source(x_st, out_st, idx_st, starts_st))
    rt.dispatch(kernel, (out._ws.heap, x5._ws.heap, idx._ws.heap, starts._ws.heap), params,
                codegen.groups_for(total, WG))
    return out, idx


def _backward(grad_output, x, indices, dims: int):
    """Each output gradient added at its saved flat index within its plane ([..., T*H*W])."""
    lead = list(x.shape[:-dims])
    plane = 1
    for size in x.shape[-dims:]:
        plane *= size
    flat = aten.zeros.default(lead + [plane], dtype=grad_output.dtype, device=x.device)
    gx = aten.scatter_add.default(flat, len(lead), aten.reshape.default(indices.contiguous(), lead + [-1]),
                                  aten.reshape.default(grad_output.contiguous(), lead + [-1]))
    return aten.reshape.default(gx, list(x.shape))


@implements(aten.fractional_max_pool2d.default)
def fractional_max_pool2d(x, kernel_size, output_size, random_samples):
    if x.dtype not in _FLOATS or random_samples.dtype != x.dtype:
        return cpu_fallback(aten.fractional_max_pool2d.default, (x, kernel_size, output_size, random_samples), {})
    _check(x, kernel_size, output_size, random_samples, 2, "fractional_max_pool2d")
    return _pool(x, kernel_size, output_size, random_samples, 2, "fractional_max_pool2d")


@implements(aten.fractional_max_pool3d.default)
def fractional_max_pool3d(x, kernel_size, output_size, random_samples):
    if x.dtype not in _FLOATS or random_samples.dtype != x.dtype:
        return cpu_fallback(aten.fractional_max_pool3d.default, (x, kernel_size, output_size, random_samples), {})
    _check(x, kernel_size, output_size, random_samples, 3, "fractional_max_pool3d")
    return _pool(x, kernel_size, output_size, random_samples, 3, "fractional_max_pool3d")


@implements(aten.fractional_max_pool2d_backward.default)
def fractional_max_pool2d_backward(grad_output, x, kernel_size, output_size, indices):
    if grad_output.dtype not in _FLOATS:
        return cpu_fallback(aten.fractional_max_pool2d_backward.default,
                            (grad_output, x, kernel_size, output_size, indices), {})
    return _backward(grad_output, x, indices, 2)


@implements(aten.fractional_max_pool3d_backward.default)
def fractional_max_pool3d_backward(grad_output, x, kernel_size, output_size, indices):
    if grad_output.dtype not in _FLOATS:
        return cpu_fallback(aten.fractional_max_pool3d_backward.default,
                            (grad_output, x, kernel_size, output_size, indices), {})
    return _backward(grad_output, x, indices, 3)
