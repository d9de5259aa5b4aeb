"""The copy and fill engine: dst[...] = src (broadcast, any layouts, dtype conversion) and dst[...] = value,
as pointwise kernels, and uploads from the CPU into views of any layout. The aten handlers (copy_, clone,
_to_copy, fill_, zero_) are in `ops/copy.py`."""
from __future__ import annotations

import torch

from navitrain.wgpu.dtypes import NoKernelForDtype
from navitrain.wgpu.kernels import pointwise
from navitrain.wgpu.tensor import WgpuTensor, from_cpu, host_values_for, write_by_read_modify_write, write_directly


def copy_into(dst: WgpuTensor, src: WgpuTensor) -> WgpuTensor:
    """dst[...] = src (broadcast, any layouts, converting dtype like torch's copy_)."""
    compute = pointwise.compute_type(dst.dtype)
    return pointwise.run("copy", "a", [src], dst.dtype, compute, out=dst, shape=tuple(dst.shape))


def fill(x: WgpuTensor, value) -> WgpuTensor:
    compute = pointwise.compute_type(x.dtype)
    if isinstance(value, torch.Tensor):
        if isinstance(value, WgpuTensor):
            return pointwise.run("fill_t", "a", [value], x.dtype, compute, out=x, shape=tuple(x.shape))
        value = value.item()
    if compute == "bool":
        return pointwise.run("fill_b", "s0 != 0", [], x.dtype, "i32", [int(bool(value))], "i", out=x,
                             shape=tuple(x.shape))
    if compute == "f32":
        return pointwise.run("fill_f", "s0", [], x.dtype, compute, [float(value)], "f", out=x, shape=tuple(x.shape))
    return pointwise.run("fill_i", "s0", [], x.dtype, compute, [int(value)], "i", out=x, shape=tuple(x.shape))


def upload_into(dst: WgpuTensor, cpu: torch.Tensor) -> None:
    """Copy CPU values (already broadcast to dst's shape, any dtype) into the device view `dst`."""
    if write_directly(dst, cpu):
        return
    # A general view: stage the values contiguously on the device, then copy with the strided kernel.
    src = host_values_for(dst, cpu)
    staged = from_cpu(src.contiguous(), dst.dtype)
    try:
        copy_into(dst, staged)
    except NoKernelForDtype:
        write_by_read_modify_write(dst, src)
