"""The PrivateUse1 kernels that make PyTorch's factories build wgpu tensors.

Factories called with device="wgpu" (torch.empty/zeros/randn/..., `.to("wgpu")`) allocate WgpuTensors:
they reach the PrivateUse1 kernels registered here for `empty.memory_format` and `empty_strided`, and
every other factory-like op without tensor inputs reaches the PrivateUse1 fallback, which builds the
result on the CPU and moves it over (counted like any fallback).
"""
from __future__ import annotations

import torch

from navitrain.wgpu import dispatch
from navitrain.wgpu.device import check_index
from navitrain.wgpu.tensor import empty

_libs: list = []


def register() -> None:
    """Register the PrivateUse1 kernels: once, after the op handlers (navitrain.wgpu.ops), some of which
    are registered here a second time."""
    lib = torch.library.Library("aten", "IMPL")

    def empty_memory_format(size, dtype=None, layout=None, device=None, pin_memory=None, memory_format=None):
        check_index(device)
        dtype = dtype or torch.get_default_dtype()
        if memory_format in (None, torch.contiguous_format, torch.preserve_format):
            return empty(size, dtype)
        strides = torch.empty(size, device="meta").to(memory_format=memory_format).stride()
        return empty(size, dtype, strides)

    def empty_strided(size, stride, dtype=None, layout=None, device=None, pin_memory=None):
        check_index(device)
        return empty(size, dtype or torch.get_default_dtype(), stride)

    def efficient_zeros(size, dtype=None, layout=None, device=None, pin_memory=None):
        # Autograd's zero gradients (sgn, sign, round, ...): PyTorch's ZeroTensor is a CPU/CUDA-only
        # trick that holds no data, so a plain zero-filled tensor stands in for it.
        check_index(device)
        return torch.ops.aten.zero_.default(empty(size, dtype or torch.get_default_dtype()))

    lib.impl("empty.memory_format", empty_memory_format, "PrivateUse1")
    lib.impl("empty_strided", empty_strided, "PrivateUse1")
    lib.impl("_efficientzerotensor", efficient_zeros, "PrivateUse1")

    # Some paths reach our tensors with the Python key excluded (torch.tensor(..., device="wgpu") copies
    # its CPU data in that way): give them the handlers directly on the PrivateUse1 key.
    for name in ("copy_", "_to_copy", "_local_scalar_dense", "fill_.Scalar", "zero_"):
        overload = name if "." in name else name + ".default"
        packet, ov = overload.split(".")
        op = getattr(getattr(torch.ops.aten, packet), ov)
        lib.impl(name, dispatch.OPS[op], "PrivateUse1")

    # Pinned (page-locked) host memory: PyTorch asks the PrivateUse1 hooks for a pinned allocator, which
    # a Python backend cannot provide (torch 2.13's Python hooks expose is_available/is_built/
    # has_primary_context only). Uploads to wgpu are staged through wgpu's own mapped buffers, so a
    # page-locked source would gain nothing: pinning for wgpu is a plain CPU copy (`_pin_memory`
    # promises a new, non-aliasing tensor). This is the CPU key's kernel, so it sees every pin request.
    lib.impl("_pin_memory", _pin_memory, "CPU")

    fallback_lib = torch.library.Library("_", "IMPL")

    def factory_fallback(op, *args, **kwargs):
        # Reached only by ops with no wgpu tensor argument (those go to __torch_dispatch__ first).
        return dispatch.cpu_fallback(op, args, kwargs)

    fallback_lib.fallback(factory_fallback, "PrivateUse1")
    _libs.extend([lib, fallback_lib])  # keep the registrations alive


def _pin_memory(tensor, device=None):
    target = device.type if device is not None else _accelerator_name()
    if target != "wgpu":
        raise RuntimeError(f"navitrain.wgpu took over CPU pin_memory for the wgpu device and cannot pin for "
                           f"{target!r} (a Python backend has no way to reach that backend's pinned allocator)")
    return tensor.clone(memory_format=torch.preserve_format)


def _accelerator_name() -> str | None:
    acc = torch.accelerator.current_accelerator()
    return acc.type if acc is not None else None
