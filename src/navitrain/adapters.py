"""Finding and choosing a wgpu adapter (Vulkan, Metal or DX12; never the GL backend). Torch-free, so the
doctor can use it when torch is broken.


Choice order: a hardware GPU first (discrete before integrated), a software rasteriser
(llvmpipe/lavapipe, SwiftShader, WARP) only when nothing else exists or when asked for by name with
NAVITRAIN_WGPU_ADAPTER. The pure functions here (`describe`, `rank`, `choose`) take plain dicts so the
doctor and the tests can use them without a GPU.
"""
from __future__ import annotations

import atexit
import os
import shutil
from dataclasses import asdict, dataclass

from navitrain import _env

BACKENDS = ("Vulkan", "Metal", "DX12")
_SOFTWARE_MARKERS = ("llvmpipe", "lavapipe", "swiftshader", "softpipe", "microsoft basic render", "warp")
_TYPE_ORDER = {"DiscreteGPU": 0, "IntegratedGPU": 1, "VirtualGPU": 2, "Unknown": 3, "CPU": 4}


@dataclass(frozen=True)
class AdapterInfo:
    name: str          # e.g. "AMD Radeon RX 5700 XT (RADV NAVI10)"
    vendor: str        # wgpu's vendor string (may be empty)
    vendor_id: int     # PCI vendor id where the driver gives one (0x1002 AMD, 0x10de NVIDIA, 0x8086 Intel)
    device_id: int
    adapter_type: str  # DiscreteGPU, IntegratedGPU, VirtualGPU, CPU, Unknown
    backend: str       # Vulkan, Metal, DX12
    driver: str        # wgpu's description: driver name and version (e.g. "Mesa 24.2.8", "580.159.04")
    software: bool     # a CPU rasteriser, not a GPU

    def to_dict(self) -> dict:
        return asdict(self)


def describe(info: dict) -> AdapterInfo:
    """Normalise wgpu's adapter.info dict."""
    name = str(info.get("device", "") or "")
    vendor = str(info.get("vendor", "") or "")
    adapter_type = str(info.get("adapter_type", "Unknown") or "Unknown")
    text = f"{name} {vendor}".lower()
    software = adapter_type == "CPU" or any(m in text for m in _SOFTWARE_MARKERS)
    return AdapterInfo(
        name=name,
        vendor=vendor,
        vendor_id=int(info.get("vendor_id", 0) or 0),
        device_id=int(info.get("device_id", 0) or 0),
        adapter_type=adapter_type,
        backend=str(info.get("backend_type", "") or ""),
        driver=str(info.get("description", "") or ""),
        software=software,
    )


def rank(info: AdapterInfo) -> tuple:
    """Sort key: hardware before software, discrete before integrated, then Vulkan before others."""
    return (info.software, _TYPE_ORDER.get(info.adapter_type, 3), 0 if info.backend == "Vulkan" else 1, info.name)


def choose(infos: list[AdapterInfo], want: str | None = None) -> int | None:
    """Index of the adapter to use, or None when there is none (or none matches `want`)."""
    if not infos:
        return None
    order = sorted(range(len(infos)), key=lambda i: rank(infos[i]))
    if want:
        w = want.lower()
        aliases = ("llvmpipe", "lavapipe", "software", "cpu")
        for i in order:
            hay = f"{infos[i].name} {infos[i].vendor} {infos[i].driver}".lower()
            if w in hay or (w in aliases and infos[i].software):
                return i
        return None
    return order[0]


def device_order(infos: list[AdapterInfo]) -> list[int]:
    """Indices into `infos` in wgpu:N order: wgpu:0 is the adapter `choose` picks, then the other hardware
    adapters by `rank` (two identical cards keep the driver's enumeration order: sorted() is stable);
    software rasterisers count only where there is no hardware adapter, so that torchrun's second rank
    on a one-GPU machine is not put on llvmpipe."""
    order = sorted(range(len(infos)), key=lambda i: rank(infos[i]))
    hardware = [i for i in order if not infos[i].software]
    return hardware or order


def prepare_instance() -> None:
    """Restrict wgpu to compute-capable native backends, before the first adapter request.

    Mesa's WSI code prints errors when XDG_RUNTIME_DIR is unset (headless servers, CI); a private
    empty directory silences that without affecting anything else.
    """
    if not os.environ.get("XDG_RUNTIME_DIR"):
        # Removed at exit, and it names its owner so that the next probe run removes it after a process
        # that ended without exit handlers (os._exit, a signal): each such process used to leave one.
        from navitrain.probe import tempdirs

        path = tempdirs.make("navitrain-xdg-")
        atexit.register(shutil.rmtree, path, True)
        os.environ["XDG_RUNTIME_DIR"] = str(path)
    try:
        from wgpu.backends.wgpu_native import extras

        extras.set_instance_extras(backends=list(BACKENDS))
    except Exception:  # instance already created, or an older wgpu: keep its defaults
        pass


def list_adapters() -> list[tuple[object, AdapterInfo]]:
    """(wgpu adapter, info) for every Vulkan/Metal/DX12 adapter wgpu can see. Raises on a broken wgpu."""
    prepare_instance()
    import wgpu

    out = []
    for adapter in wgpu.gpu.enumerate_adapters_sync():
        info = describe(dict(adapter.info))
        if info.backend in BACKENDS:
            out.append((adapter, info))
    return out


def chosen_adapter_info() -> tuple[list[AdapterInfo], int | None]:
    """All adapters and the index navitrain would pick (honouring NAVITRAIN_WGPU_ADAPTER)."""
    pairs = list_adapters()
    infos = [info for _, info in pairs]
    return infos, choose(infos, _env.wgpu_adapter())
