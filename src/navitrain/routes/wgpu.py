"""Route `wgpu`: navitrain's WGSL kernels on Vulkan, Metal or DX12 through wgpu. Needs no ROCm and no
vendor compute library: a CPU build of torch and a Vulkan driver (Mesa's RADV supports every RDNA1
card) are enough. On a machine with only a software rasteriser (llvmpipe/lavapipe) the route still
works, slowly, and says so.
"""
from __future__ import annotations

from navitrain.routes.base import Availability, Route
from navitrain.routes.registry import register


@register
class WgpuRoute(Route):
    name = "wgpu"
    summary = "navitrain's WGSL kernels on Vulkan/Metal/DX12 via wgpu (no ROCm needed)"
    default_rank = 30

    def availability(self) -> Availability:
        try:
            from navitrain import _env
            from navitrain.adapters import choose, list_adapters

            infos = [info for _, info in list_adapters()]
        except Exception as exc:  # wgpu missing or its native library broken
            return Availability(False, f"wgpu does not start: {exc}")
        index = choose(infos, _env.wgpu_adapter())
        if index is None:
            if not infos:
                return Availability(False, "no Vulkan/Metal/DX12 adapter (install mesa-vulkan-drivers libvulkan1)")
            return Availability(False, f"{_env.WGPU_ADAPTER}={_env.wgpu_adapter()!r} matches no adapter")
        info = infos[index]
        kind = "software rasteriser, slow" if info.software else info.adapter_type
        return Availability(True, f"{info.name} via {info.backend} ({info.driver}; {kind})")

    def prepare(self):
        import navitrain.wgpu as nw

        nw.adapter_info()  # opens the device now, so a broken driver fails here, not mid-training
        return nw.DEVICE
