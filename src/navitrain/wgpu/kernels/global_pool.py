"""Global average pooling (the squeeze of squeeze-excitation, and every zoo model's last pool): the mean of
each (n, c) plane of an NCHW or channels-last activation, in one kernel that reads the planes where they
are.

A plane is found from (n, c) and its elements from (h, w), all through strides. Planes are numbered with
c fastest, so with channels-last memory neighbouring threads read neighbouring channels (one thread per
plane: a plane's elements are C apart); with NCHW memory a plane is contiguous and `lanes` threads split
it (then a tree in workgroup memory), so neighbouring lanes read neighbouring addresses."""
from __future__ import annotations

from navitrain.wgpu.kernels import codegen, loop_budget
from navitrain.wgpu.kernels.norm_common import WG, launch, load, module, next_pow2, store

_BLOCK = codegen.ParamBlock("planes", "C", "HW", "W", "out_off", "o_n", "o_c", "x_off", "x_n", "x_c", "x_h", "x_w")


def lanes_per_plane(hw: int, plane_contiguous: bool) -> int:
    """Threads per plane: 1 for channels-last (threads take neighbouring channels instead), else a power
    of two near HW / 4, at most 16: a 28x28 plane took 66 ms on lavapipe with 256 lanes (eight barriers
    of a tree per plane), 9 ms with 64, 2.6 ms with 16; 16 lanes still read 64 contiguous bytes at once.
    More only where llvmpipe's loop budget needs them (below)."""
    if not plane_contiguous:
        lanes = 1
    else:
        want = next_pow2(max(1, -(-hw // 4)))
        lanes = next(t for t in (16, 4, 1) if t <= want)
    # llvmpipe stops a kernel's loops after 65535 passes (kernels/loop_budget.py): a plane too large for
    # its lanes gets more (channels-last planes of over 60k positions, NCHW ones of over 960k).
    while _passes(hw, lanes) > loop_budget.PASS_BUDGET and lanes < WG:
        lanes *= 4
    return lanes


def _passes(hw: int, lanes: int) -> int:
    """Loop passes of a plane's busiest thread: its share of the plane, then the tree."""
    return loop_budget.strided(hw, lanes) + lanes.bit_length()


def global_mean(x, out, N: int, C: int, H: int, W: int, strides: tuple, out_strides: tuple) -> None:
    """out[n, c] = mean of x[n, c, :, :]; `strides` (n, c, h, w) of x, `out_strides` (n, c) of out."""
    HW = H * W
    lanes = lanes_per_plane(HW, strides[3] == 1 and strides[2] == W)
    loop_budget.require(_passes(HW, lanes), f"a global average pool over planes of {HW} positions")
    tensors = [out, x]
    params = _BLOCK.pack(planes=N * C, C=C, HW=HW, W=W, out_off=out.elem_offset, o_n=out_strides[0],
                         o_c=out_strides[1], x_off=x.elem_offset, x_n=strides[0], x_c=strides[1], x_h=strides[2],
                         x_w=strides[3])

    def source():
        xv = load(x, 1, "base + (j / W) * x_h + (j % W) * x_w")
        lines = [_BLOCK.wgsl(),
                 f"  let lane = lid % {lanes}u; let plane = group * {WG // lanes}u + lid / {lanes}u;",
                 "  let live = plane < planes;",
                 "  let c = plane % C; let n = plane / C;",
                 "  let base = x_off + n * x_n + c * x_c;",
                 "  var acc = 0.0;",
                 f"  if (live) {{ for (var j = lane; j < HW; j = j + {lanes}u) {{ acc = acc + {xv}; }} }}"]
        if lanes > 1:
            lines += ["  red[lid] = acc;",
                      "  workgroupBarrier();",
                      f"  for (var s = {lanes // 2}u; s > 0u; s = s >> 1u) {{",
                      "    if (lane < s) { red[lid] = red[lid] + red[lid + s]; }",
                      "    workgroupBarrier();",
                      "  }",
                      "  acc = red[lid];"]
        lines.append("  if (live && lane == 0u) { " + store(out, 0, "out_off + n * o_n + c * o_c", "acc / f32(HW)")
                     + " }")
        shared = f"var<workgroup> red: array<f32, {WG}>;\n" if lanes > 1 else ""
        return module(tensors, "\n".join(lines), shared)

    key = ("global_mean", lanes, x.dtype, out.dtype)
    launch(key, "global_avg_pool", tensors, params, source, codegen.grid(-(-N * C // (WG // lanes))))
