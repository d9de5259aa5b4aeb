"""grid_sampler_3d and its backward (F.grid_sample on 5-d inputs), PyTorch's CPU kernel on the GPU.

Coordinates follow GridSampler.h: unnormalize (align_corners or not), then border (clip) or
reflection (reflect, then clip) padding; bilinear weights wx * wy * wz from the 8 corners in the CPU's
order (t/b = z, n/s = y, w/e = x), corners outside the input skipped (zeros padding); nearest rounds
half to even (nearbyint). Interpolation modes: 0 bilinear, 1 nearest (bicubic is 2-d only).
One thread per output position loops over the channels, so the coordinates are computed once.

NaN and inf coordinates: a NaN / inf corner index is out of range (the CPU's int64 cast of NaN gives
INT64_MIN on x86), so zeros padding yields 0; clip maps NaN to size - 1 in the forward, as the CPU's
std::min(size - 1, std::max(NaN, 0)) does. The CPU's own edge cases of NaN grids are followed only so
far: values (NaN / inf in the input) propagate exactly through the taps that are read.

Backward: the grid gradient is a gather (each position's own corners, channels summed in order).
The input gradient is a scatter in the CPU; here each (position, channel, corner) writes its term and
target index (a spare slot past the end for a corner outside the input), and index_add sums them per
target in (position, corner) order -- no float atomics.
"""
from __future__ import annotations

import torch

from navitrain.wgpu.dispatch import cpu_fallback, implements
from navitrain.wgpu.kernels import codegen
from navitrain.wgpu.runtime import runtime
from navitrain.wgpu.tensor import empty

aten = torch.ops.aten
WG = 64
# float16 / bfloat16 are computed in float32 and rounded once on store. The CPU rounds coordinates and
# weights to the reduced type at every step, so the two differ by whole taps at times; the float32 result
# is the nearer one to exact arithmetic (as for grid_sampler_2d's float16 decomposition).
_FLOATS = (torch.float32, torch.float16, torch.bfloat16)
_GEOMETRY = ("total", "C", "OD", "OH", "OW", "ID", "IH", "IW", "x_off", "xN", "xC", "xD", "xH", "xW",
             "g_off", "gN", "gD", "gH", "gW", "gK")
_FWD = codegen.ParamBlock(*_GEOMETRY, "out_off")
_BWD = codegen.ParamBlock(*_GEOMETRY, "go_off", "goN", "goC", "goD", "goH", "goW", "gg_off", "ci_off", "cv_off",
                          "spare", "n0")
_TERMS_PER_INDEX_ADD = 1 << 20
_TERMS_PER_LAUNCH = 1 << 22
_FAR = "(-1000000000)"  # an index far outside any input, for NaN / inf / huge coordinates


def _helpers(padding: int, align: bool) -> str:
    unnorm = ("((c + 1.0) / 2.0) * (s - 1.0)", "(s - 1.0) / 2.0") if align else \
        ("((c + 1.0) * s - 1.0) / 2.0", "s / 2.0")
    low, high = ("0.0", "2.0 * (s - 1.0)") if align else ("-1.0", "2.0 * s - 1.0")
    return f"""
fn to_index(v: f32) -> i32 {{
  if (is_nan(v) || !(abs(v) < 1.0e9)) {{ return {_FAR}; }}
  return i32(v);
}}
// The unnormalized, padded source coordinate of grid value c along a dimension of size s, and its
// derivative with respect to c (GridSampler.h grid_sampler_compute_source_index[_set_grad]).
fn source(c: f32, s: f32) -> vec2<f32> {{
  var x = {unnorm[0]};
  var grad = {unnorm[1]};
  if ({padding} == 2) {{  // reflection between the padded edges, then clip
    let twice_low = {low}; let twice_high = {high};
    if (twice_low == twice_high) {{ x = 0.0; grad = 0.0; }} else {{
      let mn = twice_low / 2.0; let span = (twice_high - twice_low) / 2.0;
      var a = x - mn; var sign = 1.0;
      if (a < 0.0 && !is_nan(a)) {{ a = -a; sign = -1.0; }}
      let flips = floor(a / span);
      let extra = a - flips * span;
      if (flips - 2.0 * floor(flips / 2.0) == 0.0) {{ x = extra + mn; grad = grad * sign; }}
      else {{ x = span - extra + mn; grad = -grad * sign; }}
    }}
  }}
  if ({padding} != 0) {{  // clip into [0, s - 1]
    if (is_nan(x)) {{ x = s - 1.0; }}
    else if (x <= 0.0) {{ x = 0.0; grad = 0.0; }}
    else if (x >= s - 1.0) {{ x = s - 1.0; grad = 0.0; }}
  }}
  return vec2<f32>(x, grad);
}}
fn inside(z: i32, y: i32, x: i32, d: u32, h: u32, w: u32) -> bool {{
  return z >= 0 && z < i32(d) && y >= 0 && y < i32(h) && x >= 0 && x < i32(w);
}}
"""


_POSITION = """
  if (gi >= total) { return; }
  let ow = gi % OW; var r = gi / OW; let oh = r % OH; r = r / OH; let od = r % OD; let n = r / OD + N0;
  let gb = g_off + n * gN + od * gD + oh * gH + ow * gW;
  let sx = source({gx}, f32(IW)); let sy = source({gy}, f32(IH)); let sz = source({gz}, f32(ID));
  let ix = sx.x; let iy = sy.x; let iz = sz.x;
  let xb = x_off + n * xN;
  let x0 = to_index(floor(ix)); let y0 = to_index(floor(iy)); let z0 = to_index(floor(iz));
  let fx = f32(x0); let fy = f32(y0); let fz = f32(z0);
  // the 8 corners' weights, bilinear: along x, (x0 + 1 - ix) for west and (ix - x0) for east
  let wx = array<f32, 2>(fx + 1.0 - ix, ix - fx);
  let wy = array<f32, 2>(fy + 1.0 - iy, iy - fy);
  let wz = array<f32, 2>(fz + 1.0 - iz, iz - fz);
  let rx = to_index(round(ix)); let ry = to_index(round(iy)); let rz = to_index(round(iz));
"""


def _position(grid_st, first_batch: str = "0u") -> str:
    load = lambda k: grid_st.load(f"b2[gb + {k}u * gK]", "f32")  # noqa: E731
    return (_POSITION.replace("{gx}", load(0)).replace("{gy}", load(1)).replace("{gz}", load(2))
            .replace("N0", first_batch))


def _forward_source(mode: int, padding: int, align: bool, x_st, grid_st, out_st) -> str:
    value = x_st.load("b1[xc + u32(z) * xD + u32(y) * xH + u32(x) * xW]", "f32")
    if mode == 0:
        sample = f"""
    var acc = 0.0;
    for (var dz = 0; dz < 2; dz = dz + 1) {{
    for (var dy = 0; dy < 2; dy = dy + 1) {{
    for (var dx = 0; dx < 2; dx = dx + 1) {{
      let z = z0 + dz; let y = y0 + dy; let x = x0 + dx;
      if (inside(z, y, x, ID, IH, IW)) {{ acc = acc + {value} * (wx[dx] * wy[dy] * wz[dz]); }}
    }} }} }}"""
    else:
        sample = f"""
    var acc = 0.0;
    let z = rz; let y = ry; let x = rx;
    if (inside(z, y, x, ID, IH, IW)) {{ acc = {value}; }}"""
    body = _FWD.wgsl() + _position(grid_st) + f"""
  let ob = out_off + n * C * OD * OH * OW + (od * OH + oh) * OW + ow;
  for (var c = 0u; c < C; c = c + 1u) {{
    let xc = xb + c * xC;{sample}
    b0[ob + c * OD * OH * OW] = {out_st.store("acc")};
  }}"""
    return codegen.module([out_st.wgsl, x_st.wgsl, grid_st.wgsl], body, WG, helpers=_helpers(padding, align))


def _backward_source(mode: int, padding: int, align: bool, go_st, x_st, grid_st, gg_st, idx_st, val_st,
                     depth_taps: int = 2) -> str:
    """depth_taps 1: a depth-1 view of a 2-d sampling (z = 0 exactly), whose far depth corners have weight 0
    and lie outside the input: leaving them out halves the terms index_add sorts."""
    value = x_st.load("b1[xc + u32(z) * xD + u32(y) * xH + u32(x) * xW]", "f32")
    target = "i32(((n * C + c) * ID + u32(z)) * IH * IW + u32(y) * IW + u32(x))"
    corners = 4 * depth_taps if mode == 0 else 1
    if mode == 0:
        per_channel = f"""
    var k = 0u;
    for (var dz = 0; dz < {depth_taps}; dz = dz + 1) {{
    for (var dy = 0; dy < 2; dy = dy + 1) {{
    for (var dx = 0; dx < 2; dx = dx + 1) {{
      let z = z0 + dz; let y = y0 + dy; let x = x0 + dx;
      var at = i32(spare);
      if (inside(z, y, x, ID, IH, IW)) {{
        at = {target};
        let v = {value};
        // d(weight)/d(ix) is -1 for the west corner, +1 for the east one (likewise y, z)
        gix = gix + select(-1.0, 1.0, dx == 1) * (v * wy[dy] * wz[dz] * g);
        giy = giy + select(-1.0, 1.0, dy == 1) * (v * wx[dx] * wz[dz] * g);
        giz = giz + select(-1.0, 1.0, dz == 1) * (v * wx[dx] * wy[dy] * g);
      }}
      b4[ci_off + cb + k] = {idx_st.store("at")};
      b5[cv_off + cb + k] = {val_st.store("(wx[dx] * wy[dy] * wz[dz]) * g")};
      k = k + 1u;
    }} }} }}"""
    else:
        per_channel = f"""
    let z = rz; let y = ry; let x = rx;
    var at = i32(spare);
    if (inside(z, y, x, ID, IH, IW)) {{ at = {target}; }}
    b4[ci_off + cb] = {idx_st.store("at")};
    b5[cv_off + cb] = {val_st.store("g")};"""
    body = _BWD.wgsl() + _position(grid_st, "n0") + f"""
  var gix = 0.0; var giy = 0.0; var giz = 0.0;
  let P = OD * OH * OW; let p = (od * OH + oh) * OW + ow;
  for (var c = 0u; c < C; c = c + 1u) {{
    let xc = xb + c * xC;
    let g = {go_st.load("b0[go_off + n * goN + c * goC + od * goD + oh * goH + ow * goW]", "f32")};
    let cb = (((n - n0) * C + c) * P + p) * {corners}u;{per_channel}
  }}
  let gg = gg_off + (n * P + p) * 3u;
  b3[gg] = {gg_st.store("sx.y * gix")};
  b3[gg + 1u] = {gg_st.store("sy.y * giy")};
  b3[gg + 2u] = {gg_st.store("sz.y * giz")};"""
    types = [go_st.wgsl, x_st.wgsl, grid_st.wgsl, gg_st.wgsl, idx_st.wgsl, val_st.wgsl]
    return codegen.module(types, body, WG, helpers=_helpers(padding, align))


def _geometry(x, grid) -> dict:
    n, c, d, h, w = x.shape
    return dict(total=n * grid.shape[1] * grid.shape[2] * grid.shape[3], C=c, OD=grid.shape[1], OH=grid.shape[2],
                OW=grid.shape[3], ID=d, IH=h, IW=w, x_off=x.elem_offset, xN=x.stride(0), xC=x.stride(1),
                xD=x.stride(2), xH=x.stride(3), xW=x.stride(4), g_off=grid.elem_offset, gN=grid.stride(0),
                gD=grid.stride(1), gH=grid.stride(2), gW=grid.stride(3), gK=grid.stride(4))


def _supported(x, grid, mode, padding) -> bool:
    return (x.dtype in _FLOATS and grid.dtype == x.dtype and mode in (0, 1) and padding in (0, 1, 2)
            and x.dim() == 5 and grid.dim() == 5)


def _check(x, grid):
    if x.shape[0] != grid.shape[0] or grid.shape[-1] != 3:
        raise RuntimeError(f"grid_sampler(): expected grid to have size 3 in last dimension and the input's batch "
                           f"size, but got input {list(x.shape)} and grid {list(grid.shape)}")


@implements(aten.grid_sampler_3d.default)
def grid_sampler_3d(x, grid, interpolation_mode, padding_mode, align_corners):
    if not _supported(x, grid, interpolation_mode, padding_mode):
        return cpu_fallback(aten.grid_sampler_3d.default, (x, grid, interpolation_mode, padding_mode,
                                                           align_corners), {})
    _check(x, grid)
    out = empty([x.shape[0], x.shape[1], *grid.shape[1:4]], x.dtype)
    geometry = _geometry(x, grid)
    if out.numel() == 0:
        return out
    rt = runtime()
    sts = [rt.stypes[d] for d in (x.dtype, grid.dtype, out.dtype)]
    key = ("grid_sampler_3d", interpolation_mode, padding_mode, bool(align_corners), x.dtype)
    kernel = rt.kernel(key, "grid_sampler_3d", 3,
                       lambda: _forward_source(interpolation_mode, padding_mode, bool(align_corners), *sts))
    rt.dispatch(kernel, (out._ws.heap, x._ws.heap, grid._ws.heap), _FWD.pack(**geometry, out_off=out.elem_offset),
                codegen.groups_for(geometry["total"], WG))
    return out


@implements(aten.grid_sampler_3d_backward.default)
def grid_sampler_3d_backward(grad_output, x, grid, interpolation_mode, padding_mode, align_corners, output_mask):
    args = (grad_output, x, grid, interpolation_mode, padding_mode, align_corners, output_mask)
    if not (_supported(x, grid, interpolation_mode, padding_mode) and grad_output.dtype == x.dtype):
        return cpu_fallback(aten.grid_sampler_3d_backward.default, args, {})
    return backward(*args)


def backward(grad_output, x, grid, interpolation_mode, padding_mode, align_corners, output_mask,
             flat_depth: bool = False):
    """grid_sampler_3d_backward for supported arguments; flat_depth: x has depth 1 and every grid z is 0
    (grid_sampler_2d's backward on a depth-1 view), so only the near depth corners are visited."""
    depth_taps = 1 if flat_depth else 2
    _check(x, grid)
    geometry = _geometry(x, grid)
    n, c = x.shape[:2]
    per_item = geometry["total"] // max(n, 1)  # output positions of one batch item
    corners = 4 * depth_taps if interpolation_mode == 0 else 1
    grad_grid = empty(list(grid.shape), torch.float32)
    spare = x.numel()  # the slot past the end that collects corners outside the input
    flat = aten.zeros.default([spare + 1], dtype=torch.float32, device=x.device)
    if per_item == 0 or c == 0:
        aten.zero_.default(grad_grid)
    # Batch items in groups whose (position, channel, corner) terms fit comfortably in one binding.
    items = max(1, _TERMS_PER_LAUNCH // max(1, c * per_item * corners))
    rt = runtime()
    sts = [rt.stypes[d] for d in (grad_output.dtype, x.dtype, grid.dtype, torch.float32, torch.int64, torch.float32)]
    key = ("grid_sampler_3d_backward", interpolation_mode, padding_mode, bool(align_corners), x.dtype, depth_taps)
    go = grad_output
    for n0 in range(0, n if per_item and c else 0, items):
        count = min(items, n - n0)
        targets = empty([count * c * per_item * corners], torch.int64)
        terms = empty([targets.numel()], torch.float32)
        kernel = rt.kernel(key, "grid_sampler_3d_backward", 6,
                           lambda: _backward_source(interpolation_mode, padding_mode, bool(align_corners), *sts,
                                                    depth_taps=depth_taps))
        params = _BWD.pack(**dict(geometry, total=count * per_item), go_off=go.elem_offset, goN=go.stride(0),
                           goC=go.stride(1), goD=go.stride(2), goH=go.stride(3), goW=go.stride(4),
                           gg_off=grad_grid.elem_offset, ci_off=targets.elem_offset, cv_off=terms.elem_offset,
                           spare=spare, n0=n0)
        rt.dispatch(kernel, (go._ws.heap, x._ws.heap, grid._ws.heap, grad_grid._ws.heap, targets._ws.heap,
                             terms._ws.heap), params, codegen.groups_for(count * per_item, WG))
        if output_mask[0]:
            # in slices of whole (n, c) planes (each target lies in one plane, so the sums are unchanged):
            # index_add's sort of millions of keys would outgrow a storage binding
            per_plane = per_item * corners
            step = max(1, _TERMS_PER_INDEX_ADD // per_plane) * per_plane
            for start in range(0, targets.numel(), step):
                flat = aten.index_add.default(flat, 0, targets[start:start + step], terms[start:start + step])
    grad_input = None
    if output_mask[0]:
        grad_input = aten._to_copy.default(aten.reshape.default(flat[:spare], list(x.shape)), dtype=x.dtype)
    if interpolation_mode == 1:  # nearest: the grid gets no gradient
        aten.zero_.default(grad_grid)
    grad_grid = aten._to_copy.default(grad_grid, dtype=grid.dtype) if output_mask[1] else None
    return grad_input, grad_grid
