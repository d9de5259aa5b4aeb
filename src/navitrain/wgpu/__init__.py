"""navitrain's wgpu device: PyTorch training on any GPU with a Vulkan, Metal or DX12 driver, no ROCm.

    import torch, navitrain.wgpu          # registers the device "wgpu"
    model = MyModel().to("wgpu")
    x = torch.randn(64, 784, device="wgpu")

This module is also `torch.wgpu` (PyTorch's device module for the backend): seeding, synchronisation
and memory statistics live here. Importing it needs torch >= 2.11; the GPU itself is opened on first use.
"""
from __future__ import annotations

import torch as _torch

from navitrain import float_modes as _float_modes
from navitrain.wgpu import device as _device

# The device name must exist before any module below builds torch.device("wgpu", 0).
_device.register()

from navitrain.wgpu import dispatch as _dispatch  # noqa: E402
from navitrain.wgpu import factories as _factories  # noqa: E402
from navitrain.wgpu import process_device as _process_device  # noqa: E402
from navitrain.wgpu import rng as _rng  # noqa: E402
from navitrain.wgpu import runtime as _runtime_mod  # noqa: E402
from navitrain.wgpu.kernels import copy as _copy_engine  # noqa: E402
from navitrain.wgpu.runtime import DeviceLostError, GraphCaptureError, KernelCompileError, WgpuError  # noqa: E402
from navitrain.wgpu.tensor import DEVICE, WgpuTensor  # noqa: E402

__all__ = [
    "DEVICE", "WgpuTensor", "WgpuError", "KernelCompileError", "DeviceLostError", "adapter_info", "synchronize",
    "memory_allocated", "max_memory_allocated", "memory_reserved", "reset_peak_memory_stats", "empty_cache",
    "memory_stats", "fallback_report", "reset_fallback_counts", "manual_seed", "manual_seed_all", "seed",
    "initial_seed", "get_rng_state", "set_rng_state", "is_available", "device_count", "current_device", "profile",
    "WgpuGraph", "graph", "graphed", "is_current_stream_capturing", "GraphCaptureError",
]

# Wiring the layers together, bottom up: dispatch runs the copy engine above it (CPU fallbacks write
# back through it); every op handler registers itself at import; the factory kernels use some of them.
_dispatch.use_copy_engine(_copy_engine.fill, _copy_engine.upload_into)
from navitrain.wgpu import ops as _ops  # noqa: E402,F401  (registers every op handler)
from navitrain.wgpu import serialization as _serialization  # noqa: E402  (torch.save/load, and set_ from a storage)

_factories.register()
_serialization.register()
from navitrain.wgpu import module_moves as _module_moves  # noqa: E402  (model.cpu() keeps the Parameter objects)

_module_moves.register()


def _enable_foreach_optimizers() -> None:
    """torch.optim only takes its foreach (list-op) path for tensor types it lists as supported;
    otherwise an Adam step is ~6 ops per parameter. Our list ops are single multi-tensor dispatches."""
    try:
        from torch.optim import optimizer as _optimizer

        if WgpuTensor not in _optimizer._foreach_supported_types:
            _optimizer._foreach_supported_types.append(WgpuTensor)
    except (ImportError, AttributeError):  # other torch versions: the per-parameter path still works
        pass


_enable_foreach_optimizers()

from navitrain.wgpu import autocast as _autocast  # noqa: E402
from navitrain.wgpu.graphs import WgpuGraph, graph, graphed  # noqa: E402
from navitrain.wgpu.graphs import is_capturing as is_current_stream_capturing  # noqa: E402

_autocast.register()

# torch.compile(backend="wgpu") (navitrain.wgpu.compile): importing torch._dynamo takes seconds, so the
# backend is registered here only where it is already loaded; otherwise dynamo finds it through the
# torch_dynamo_backends entry point in pyproject.toml when a compile asks for it.
if "torch._dynamo" in __import__("sys").modules:
    from navitrain.wgpu import compile as _compile  # noqa: E402,F401
from navitrain.wgpu import compile_default as _compile_default  # noqa: E402  (torch.compile(model) on wgpu)

_compile_default.register()

# Backward on the calling thread rather than on autograd's per-device worker: a device registered
# after the process's first backward (a CPU warm-up before navitrain.device(), say) has no worker
# queue and PyTorch's engine asserts; the calling thread needs none. (Thread-local: it applies to the
# thread that imports navitrain.wgpu, normally the one that trains.)
_torch._C._set_multithreading_enabled(False)

fallback_report = _dispatch.fallback_report
reset_fallback_counts = _dispatch.reset_fallback_counts
manual_seed = _rng.manual_seed
manual_seed_all = _rng.manual_seed
seed = _rng.seed
initial_seed = _rng.initial_seed
get_rng_state = _rng.get_rng_state
set_rng_state = _rng.set_rng_state


def adapter_info() -> dict:
    """The adapter in use: name, driver, type, backend, whether it is a software rasteriser, features, and
    `flushes_subnormals`: whether its arithmetic turns float32 subnormals into zero (NVIDIA's Vulkan driver
    does, as torch.set_flush_denormal(True) does on the CPU; probed by one tiny kernel on the first call)."""
    rt = _runtime_mod.runtime()
    return {**rt.describe(), "flushes_subnormals": _float_modes.flushes_subnormals(rt.device)}


def synchronize(device=None) -> None:
    """Submit recorded work and wait for the GPU to finish it."""
    _dispatch.raise_pending()
    if _runtime_mod.is_started():
        _runtime_mod.runtime().synchronize()


from navitrain.wgpu.profiling import profile  # noqa: E402


def memory_allocated(device=None) -> int:
    """Bytes held by live tensors (rounded to the allocator's size classes)."""
    return _runtime_mod.runtime().allocator.allocated if _runtime_mod.is_started() else 0


def max_memory_allocated(device=None) -> int:
    return _runtime_mod.runtime().allocator.peak_allocated if _runtime_mod.is_started() else 0


def reset_peak_memory_stats(device=None) -> None:
    if _runtime_mod.is_started():
        alloc = _runtime_mod.runtime().allocator
        alloc.peak_allocated = alloc.allocated


def memory_reserved(device=None) -> int:
    """Bytes of GPU buffers held by the caching allocator."""
    return _runtime_mod.runtime().allocator.reserved if _runtime_mod.is_started() else 0


def memory_stats(device=None) -> dict:
    return _runtime_mod.runtime().allocator.stats() if _runtime_mod.is_started() else {}


def empty_cache() -> None:
    """Give cached, unused GPU buffers back to the driver."""
    if _runtime_mod.is_started():
        _runtime_mod.runtime().allocator.empty_cache()


# -- what PyTorch asks of a device module ---------------------------------------------------------
def is_available() -> bool:
    try:
        _runtime_mod.runtime()
        return True
    except Exception:
        return False


def is_initialized() -> bool:
    return _runtime_mod.is_started()


def device_count() -> int:
    """Adapters as wgpu:0..N-1 (hardware ones; llvmpipe only where there is none). One per process."""
    return len(_device.adapter_names())


def current_device() -> int:
    return _process_device.CURRENT.index


def set_device(device) -> None:
    """Choose this process's adapter, wgpu:N (before its first wgpu tensor; torchrun: LOCAL_RANK)."""
    index = device if isinstance(device, int) else _torch.device(device).index
    if index is not None:
        _device.select(index)


def _is_in_bad_fork() -> bool:
    return False


def get_amp_supported_dtype() -> list:
    """dtypes torch.autocast("wgpu", dtype=...) accepts: float16 and bfloat16."""
    return [_torch.float16, _torch.bfloat16]
