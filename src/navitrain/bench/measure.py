"""Train one workload on one device and time it: the part of the bench that runs inside a route's process.

Everything is synchronised through `loss.item()` at the end of each step (reading a value back waits
for all queued work on CUDA, HIP and wgpu alike), so a step's wall time is the time the device really
took. Batches are made on the CPU from the seed and moved to the device before the clock starts:
the bench measures training, not data loading.
"""
from __future__ import annotations

import math
import os
import resource
import statistics
import sys
import time
from typing import Any, Callable

from navitrain.bench.workloads import Workload

# Batches cycled through during a run: several, so the loss falls because a rule is learned rather
# than because one batch is memorised, and few, so they fit in device memory beside the model.
BATCH_POOL = 4

StepCallback = Callable[[int, int, float], None]  # (step done, total steps, loss)


def _rss_bytes() -> int | None:
    """Resident set size now (Linux /proc); None elsewhere."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _peak_rss_bytes() -> int:
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss is bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


class MemoryMeter:
    """Peak memory of one workload on one device, the best way each device type allows."""

    def __init__(self, device):
        self.device = device
        self.kind = "n/a"
        self._base = 0
        self._peak = 0
        self._wgpu = None
        if device.type == "cuda":
            import torch

            torch.cuda.reset_peak_memory_stats(device)
            self.kind = "peak allocated"
        elif device.type == "wgpu":
            self._wgpu = sys.modules.get("navitrain.wgpu")
            if self._wgpu is not None and hasattr(self._wgpu, "max_memory_allocated"):
                if hasattr(self._wgpu, "reset_peak_memory_stats"):
                    self._wgpu.reset_peak_memory_stats()
                self.kind = "peak allocated"
            elif self._wgpu is not None and hasattr(self._wgpu, "memory_allocated"):
                self.kind = "allocated (sampled)"
        elif device.type == "cpu":
            rss = _rss_bytes()
            if rss is not None:
                self._base = self._peak = rss
                self.kind = "RSS growth"
            else:
                self._base = _peak_rss_bytes()
                self.kind = "peak RSS growth"

    def sample(self) -> None:
        """Called after each step; only devices without a peak counter need it."""
        if self.kind == "RSS growth":
            self._peak = max(self._peak, _rss_bytes() or 0)
        elif self.kind == "allocated (sampled)":
            self._peak = max(self._peak, int(self._wgpu.memory_allocated()))

    def peak_bytes(self) -> int | None:
        if self.kind == "peak allocated" and self.device.type == "cuda":
            import torch

            return int(torch.cuda.max_memory_allocated(self.device))
        if self.kind == "peak allocated":
            return int(self._wgpu.max_memory_allocated())
        if self.kind == "allocated (sampled)":
            return self._peak
        if self.kind == "RSS growth":
            return max(0, self._peak - self._base)
        if self.kind == "peak RSS growth":
            return max(0, _peak_rss_bytes() - self._base)
        return None


def reference_loss(workload: Workload, device, seed: int) -> float:
    """The loss the CPU and every route must agree on before training: the first training step's
    loss for deterministic models, an eval-mode loss for models with dropout."""
    import torch

    torch.manual_seed(seed)
    model = workload.build().to(device)
    if not workload.deterministic:
        model.eval()
    x, y = workload.batch(seed, device)
    with torch.no_grad():
        return float(workload.loss(model(x), y).item())


# A step whose host side (Python, dispatch, recording or encoding the GPU's work) takes this share of
# its wall time or more left the device waiting on the host: the route is slow here because of Python
# per op, not because of its GPU.
HOST_BOUND_SHARE = 0.8
# Devices whose work is queued: the call returns before the device finishes, so the time to return
# (host) and the time to the loss read back (host + device) differ. On the CPU every op runs as it is
# called and the two are the same, so the CPU cannot tell.
_QUEUED_DEVICES = ("cuda", "wgpu")
# Halvings of the batch tried when the first step runs out of memory, before the workload is an error.
MAX_BATCH_HALVINGS = 3


def is_out_of_memory(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


def host_bound(device_type: str, host_s: list[float], step_s: list[float]) -> dict[str, Any]:
    """{"host_ms", "host_share", "host_bound"} from per-step host and wall times; None where the device
    cannot tell them apart."""
    if device_type not in _QUEUED_DEVICES or not host_s or not step_s:
        return {"host_ms": None, "host_share": None, "host_bound": None}
    host, wall = statistics.median(host_s), statistics.median(step_s)
    share = min(1.0, host / wall) if wall > 0 else None
    return {"host_ms": host * 1e3, "host_share": share,
            "host_bound": None if share is None else share >= HOST_BOUND_SHARE}


def train_and_time(workload: Workload, device, *, steps: int, warmup: int, seed: int = 0, mode: str = "eager",
                   budget_s: float | None = None, on_step: StepCallback | None = None,
                   clock: Callable[[], float] = time.perf_counter, settle: bool = True) -> dict[str, Any]:
    """Train `workload` on `device` in `mode` and time it (see `_train_and_time`). When the first step
    runs out of memory, the batch is halved (up to MAX_BATCH_HALVINGS times) and the result says so."""
    import dataclasses
    import gc

    asked = workload.batch_size
    for halvings in range(MAX_BATCH_HALVINGS + 1):
        try:
            data = _train_and_time(workload, device, steps=steps, warmup=warmup, seed=seed, mode=mode,
                                   budget_s=budget_s, on_step=on_step, clock=clock, settle=settle)
        except Exception as exc:
            if not (is_out_of_memory(exc) and getattr(exc, "navitrain_first_step", False)) \
                    or halvings == MAX_BATCH_HALVINGS or workload.batch_size < 2:
                raise
            gc.collect()
            if device.type == "cuda":
                import torch

                torch.cuda.empty_cache()
            workload = dataclasses.replace(workload, batch_size=workload.batch_size // 2)
            continue
        data["batch_size"] = workload.batch_size
        data["batch_note"] = "" if workload.batch_size == asked else (
            f"batch {workload.batch_size} instead of {asked}: the first step at batch {workload.batch_size * 2} "
            "ran out of device memory")
        return data
    raise AssertionError("unreachable")  # pragma: no cover


def _train_and_time(workload: Workload, device, *, steps: int, warmup: int, seed: int, mode: str,
                    budget_s: float | None, on_step: StepCallback | None,
                    clock: Callable[[], float], settle: bool = True) -> dict[str, Any]:
    """Build the model from `seed` on the CPU, move it to `device`, train `warmup` untimed steps (plus
    what `mode` needs to settle), then time steps until `steps` or the `budget_s` runs out (budget.py).
    Returns the losses, per-step wall and host times and peak memory. Raises what the device raises;
    an exception from the first step carries `navitrain_first_step = True`."""
    import torch

    from navitrain.bench import budget, modes

    if steps < 1 or warmup < 0:
        raise ValueError(f"need steps >= 1 and warmup >= 0, got steps={steps}, warmup={warmup}")
    warmup += modes.extra_warmup(mode, warmup, settle)
    torch.manual_seed(seed)  # the same initial weights on every route
    model = workload.build()
    check_loss = None
    meter = MemoryMeter(device)
    started = clock()
    model = model.to(device)
    batches = [workload.batch(seed + i, device) for i in range(BATCH_POOL)]
    if not workload.deterministic:
        model.eval()
        with torch.no_grad():
            check_loss = float(workload.loss(model(batches[0][0]), batches[0][1]).item())
        model.train()
    optimizer = workload.make_optimizer(model.parameters(), capturable=modes.needs_capturable_optimizer(mode))
    from navitrain.bench.models import train_step  # torch-importing; this module is imported without it

    train = modes.wrap(mode, train_step(model, optimizer, workload.loss), workload)

    losses: list[float] = []
    step_s: list[float] = []
    host_s: list[float] = []
    time_to_first_step = math.nan
    step = 0
    while step < warmup or budget.keep_timing(step_s, steps, budget_s):
        x, y = batches[step % BATCH_POOL]
        t0 = clock()
        try:
            out = train(x, y)
            returned = clock()  # queued devices return here, before their work is done
            value = float(out.item())  # the sync point
        except Exception as exc:
            if step == 0:
                try:  # only a first step's out-of-memory is worth a smaller batch
                    exc.navitrain_first_step = True
                except AttributeError:
                    pass
            raise
        t1 = clock()
        if step == 0:
            time_to_first_step = t1 - started
        if step >= warmup:
            step_s.append(t1 - t0)
            host_s.append(returned - t0)
        losses.append(value)
        meter.sample()
        step += 1
        if on_step is not None:
            on_step(step, warmup + steps, value)  # with a budget, `steps` is the most there can be

    median = statistics.median(step_s)
    quartiles = statistics.quantiles(step_s, n=4, method="inclusive") if len(step_s) > 1 else [median] * 3
    return {
        "mode": mode,
        "losses": losses,
        "first_loss": losses[0],
        "check_loss": losses[0] if check_loss is None else check_loss,
        "step_ms": [s * 1e3 for s in step_s],
        "timed_steps": len(step_s),
        "warmup_steps": warmup,
        "median_ms": median * 1e3,
        "iqr_ms": (quartiles[2] - quartiles[0]) * 1e3,
        "min_ms": min(step_s) * 1e3,
        "max_ms": max(step_s) * 1e3,
        "samples_per_s": workload.batch_size / median,
        "time_to_first_step_s": time_to_first_step,
        "peak_memory_bytes": meter.peak_bytes(),
        "memory_kind": meter.kind,
        **host_bound(device.type, host_s, step_s),
    }
