"""Copies: device<->CPU transfers, dtype conversion, clone/contiguous, fill, .item()."""
from __future__ import annotations

import torch

from navitrain.wgpu.device import check_index
from navitrain.wgpu.dispatch import implements
from navitrain.wgpu.dtypes import NoKernelForDtype
from navitrain.wgpu.kernels.copy import copy_into, fill, upload_into
from navitrain.wgpu.tensor import DEVICE, WgpuTensor, empty, empty_like, from_cpu, to_cpu

aten = torch.ops.aten


def _is_device(device) -> bool:
    return device is not None and torch.device(device).type == DEVICE.type


@implements(aten.copy_.default)
def copy_(dst, src, non_blocking=False):
    if isinstance(dst, WgpuTensor):
        if isinstance(src, WgpuTensor):
            return copy_into(dst, src)
        upload_into(dst, src)  # CPU -> device
        return dst
    # device -> CPU tensor
    dst.copy_(to_cpu(src))
    return dst


@implements(aten.copy.default)
def copy(x, src, non_blocking=False):
    """The functional form of copy_, which only functionalized graphs hold (torch.compile of code writing into
    a view, `y[..., :k] = v`): a new tensor with x's shape, dtype and layout and src's values (broadcast,
    converted). It fell back to the CPU, and a capture cannot read back, so such graphs ran eagerly."""
    out = empty_like(x) if isinstance(x, WgpuTensor) else torch.empty_like(x)
    return copy_(out, src, non_blocking)


@implements(aten._to_copy.default)
def _to_copy(x, *, dtype=None, layout=None, device=None, pin_memory=None, non_blocking=False, memory_format=None):
    dtype = dtype or x.dtype
    if device is not None and device.type == DEVICE.type:
        check_index(device)  # x.to("wgpu:1") where only wgpu:0 exists
    if not isinstance(x, WgpuTensor):  # CPU -> device (reached through the PrivateUse1 key)
        if isinstance(x, torch.nn.parameter.UninitializedTensorMixin):
            # A lazy module's parameter is made in place when its first forward sees the input's shape; a wgpu
            # tensor is another Python class, which that in-place change cannot give the CPU object. (A module
            # moved whole moves them once made: module_moves.py. This is one moved alone.)
            raise RuntimeError("wgpu: a lazy module (nn.LazyLinear, nn.LazyConv2d, ...) cannot be moved to the wgpu "
                               "device before its parameters exist: run one forward on the CPU first "
                               "(with torch.no_grad(): model(example_batch)), then move the model with .to('wgpu') "
                               "and make the optimizer")
        if memory_format not in (None, torch.preserve_format):
            x = x.contiguous(memory_format=memory_format)
        return from_cpu(x, dtype)
    if device is not None and not _is_device(device):
        cpu = to_cpu(x)
        cpu = cpu.to(dtype=dtype, device=device, memory_format=memory_format or torch.preserve_format)
        return cpu
    if memory_format in (None, torch.preserve_format):
        out = empty_like(x, dtype)
    else:
        out = empty(x.shape, dtype, torch.empty(x.shape, device="meta").to(memory_format=memory_format).stride())
    return copy_into(out, x)


@implements(aten.clone.default)
def clone(x, *, memory_format=None):
    if memory_format in (None, torch.preserve_format):
        out = empty_like(x)
    elif memory_format == torch.contiguous_format:
        out = empty(x.shape, x.dtype)
    else:
        out = empty(x.shape, x.dtype, torch.empty(x.shape, device="meta").to(memory_format=memory_format).stride())
    return copy_into(out, x)


@implements(aten.contiguous.default)
def contiguous(x, *, memory_format=torch.contiguous_format):
    """What PyTorch's CompositeImplicitAutograd kernel does (self when already in that layout, else a
    clone), as a handler: engines call .contiguous() inside other ops' handlers (a conv backward's
    transposed weight), where it reaches this dispatcher, and the decomposition's route there cost
    ~70 us of host time a call against the clone's ~40."""
    if x.is_contiguous(memory_format=memory_format):
        return x
    if memory_format == torch.preserve_format:
        raise RuntimeError("preserve memory format is unsupported by the contiguous operator")
    if not x.dtype.is_complex:  # complex64 clones have their own handler, found through the dispatcher
        try:
            return clone(x, memory_format=memory_format)
        except NoKernelForDtype:
            pass  # the dispatcher's clone takes the counted CPU fallback (contiguous, an alias op, cannot)
    return aten.clone.default(x, memory_format=memory_format)


@implements(aten.lift_fresh.default)
def lift_fresh(x):
    return _fake_if_tracing(x)


@implements(aten.lift_fresh_copy.default)
def lift_fresh_copy(x):
    if not isinstance(x, WgpuTensor):
        return _fake_if_tracing(from_cpu(x))
    traced = _fake_if_tracing(x)
    return clone(x) if traced is x else traced   # (traced: a new tensor already)


def _fake_if_tracing(x):
    """`torch.tensor(data, device="wgpu")` makes a real tensor and lifts it. While torch.compile traces, the
    fake and proxy modes turn CUDA's into a constant of the graph; a wgpu tensor is a subclass those modes leave
    to this handler, and a real tensor among the traced fakes failed the next op ("found at least two devices,
    wgpu:0 and wgpu:0": Hugging Face's KV cache starts as torch.tensor([]) on the device). The modes get a CPU
    tensor instead, which they take as a constant, and its copy to the device (fusion_constants keeps the
    copied value, so a replay does not upload it again)."""
    from torch._guards import detect_fake_mode

    if not isinstance(x, WgpuTensor) or detect_fake_mode() is None:
        return x
    return aten._to_copy.default(to_cpu(x), dtype=x.dtype, device=x.device)


@implements(aten._local_scalar_dense.default)
def item(x):
    return to_cpu(x).item()


@implements(aten.fill_.Scalar, aten.fill_.Tensor)
def fill_(x, value):
    return fill(x, value)


@implements(aten.zero_.default)
def zero_(x):
    return fill(x, 0)


@implements(aten.fill.Scalar, aten.fill.Tensor)
def fill_out_of_place(x, value):
    return fill(empty_like(x), value)
