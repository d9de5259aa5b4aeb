"""Shared helpers for the GPU benchmarks: timing, validation, device descriptions, tables."""
from __future__ import annotations

import importlib.util
import json
import os
import platform
import statistics
import sys
import time
import types

import torch


def wgpu_time(fn, iters: int, warmup: int = 2) -> float:
    """Median seconds per call of fn on the wgpu device (each sample: `iters` calls then a sync)."""
    import navitrain.wgpu as nw

    for _ in range(warmup):
        fn()
    nw.synchronize()
    samples = []
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(iters):
            fn()
        nw.synchronize()
        samples.append((time.perf_counter() - t0) / iters)
    return statistics.median(samples)


def wgpu_gpu_time(fn, iters: int, samples: int = 3) -> tuple[float, dict]:
    """GPU seconds per call of fn from timestamp queries (navitrain.wgpu.profile), and the seconds per
    call of each kernel. Unlike wgpu_time this leaves out the host: an op made of several small
    dispatches can be host-bound in eager mode and still cheap on the GPU (and in a captured graph).
    A few untimed calls first, then the median of `samples` profiled runs: the same unchanged kernels
    measured up to 2.6x apart between two H100 calls with a single run after a single warm-up call (run 13),
    consistent with a GPU that had not reached its clocks yet."""
    import navitrain.wgpu as nw

    for _ in range(max(3, iters // 4)):
        fn()
    nw.synchronize()
    calls = max(1, iters // samples)
    runs = []
    for _ in range(samples):
        with nw.profile() as table:
            for _ in range(calls):
                fn()
        runs.append({name: seconds / calls for name, (_, seconds) in table.items()})
    per_kernel = sorted(runs, key=lambda r: sum(r.values()))[len(runs) // 2]  # the median run, whole
    return sum(per_kernel.values()), per_kernel


def cuda_time(fn, iters: int, warmup: int = 2) -> float:
    """Median seconds per call with CUDA events."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    samples = []
    for _ in range(3):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iters):
            fn()
        end.record()
        torch.cuda.synchronize()
        samples.append(start.elapsed_time(end) / 1e3 / iters)
    return statistics.median(samples)


def rel_error(got: torch.Tensor, ref: torch.Tensor) -> float:
    got, ref = got.double().cpu(), ref.double().cpu()
    return ((got - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def machine() -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__, "cpu_threads": torch.get_num_threads(),
            "host": platform.node(), "cpu": platform.processor() or platform.machine()}
    try:
        import navitrain.wgpu as nw

        a = nw.adapter_info()
        info["wgpu_adapter"] = f"{a['name']} ({a['backend']}, {a['adapter_type']}, driver {a['driver']})"
        import wgpu

        info["wgpu"] = wgpu.__version__
    except Exception as exc:  # no adapter: reported, not fatal
        info["wgpu_adapter"] = f"unavailable: {exc}"
    if torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    return info


def print_table(headers: list[str], rows: list[list], title: str | None = None) -> None:
    if title:
        print(title)
    cells = [[str(h) for h in headers]] + [[f"{c:.3g}" if isinstance(c, float) else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for i, r in enumerate(cells):
        print("  ".join(c.rjust(w) for c, w in zip(r, widths)))
        if i == 0:
            print("  ".join("-" * w for w in widths))


def write_json(path: str | None, data: dict) -> None:
    if not path:
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(data, f, indent=2, default=str)


def import_torchvision():
    """torchvision's classification models are plain Python; its compiled ops (nms, roi_align, ...) are
    not needed by them. A wheel built for CUDA torch cannot load its library against the CPU torch, and
    then registering meta kernels for those ops fails at import: skip those registrations."""
    if "torchvision" in sys.modules:
        return
    if importlib.util.find_spec("torchvision") is None:
        raise ImportError("torchvision is not installed")
    try:
        import torchvision  # noqa: F401
    except (RuntimeError, OSError):
        for key in [k for k in sys.modules if k == "torchvision" or k.startswith("torchvision.")]:
            del sys.modules[key]
        for stub in ("torchvision._meta_registrations", "torchvision._autograd_registrations"):
            sys.modules[stub] = types.ModuleType(stub)
        import torchvision  # noqa: F401
