"""Opening the runtime's wgpu device: which adapter (NAVITRAIN_WGPU_ADAPTER, else wgpu:N of this
process), and which features and limits to ask it for (NAVITRAIN_WGPU_LIMITS caps them)."""
from __future__ import annotations

import logging

from navitrain import _env
from navitrain.adapters import AdapterInfo, choose, device_order, list_adapters
from navitrain.wgpu import process_device
from navitrain.wgpu.errors import WgpuError

log = logging.getLogger("navitrain.wgpu")

# Limits asked for at the adapter's maximum rather than WebGPU's small defaults.
_RAISED_LIMITS = (
    "max-storage-buffer-binding-size", "max-buffer-size", "max-compute-workgroup-storage-size",
    "max-compute-invocations-per-workgroup", "max-compute-workgroup-size-x",
    "max-compute-workgroup-size-y", "max-storage-buffers-per-shader-stage",
)


def choose_adapter() -> tuple[object, AdapterInfo, list[AdapterInfo]]:
    """(adapter, its description, every adapter's description) for this process's device."""
    pairs = list_adapters()
    infos = [info for _, info in pairs]
    want = _env.wgpu_adapter()
    order = device_order(infos)
    asked = process_device.CURRENT.index
    index = choose(infos, want) if want else (order[asked] if asked < len(order) else None)
    if index is None and not want and infos:
        raise WgpuError(f"wgpu:{asked} does not exist: {len(order)} adapter(s) in wgpu:N order: "
                        + ", ".join(infos[i].name for i in order))
    if index is None:
        if want:
            names = ", ".join(i.name for i in infos) or "none"
            raise WgpuError(f"{_env.WGPU_ADAPTER}={want!r} matches no adapter (adapters: {names})")
        raise WgpuError(
            "no Vulkan/Metal/DX12 adapter found; install a Vulkan driver "
            "(Debian/Ubuntu: sudo apt-get install mesa-vulkan-drivers libvulkan1)")
    adapter, info = pairs[index]
    if info.software:
        log.warning("wgpu is running on a software adapter (%s): correct but slow", info.name)
    return adapter, info, infos


def request_device(adapter) -> tuple[object, frozenset[str], object]:
    """(device, the features it was given, the NAVITRAIN_WGPU_LIMITS profile or None)."""
    feats = set(adapter.features)
    want_features = [f for f in ("shader-f16", "shader-f64", "shader-int64", "subgroup", "timestamp-query")
                     if f in feats]
    limits = dict(adapter.limits)
    keys = _RAISED_LIMITS
    # NAVITRAIN_WGPU_LIMITS: ask for no more than a given card offers (navitrain.wgpu.limits_profile),
    # so a kernel that would not fit that card fails here too.
    limits_profile = _env.value(_env.WGPU_LIMITS)
    if limits_profile is not None:
        want_features = limits_profile.allow(want_features)
        limits = limits_profile.cap(limits)
        keys += tuple(k for k in limits_profile.limits if k not in keys)
    required_limits = {k: limits[k] for k in keys if k in limits}
    device = adapter.request_device_sync(
        label="navitrain", required_features=want_features, required_limits=required_limits)
    return device, frozenset(want_features), limits_profile
