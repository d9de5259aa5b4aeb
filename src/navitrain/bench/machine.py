"""What machine and software a bench ran on, for its report, its chart title and its stored results."""
from __future__ import annotations

import os
import platform
from typing import Any


def cpu_model() -> str:
    """The CPU's marketing name where the OS says it, else the architecture."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return " ".join(line.split(":", 1)[1].split())
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def _version(module: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(module)
    except Exception:
        return None


def fingerprint_object():
    """The probe's Fingerprint of this stack (computed once per process), or None without the probe."""
    try:
        from navitrain.probe import fingerprint as fingerprints

        return fingerprints.current()
    except Exception:
        return None


def fingerprint() -> str | None:
    """The fingerprint's id: the key bench results are stored under."""
    fp = fingerprint_object()
    return None if fp is None else str(getattr(fp, "id", fp))


def machine_info(routes: list | None = None) -> dict[str, Any]:
    """CPU, devices seen by the routes, and versions. `routes` are runner.RouteInfo objects."""
    from navitrain._version import __version__

    try:
        import torch

        torch_version = torch.__version__
    except Exception:
        torch_version = None
    devices = {}
    for info in routes or []:
        if getattr(info, "status", "") == "ok" and getattr(info, "device_name", ""):
            devices[info.route] = info.device_name
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "torch": torch_version,
        "wgpu": _version("wgpu"),
        "navitrain": __version__,
        "devices": devices,
        "fingerprint": fingerprint(),
        "stack": _stack_summary(),
    }


def _stack_summary() -> str | None:
    fp = fingerprint_object()
    try:
        return fp.summary() if fp is not None else None
    except Exception:
        return None


def title_line(machine: dict[str, Any]) -> str:
    """One line naming what each route ran on, and the versions, for chart titles."""
    devices = dict(machine.get("devices", {}))
    cpu = machine.get("cpu", "")
    if machine.get("cores"):
        cpu += f" ({machine['cores']} cores)"
    devices["cpu"] = cpu
    # one entry per distinct device; routes sharing a GPU (native, nomiopen) are named together
    by_device: dict[str, list[str]] = {}
    for route, name in devices.items():
        by_device.setdefault(name, []).append(route)
    parts = [f"{'/'.join(routes)}: {name}" for name, routes in by_device.items() if name]
    versions = f"torch {machine.get('torch')}, navitrain {machine.get('navitrain')}"
    if machine.get("wgpu") and "wgpu" in devices:
        versions += f", wgpu {machine['wgpu']}"
    return " · ".join(parts) + " | " + versions
