"""The copy and fill engine: dst[...] = src (broadcast, any layouts, dtype conversion) and dst[...] = value,
as pointwise kernels, and uploads from the CPU into views of any layout. The aten handlers (copy_, clone,
_to_copy, fill_, zero_) are in `ops/copy.py`."""
from __future__ import annotations

import torch

from navitrain.wgpu.dtypes import NoKernelForDtype
from navitrain.wgpu.kernels import float64_exprs, pointwise
from navitrain.wgpu.tensor import WgpuTensor, from_cpu, host_values_for, write_by_read_modify_write, write_directly


def copy_into(dst: WgpuTensor, src: WgpuTensor) -> WgpuTensor:
    """dst[...] = src (broadcast, any layouts, converting dtype like torch's copy_). float64 converts on the
    GPU where the adapter has shader-f64: a conversion is exact or correctly rounded (f64 -> f16/bf16 goes
    through f32, as the CPU's does)."""
    compute = pointwise.compute_type(dst.dtype, native_f64=True)
    return pointwise.run("copy", "a", [src], dst.dtype, compute, out=dst, shape=tuple(dst.shape), native_f64=True)


def fill(x: WgpuTensor, value) -> WgpuTensor:
    compute = pointwise.compute_type(x.dtype, native_f64=True)
    if isinstance(value, torch.Tensor):
        if isinstance(value, WgpuTensor):
            return pointwise.run("fill_t", "a", [value], x.dtype, compute, out=x, shape=tuple(x.shape),
                                 native_f64=True)
        value = value.item()
    if compute == "f64":
        return pointwise.run("fill_f64", "f64_from_bits(s0, s1)", [], x.dtype, compute,
                             float64_exprs.double_words(value), "ii", out=x, shape=tuple(x.shape), native_f64=True)
    if compute == "bool":
        return pointwise.run("fill_b", "s0 != 0", [], x.dtype, "i32", [int(bool(value))], "i", out=x,
                             shape=tuple(x.shape))
    if compute == "f32":
        return pointwise.run("fill_f", "s0", [], x.dtype, compute, [float(value)], "f", out=x, shape=tuple(x.shape))
    value = int(value)
    if not -2**31 <= value < 2**31:
        # scalars are 32-bit words: a wider int64 value (torch.iinfo(torch.int64).max as a sentinel) is
        # uploaded as a 0-d tensor and broadcast instead
        one = from_cpu(torch.tensor(value, dtype=x.dtype))
        return pointwise.run("fill_t", "a", [one], x.dtype, compute, out=x, shape=tuple(x.shape))
    return pointwise.run("fill_i", "s0", [], x.dtype, compute, [value], "i", out=x, shape=tuple(x.shape))


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
