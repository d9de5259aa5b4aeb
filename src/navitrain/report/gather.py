"""Run doctor, the probe and a bench through their Python APIs and hand what they found to build.build.

Each source is a function of its own so that tests (and callers) can replace it: the real probe and
bench start child processes and take minutes.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Callable

# The adapter's limits a reader needs to tell whether a kernel fits (WebGPU names, as wgpu reports them).
ADAPTER_LIMITS = ("max-compute-workgroup-storage-size", "max-compute-invocations-per-workgroup",
                  "max-compute-workgroup-size-x", "max-storage-buffer-binding-size", "max-buffer-size",
                  "max-storage-buffers-per-shader-stage", "max-compute-workgroups-per-dimension")

_ADAPTER_CHILD = f"""
import json
from navitrain.adapters import chosen_adapter_info, list_adapters
pairs = list_adapters()
infos, index = chosen_adapter_info()
if index is None:
    print(json.dumps(None))
else:
    adapter, info = pairs[index]
    limits = dict(adapter.limits)
    print(json.dumps({{"name": info.name, "driver": info.driver, "features": sorted(adapter.features),
                      "limits": {{k: limits[k] for k in {ADAPTER_LIMITS!r} if k in limits}}}}))
"""


def doctor(timeout: float = 90.0) -> tuple[dict, dict]:
    """(facts, doctor's JSON document) for this machine."""
    from navitrain.doctor import collect, diagnose
    from navitrain.doctor.report import document

    facts = collect(Path("/"), None, probe=None, timeout=timeout)
    return facts, document(facts, diagnose(facts))


def adapter(timeout: float = 60.0) -> dict | None:
    """The wgpu adapter navitrain would use, with its limits and features, from a child process (a
    broken Vulkan driver may crash the process that asks)."""
    try:
        proc = subprocess.run([sys.executable, "-c", _ADAPTER_CHILD], capture_output=True, text=True, timeout=timeout)
        return json.loads(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 else {
            "error": f"the adapter query exited {proc.returncode}: {proc.stderr.strip()[-300:]}"}
    except (subprocess.TimeoutExpired, IndexError, ValueError) as exc:
        return {"error": f"the adapter query failed: {type(exc).__name__}"}


def probe(essential: bool, on_result: Callable | None = None) -> list[dict]:
    """Every catalogue case (or the essential ones) on every route, as `navitrain probe --json` prints them."""
    from navitrain.probe import cases as catalogue
    from navitrain.probe import session
    from navitrain.routes import registry

    cases = [c for c in catalogue.load_catalogue() if c.essential or not essential]
    run = session.run(cases, registry.names(), [{}], on_result=on_result)
    return [r.public() for r in run.results]


def bench(routes: list[str], size: str, on_event: Callable | None = None) -> dict:
    """A quick bench (time-bounded) of the default workloads on these routes."""
    from navitrain.bench.runner import run_bench

    return run_bench(routes, size=size, quick=True, on_event=on_event).to_dict()


def bench_routes(doctor_doc: dict) -> list[str]:
    """The CPU (every speed-up is against it) and the route doctor recommends."""
    route = (doctor_doc.get("recommendation") or {}).get("route")
    return list(dict.fromkeys(["cpu"] + ([route] if route else [])))
