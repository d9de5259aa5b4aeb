"""Which navitrain route to train on, judged from the facts alone (`navitrain probe` measures it).

Order of preference: `native` (vendor libraries) when torch has working GPU code for the card;
`nomiopen` instead on gfx10 cards, where MIOpen's training kernels are known-bad; `wgpu` when a hardware
Vulkan adapter exists (a CPU build of torch is enough); `cpu` otherwise.
"""
from __future__ import annotations

from navitrain.doctor.knowledge import Finding, finding
from navitrain.doctor.situation import Situation, pick

_HOW = "`device = navitrain.device('{route}')` in Python, or NAVITRAIN_ROUTE={route} for navitrain.device()."


def native_blockers(s: Situation) -> list[str]:
    """Why the vendor-library routes cannot work now (empty when nothing is known against them)."""
    blockers = []
    status, build = s.torch_status, s.torch_build
    if status == "skipped":
        return ["PyTorch was not probed"]
    if status == "missing":
        return ["PyTorch is not installed"]
    if status != "ok":
        return [f"PyTorch {status} ({pick(s.torch, 'error', kind=str) or 'no detail'})"]
    if build == "cpu":
        return [f"PyTorch {s.torch_version} is a CPU-only build"]
    if build == "cuda" and not any(pick(g, "vendor", kind=str) == "NVIDIA" for g in s.gpus):
        blockers.append("this CUDA build of PyTorch needs an NVIDIA GPU")
    if build == "rocm":
        if not s.primary_is_amd:
            blockers.append("this ROCm build of PyTorch needs an AMD GPU")
        else:
            if not s.override_is_safe:
                blockers.append(f"HSA_OVERRIDE_GFX_VERSION={s.override} makes this {s.family or ''} card run "
                                f"{s.override_gfx or 'foreign'} code")
            if s.torch_has_code_for(s.code_gfx) is False:
                blockers.append(f"PyTorch has no code for {s.code_gfx}")
            bundled = s.torch.get("bundled_rocblas_arches")
            if isinstance(bundled, list) and bundled and s.code_gfx not in bundled:
                blockers.append(f"its rocBLAS has no library for {s.code_gfx}")
            if pick(s.kfd_node, "accessible", kind=bool) is False:
                blockers.append("this user cannot open /dev/kfd")
    if s.torch_device_count == 0:
        blockers.append("PyTorch sees no GPU")
    return blockers


def recommend(s: Situation) -> Finding:
    blockers = native_blockers(s)
    hardware_vk = s.hardware_adapters
    vk_name = (pick(s.chosen_adapter, "name", kind=str) if s.chosen_adapter and not pick(s.chosen_adapter, "software")
               else (pick(hardware_vk[0], "name", kind=str) if hardware_vk else None))
    gpu = s.gpu_label()

    if not blockers and s.torch_build in ("rocm", "cuda"):
        if s.torch_build == "rocm" and s.family == "RDNA1":
            return _route("nomiopen", f"Use the `nomiopen` route on {gpu}",
                          f"PyTorch {s.torch_version} has code for the card, but MIOpen's training kernels use "
                          "GCN-only DPP instructions RDNA1 lacks; `nomiopen` keeps rocBLAS and replaces MIOpen "
                          "with navitrain's GEMM convolution." + (f" `wgpu` ({vk_name}) is the alternative."
                                                                   if vk_name else ""))
        return _route("native", f"Use the `native` route on {gpu}",
                      f"PyTorch {s.torch_version} ({s.torch_build}) {_native_evidence(s)}; vendor "
                      "libraries are the fastest route." + (" If MIOpen fails on this gfx10 card, use `nomiopen`."
                                                             if s.family == "RDNA2" else ""))
    if hardware_vk:
        why = "; ".join(blockers) if blockers else "the vendor-library routes are not available"
        return _route("wgpu", f"Use the `wgpu` route on {vk_name or gpu}",
                      f"The native routes are out: {why}. A hardware Vulkan adapter ({vk_name}) runs navitrain's "
                      "compute shaders with the torch you have (a CPU build is enough).")
    if s.vulkan_hardware is None and s.gpus and s.vulkan_status in ("skipped",):
        return _route("cpu", "Use the `cpu` route until Vulkan is checked",
                      "Vulkan adapters were not probed, and the native routes are out: "
                      + "; ".join(blockers or ["unknown"]) + ". Run `navitrain doctor` on the machine itself.")
    if s.gpus:
        return _route("cpu", f"Use the `cpu` route: no working GPU route for {gpu}",
                      "The native routes are out (" + "; ".join(blockers or ["unknown reason"]) + ") and no "
                      "hardware Vulkan adapter exists for the `wgpu` route. Fix either (see the findings above) "
                      "and run the doctor again.")
    if s.vulkan_hardware is None:
        return _route("cpu", "Use the `cpu` route: no GPU was found",
                      "No GPU in sysfs, and Vulkan adapters were not examined (`navitrain doctor` on the machine "
                      "itself lists them); PyTorch on the CPU is the fastest route known here.")
    return _route("cpu", "Use the `cpu` route: this machine has no GPU",
                  "No GPU in sysfs and no hardware Vulkan adapter; PyTorch on the CPU is the fastest route here.")


def _native_evidence(s: Situation) -> str:
    """What is known for the native route: say 'has code for' and 'sees' only where the facts show it."""
    known = []
    if s.torch_has_code_for(s.code_gfx):
        known.append(f"has code for {s.code_gfx}")
    count = s.torch_device_count
    if count:
        known.append(f"sees {count} GPU(s)")
    return " and ".join(known) if known else "shows nothing against the card"


def _route(route: str, title: str, why: str) -> Finding:
    return finding(f"route-{route}", "info", title, why, _HOW.format(route=route), route=route)
