"""Layer-norm rows read in place through strides, for inputs that arrive as permuted views.

ConvNeXt normalizes over the channels of an NCHW activation as `x.permute(0, 2, 3, 1)` -> layer_norm ->
permute back: the rows (one per (n, h, w)) are then strided by H*W. Copying the view contiguous first
costs a full read and write of the activation, forward and backward (both x and the gradient); instead
the row kernels of kernels/row_norm.py find a row's first element from its (up to 3) leading indices
and step along it by the normalized dim's stride. Outputs stay contiguous, as aten lays them out.

Here: the geometry (`RowGeometry`, its ParamBlock fields and WGSL), and the weight/bias gradients of
such rows, a column sum whose rows are not contiguous (kernels/channel_sums.py wants [A, C, B] blocks
with one statistic per A, while a permuted NCHW view has one per (n, h, w))."""
from __future__ import annotations

import math
from typing import NamedTuple

import torch

from navitrain.wgpu.kernels import codegen
from navitrain.wgpu.kernels.channel_sums import finish_sums
from navitrain.wgpu.kernels.norm_common import WG, launch, load, module
from navitrain.wgpu.tensor import empty

ROW_DIMS = 3  # leading dims a strided row's position is decomposed into


class RowGeometry(NamedTuple):
    """Rows along the last dim of tensors of one shape: the leading dims, merged where every tensor has
    them contiguous (a permuted NCHW activation's H and W become one dim: fewer integer divisions per
    row), padded at the front to ROW_DIMS."""
    sizes: tuple[int, ...]           # ROW_DIMS sizes, padding first
    groups: tuple[tuple[int, ...], ...]  # the original leading dims behind each used dim
    used: int                        # dims the WGSL decomposes a row number into (the last `used`)

    @staticmethod
    def of(*tensors: torch.Tensor) -> RowGeometry | None:
        lead = [d for d in range(tensors[0].dim() - 1) if tensors[0].shape[d] != 1]  # size 1: walks nowhere
        groups: list[list[int]] = []
        for d in lead:
            if groups and all(t.stride(groups[-1][-1]) == t.stride(d) * t.shape[d] for t in tensors):
                groups[-1].append(d)
            else:
                groups.append([d])
        if len(groups) > ROW_DIMS:
            return None
        sizes = [math.prod(tensors[0].shape[d] for d in g) for g in groups]
        pad = ROW_DIMS - len(groups)
        return RowGeometry((1,) * pad + tuple(sizes), tuple(tuple(g) for g in groups), max(1, len(groups)))

    def strides(self, t: torch.Tensor) -> tuple[tuple[int, ...], int]:
        """t's stride for each used dim (its innermost original dim's), padded; and along the row."""
        lead = [t.stride(g[-1]) for g in self.groups]
        return (0,) * (ROW_DIMS - len(lead)) + tuple(lead), t.stride(-1)


def fields(*prefixes: str) -> tuple[str, ...]:
    """ParamBlock fields: the inner leading sizes, then each tensor's leading strides and row stride."""
    out = [f"rsz[{ROW_DIMS - 1}]"]
    for p in prefixes:
        out += [f"{p}_rs[{ROW_DIMS}]", f"{p}_ls"]
    return tuple(out)


def defaults(*prefixes: str) -> dict:
    """Values of fields() for kernels built for contiguous rows (which never read them)."""
    d = {"rsz": (1,) * (ROW_DIMS - 1)}
    for p in prefixes:
        d.update({f"{p}_rs": (0,) * ROW_DIMS, f"{p}_ls": 0})
    return d


def args(geo: RowGeometry, **tensors) -> dict:
    """pack() values of fields() for tensors given by prefix."""
    out = {"rsz": geo.sizes[1:]}
    for p, t in tensors.items():
        out[f"{p}_rs"], out[f"{p}_ls"] = geo.strides(t)
    return out


def row_index_wgsl(row: str, used: int) -> str:
    """WGSL splitting the row number `row` into the indices of its last `used` leading dims (ri_2, ...)."""
    if used == 1:
        return f"  let ri_2 = {row};\n"
    if used == 2:
        return f"  let ri_2 = {row} % rsz_1; let ri_1 = {row} / rsz_1;\n"
    return (f"  let ri_2 = {row} % rsz_1; let rq = {row} / rsz_1; let ri_1 = rq % rsz_0; "
            "let ri_0 = rq / rsz_0;\n")


def row_start(prefix: str, used: int) -> str:
    """WGSL: the element where tensor `prefix`'s row (ri_{3 - used} .. ri_2) starts."""
    return " + ".join([f"{prefix}_off"] + [f"ri_{k} * {prefix}_rs_{k}" for k in range(ROW_DIMS - used, ROW_DIMS)])


# -- weight and bias gradients of strided rows ------------------------------------------------------
_COLSUMS = codegen.ParamBlock("M", "L", "G", "chunk", "out_off", "mean_off", "rstd_off", "dy_off", "x_off",
                              *fields("dy", "x"))


def layer_norm_backward_params(grad_out, x, mean, rstd, M: int, L: int, gw, gb) -> None:
    """gw[j] = sum over rows of dy * (x - mean) * rstd, gb[j] = sum of dy (either may be None), for
    rows of any strides: a workgroup takes a column and a chunk of rows, its lanes consecutive rows
    (neighbouring addresses when the rows are the positions of an NCHW plane); then finish_sums."""
    geo = RowGeometry.of(grad_out, x)
    G = max(1, min(-(-M // 4096), -(-512 // L), 65535 // L))
    chunk = -(-M // G)
    G = -(-M // chunk)
    partials = empty([G * L * 2], torch.float32)
    tensors = [partials, grad_out, x, mean, rstd]
    params = _COLSUMS.pack(M=M, L=L, G=G, chunk=chunk, out_off=partials.elem_offset, mean_off=mean.elem_offset,
                           rstd_off=rstd.elem_offset, dy_off=grad_out.elem_offset, x_off=x.elem_offset,
                           **args(geo, dy=grad_out, x=x))

    def source():
        lines = [_COLSUMS.wgsl(),
                 "  if (group >= L * G) { return; }",
                 "  let c = group % L; let g = group / L;",
                 "  let m1 = min(M, g * chunk + chunk);",
                 "  var sw = 0.0; var sb = 0.0;",
                 f"  for (var m = g * chunk + lid; m < m1; m = m + {WG}u) {{",
                 row_index_wgsl("m", geo.used),
                 f"    let dy = {load(grad_out, 1, row_start('dy', geo.used) + ' + c * dy_ls')};",
                 f"    let xv = {load(x, 2, row_start('x', geo.used) + ' + c * x_ls')};",
                 f"    let mu = {load(mean, 3, 'mean_off + m')}; let rs = {load(rstd, 4, 'rstd_off + m')};",
                 "    sw = sw + dy * (xv - mu) * rs; sb = sb + dy;",
                 "  }",
                 f"  red[lid] = sw; red[{WG}u + lid] = sb;",
                 "  workgroupBarrier();",
                 f"  for (var s = {WG // 2}u; s > 0u; s = s >> 1u) {{",
                 f"    if (lid < s) {{ red[lid] = red[lid] + red[lid + s]; "
                 f"red[{WG}u + lid] = red[{WG}u + lid] + red[{WG}u + lid + s]; }}",
                 "    workgroupBarrier();",
                 "  }",
                 "  if (lid == 0u) { let o = out_off + (g * L + c) * 2u; b0[o] = red[0]; b0[o + 1u] = red[WG_U]; }"
                 .replace("WG_U", f"{WG}u")]
        return module(tensors, "\n".join(lines), f"var<workgroup> red: array<f32, {2 * WG}>;\n")

    launch(("ln_wb_strided", geo.used, tuple(t.dtype for t in tensors)), "layer_norm_backward_params_strided", tensors,
           params, source, codegen.grid(L * G))
    # finish_sums totals every term of the partials' K; the one not wanted goes to a scratch vector.
    outs = [t if t is not None else empty([L], torch.float32) for t in (gw, gb)]
    finish_sums(partials, G, 1, L, outs)
