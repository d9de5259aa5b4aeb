"""Registering "wgpu" with PyTorch: the PrivateUse1 dispatch key renamed and its device module, and which
wgpu:N this process drives (set_device, `device="wgpu:N"`).

After `register()`, `torch.device("wgpu")` exists and `torch.wgpu` is navitrain.wgpu. The kernels that
make factories called with device="wgpu" allocate WgpuTensors are registered by navitrain.wgpu.factories,
which needs the tensor and dispatch modules (they need the device name, so they come after this one).
"""
from __future__ import annotations

import sys

import torch

from navitrain._version import MIN_TORCH
from navitrain.adapters import device_order, list_adapters
from navitrain.wgpu import process_device
from navitrain.wgpu import runtime as rt_mod

_registered = False


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
    process_device.CURRENT = torch.device("wgpu", 0)
    _registered = True


def adapter_names() -> list[str]:
    """Adapter names in wgpu:N order (the runtime's list once it runs; enumerating them otherwise)."""
    infos = rt_mod.runtime().all_adapters if rt_mod.is_started() else [info for _, info in list_adapters()]
    return [infos[i].name for i in device_order(infos)]


def select(index: int) -> None:
    """Make wgpu:`index` this process's device; only before the runtime starts (or a no-op)."""
    current = process_device.CURRENT
    if index == current.index:
        return
    names = adapter_names()
    if not 0 <= index < len(names):
        raise RuntimeError(f"wgpu device wgpu:{index} does not exist: adapters on this machine in wgpu:N order: "
                           + ", ".join(f"wgpu:{i} {n}" for i, n in enumerate(names)))
    if rt_mod.is_started():
        raise RuntimeError(
            f"wgpu:{index} asked for, but this process already drives {current} ({rt_mod.runtime().info.name}): "
            f"navitrain drives one adapter per process; choose it before the first wgpu tensor "
            f"(torch.wgpu.set_device({index}), or one process per adapter as torchrun starts them)")
    process_device.CURRENT = torch.device("wgpu", index)


def check_index(device) -> None:
    """Raise unless `device` (a torch.device, or None) names this process's adapter (choosing it if the
    runtime has not started yet)."""
    if device is None or device.index is None or device.index == process_device.CURRENT.index:
        return
    select(device.index)
