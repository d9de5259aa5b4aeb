"""torch.save / torch.load for wgpu tensors, through PyTorch's own location registry.

A wgpu tensor's data lives in a GPU heap block, not in a PyTorch storage, so it is pickled as a CPU
tensor whose storage is tagged "wgpu:0" (WgpuTensor.__reduce_ex__, navitrain.wgpu.tensor). PyTorch
writes the CPU bytes and records that location, as it does for CUDA tensors; `torch.load` then
restores it on wgpu by default, and `map_location` ("cpu", "wgpu", "wgpu:0", a torch.device, a dict,
a callable) works as for CUDA. The facade calls `register()`.

Restoring on wgpu: PyTorch rebuilds a tensor as `torch.empty(0, device=storage.device).set_(storage,
offset, size, stride)`. The deserializer returns a storage object that reports device wgpu and carries
the CPU bytes, and the `set_` handler below uploads them (once per storage and dtype, so views of one
storage stay one block).
"""
from __future__ import annotations

import re

import torch

from navitrain.wgpu import device as _device
from navitrain.wgpu import process_device
from navitrain.wgpu.dispatch import implements
from navitrain.wgpu.tensor import SAVED_LOCATION_ATTR, from_cpu, set_geometry

aten = torch.ops.aten
_LOCATION = re.compile(r"wgpu(:\d+)?$")
# Before PyTorch's own taggers (cpu is 10) and deserializers (PrivateUse1's is 23, and it cannot
# allocate a storage for a Python backend).
_PRIORITY = 9
_registered = False


def _tag(storage) -> str | None:
    return getattr(storage, SAVED_LOCATION_ATTR, None)


def _restore(storage, location: str):
    if not isinstance(location, str) or not _LOCATION.match(location):
        return None
    index = torch.device(location).index
    if index is not None and index != process_device.CURRENT.index and index >= len(_device.adapter_names()):
        _device.select(index)  # raises: no such adapter on this machine
    # Any wgpu:N this machine has loads on this process's adapter (one per process): a checkpoint rank 0
    # saved from wgpu:0 must load on every rank.
    if storage.device.type != "cpu":
        storage = storage.cpu()
    carrier = _Carrier(1)
    carrier._navitrain_cpu = storage
    carrier._navitrain_uploaded = {}
    return carrier


class _Carrier(torch.UntypedStorage):
    """What `_restore` hands back: a one-byte CPU storage that says it is on wgpu (so PyTorch builds the
    tensor on wgpu) and carries the real CPU bytes. A wrapper tensor's own storage would not do: torch.load
    reads its data pointer, which wrapper storages refuse."""

    @property
    def device(self):
        return process_device.CURRENT


def register() -> None:
    """Give torch.save/torch.load the wgpu location (once: PyTorch keeps every package registered)."""
    global _registered
    if not _registered:
        torch.serialization.register_package(_PRIORITY, _tag, _restore)
        _registered = True


@implements(aten.set_.source_Storage_storage_offset, aten.set_.source_Storage)
def set_from_storage(x, source, storage_offset=0, size=None, stride=None):
    cpu = getattr(source, "_navitrain_cpu", None)
    if cpu is None:
        raise NotImplementedError(
            "set_ with a storage object on the wgpu device: wgpu tensors keep their data outside PyTorch "
            "storages; use x.set_(other_tensor)")
    uploaded = source._navitrain_uploaded
    ws = uploaded.get(x.dtype)
    if ws is None:
        flat = torch.empty(0, dtype=x.dtype).set_(cpu)
        ws = uploaded[x.dtype] = from_cpu(flat)._ws
    if size is None:
        size = [ws.nelem]
    if stride is None or len(stride) == 0 and len(size) != 0:
        stride = torch.empty(size, device="meta").stride()
    set_geometry(x, ws, list(size), list(stride), storage_offset)
    return x
