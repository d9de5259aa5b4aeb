"""Which sizes `navitrain run`'s bench trains: the standard ones wherever a hardware accelerator can be
timed, the tiny ones where the only accelerator is a software Vulkan adapter (lavapipe/llvmpipe, as on
README's fresh machine and in CI), because there a standard ResNet-18 step on wgpu takes minutes and
the answer is known anyway: software Vulkan is slower than PyTorch on the same CPU."""
from __future__ import annotations

from typing import Any

# Routes that only exist on a real GPU: available means hardware.
_HARDWARE_ROUTES = ("native", "nomiopen")


def choose(available: dict[str, str], wgpu_facts: dict[str, Any] | None) -> tuple[bool, str]:
    """(tiny, why) for the routes `available` here; wgpu_facts: the probe fingerprint's "wgpu" facts."""
    hardware = [r for r in _HARDWARE_ROUTES if r in available]
    facts = wgpu_facts or {}
    if "wgpu" in available and not facts.get("software"):
        hardware.append("wgpu")
    if hardware:
        return False, f"standard sizes: {', '.join(hardware)} can be timed on hardware here"
    if "wgpu" in available:
        adapter = facts.get("adapter") or "a software rasteriser"
        return True, (f"tiny sizes: the only wgpu adapter here is software ({adapter}), where a standard-size "
                      "step takes minutes; these numbers measure Python per op, not a GPU, and "
                      "navitrain.device() does not choose from them (navitrain bench --quick times the "
                      "standard sizes)")
    return True, ("tiny sizes: no accelerator here, only the CPU, so there is nothing to compare it with; "
                  "navitrain.device() does not choose from these numbers")


def wgpu_facts() -> dict[str, Any] | None:
    """The fingerprint's facts about the wgpu adapter (whether it is software, its name), if known."""
    try:
        from navitrain.bench.machine import fingerprint_object

        fp = fingerprint_object()
    except Exception:
        return None
    return ((getattr(fp, "facts", None) or {}).get("wgpu")) if fp is not None else None
