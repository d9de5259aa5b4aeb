"""Registering "wgpu" with PyTorch: the PrivateUse1 dispatch key renamed, its device module and factories.

After `register()`, `torch.device("wgpu")` exists, `torch.wgpu` is navitrain.wgpu, and factories called
with device="wgpu" (torch.empty/zeros/randn/..., `.to("wgpu")`) allocate WgpuTensors: they reach the
PrivateUse1 kernels registered here for `empty.memory_format` and `empty_strided`, and every other
factory-like op without tensor inputs reaches the PrivateUse1 fallback, which builds the result on the
CPU and moves it over (counted like any fallback).
"""
from __future__ import annotations

import sys

import torch

MIN_TORCH = (2, 11)
_registered = False
_libs: list = []


def _check_torch() -> None:
    version = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2])
    if version < MIN_TORCH:
        raise RuntimeError(
            f"navitrain's wgpu device needs torch >= {MIN_TORCH[0]}.{MIN_TORCH[1]} (the lowest version it is "
            f"tested with); this is torch {torch.__version__}")


def register() -> None:
    global _registered
    if _registered:
        return
    _check_torch()
    name = torch._C._get_privateuse1_backend_name()
    if name not in ("privateuseone", "wgpu"):
        raise RuntimeError(f"the PrivateUse1 device is already taken by another backend ({name!r})")
    from torch.utils.backend_registration import _setup_privateuseone_for_python_backend

    module = sys.modules["navitrain.wgpu"]
    if name == "privateuseone":
        _setup_privateuseone_for_python_backend("wgpu", backend_module=module)
    global CURRENT
    CURRENT = torch.device("wgpu", 0)
    _registered = True


def register_factories() -> None:
    from navitrain.wgpu import dispatch, ops  # noqa: F401  (ops fills dispatch.OPS)
    from navitrain.wgpu.tensor import empty

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


# The wgpu:N this process drives. One adapter per process (as torchrun runs one rank per GPU): the
# runtime opens adapter N of adapters.device_order when it starts, and every wgpu tensor of the
# process reports this device. Until then set_device(N) or a first `device="wgpu:N"` may change it.
CURRENT: torch.device = None  # type: ignore[assignment]  (wgpu:0 once register() named the device)


def adapter_names() -> list[str]:
    """Adapter names in wgpu:N order (the runtime's list once it runs; enumerating them otherwise)."""
    from navitrain.adapters import device_order, list_adapters
    from navitrain.wgpu import runtime as rt_mod

    infos = rt_mod.runtime().all_adapters if rt_mod.is_started() else [info for _, info in list_adapters()]
    return [infos[i].name for i in device_order(infos)]


def select(index: int) -> None:
    """Make wgpu:`index` this process's device; only before the runtime starts (or a no-op)."""
    global CURRENT
    from navitrain.wgpu import runtime as rt_mod

    if index == CURRENT.index:
        return
    names = adapter_names()
    if not 0 <= index < len(names):
        raise RuntimeError(f"wgpu device wgpu:{index} does not exist: adapters on this machine in wgpu:N order: "
                           + ", ".join(f"wgpu:{i} {n}" for i, n in enumerate(names)))
    if rt_mod.is_started():
        raise RuntimeError(
            f"wgpu:{index} asked for, but this process already drives {CURRENT} ({rt_mod.runtime().info.name}): "
            f"navitrain drives one adapter per process; choose it before the first wgpu tensor "
            f"(torch.wgpu.set_device({index}), or one process per adapter as torchrun starts them)")
    CURRENT = torch.device("wgpu", index)


def check_index(device) -> None:
    """Raise unless `device` (a torch.device, or None) names this process's adapter (choosing it if the
    runtime has not started yet)."""
    if device is None or device.index is None or device.index == CURRENT.index:
        return
    select(device.index)


def _pin_memory(tensor, device=None):
    target = device.type if device is not None else _accelerator_name()
    if target != "wgpu":
        raise RuntimeError(f"navitrain.wgpu took over CPU pin_memory for the wgpu device and cannot pin for "
                           f"{target!r} (a Python backend has no way to reach that backend's pinned allocator)")
    return tensor.clone(memory_format=torch.preserve_format)


def _accelerator_name() -> str | None:
    acc = torch.accelerator.current_accelerator()
    return acc.type if acc is not None else None
