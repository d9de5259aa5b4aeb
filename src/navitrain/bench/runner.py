"""Per-route timing: each route runs in its own spawned child process, so a GPU fault, abort or hang on
one route becomes a row in the report instead of the end of the program.

Parent side: `run_bench(...)` starts one child per route (plus a CPU reference child when the cpu route
is not asked for), relays progress, enforces a per-step timeout, then checks every result against the
CPU before any time is reported (`verify.py`). The parent never imports a GPU runtime.
Child side: `_child_main` prepares the route, then trains and times each workload in each mode the
route's device has (`modes.py`: wgpu eager and graph), one row per mode (`measure.py`).

Plans: quick and full runs both train the standard sizes (workloads.py); quick bounds each row's timed
steps by a time budget (budget.py), full times a fixed count. The tiny sizes (`--tiny`, for CI on
lavapipe) keep the old fixed quick run: a few steps of toy models.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import queue as queue_module
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from navitrain._child import how_it_ended
from navitrain.bench import modes as mode_catalogue
from navitrain.bench import noise, verify
from navitrain.bench.workloads import DEFAULT_WORKLOADS, Workload
from navitrain.bench.workloads import get as get_workload

# Run sizes: warm-up steps are trained but not timed (they absorb shader compilation, autotuning and
# allocator growth); timed steps give the median and spread.
# quick: steps after warm-up for QUICK_BUDGET_S seconds per route and mode (at least 3, at most
# "steps"); a slow route gets fewer steps, not a smaller model.
QUICK_BUDGET_S = 3.0
QUICK = {"warmup": 2, "steps": 50, "budget_s": QUICK_BUDGET_S}
FULL = {"warmup": 5, "steps": 30, "budget_s": None}
# CI on lavapipe: 3 timed steps (6 before wgpu had a graph row too), so that cpu + wgpu train as many
# steps per workload as before (8 + 8 then; 5 + 5 + 6 now, the graph row's capture included)
TINY_QUICK = {"warmup": 2, "steps": 3, "budget_s": None}


def plan_for(quick: bool, size: str) -> dict[str, Any]:
    if size == "tiny" and quick:
        return dict(TINY_QUICK)
    return dict(QUICK if quick else FULL)

# Until a child first reports, it may still be importing torch and opening its device: it gets at least
# this long (or the step timeout, when that is longer) before it counts as hung.
STARTUP_GRACE_S = 90.0

_TIMING_FIELDS = ("samples_per_s", "median_ms", "iqr_ms", "min_ms", "max_ms", "time_to_first_step_s",
                  "peak_memory_bytes", "host_ms", "host_share", "host_bound")
EventCallback = Callable[[dict[str, Any]], None]


@dataclass
class WorkloadResult:
    route: str
    workload: str
    title: str
    size: str
    batch_size: int
    status: str                       # ok | refused | error | crash | hang | unavailable | not run
    detail: str = ""                  # why, for anything but ok
    mode: str = "eager"               # modes.py: how the step ran (wgpu: eager or graph)
    label: str = ""                   # "wgpu (graph)" where a route has several modes, else the route
    best_mode: bool = False           # the route's fastest mode for this workload: its score
    batch_note: str = ""              # why the batch is smaller than the workload's, when it is
    timed_steps: int | None = None
    warmup_steps: int | None = None
    host_ms: float | None = None      # median time for the step call to return (before the read-back)
    host_share: float | None = None   # host_ms / median_ms; None where the device cannot tell
    host_bound: bool | None = None    # host_share >= measure.HOST_BOUND_SHARE: Python, not the GPU, set the pace
    samples_per_s: float | None = None
    median_ms: float | None = None
    iqr_ms: float | None = None
    min_ms: float | None = None
    max_ms: float | None = None
    time_to_first_step_s: float | None = None
    peak_memory_bytes: int | None = None
    memory_kind: str = "n/a"
    speedup_vs_cpu: float | None = None
    relative_spread: float | None = None  # IQR / median of the step times
    noisy: bool = False                   # relative_spread over noise.NOISY_SPREAD
    speedup_reliable: bool | None = None  # False when this row or the CPU's row is noisy
    first_loss: float | None = None
    last_loss: float | None = None
    check_loss: float | None = None
    cpu_check_loss: float | None = None
    losses: list[float] = field(default_factory=list)
    step_ms: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RouteInfo:
    route: str
    status: str                       # ok | unavailable | error | crash | hang
    detail: str = ""
    device: str = ""
    device_name: str = ""
    prepare_s: float | None = None
    wall_s: float | None = None
    modes: list[str] = field(default_factory=lambda: ["eager"])


@dataclass
class BenchReport:
    size: str
    steps: int
    warmup: int
    seed: int
    routes: list[RouteInfo]
    results: list[WorkloadResult]
    machine: dict[str, Any]
    wall_s: float
    other_load: dict[str, Any] | None = None  # noise.OtherLoad: what else used the CPU meanwhile
    plan: str = "quick"                       # quick (time budget) or full (fixed steps)
    budget_s: float | None = None             # quick: seconds of timed steps per route and mode

    def to_dict(self) -> dict[str, Any]:
        return {
            "size": self.size, "plan": self.plan, "budget_s": self.budget_s, "representative": self.size == "standard",
            "steps": self.steps, "warmup": self.warmup, "seed": self.seed,
            "machine": self.machine, "wall_s": self.wall_s, "other_load": self.other_load,
            "routes": [asdict(r) for r in self.routes],
            "results": [r.to_dict() for r in self.results],
        }

    def result(self, route: str, workload: str, mode: str | None = None) -> WorkloadResult | None:
        """The row of `mode`, or without one the route's score: its best mode (else its first row)."""
        rows = [r for r in self.results if r.route == route and r.workload == workload
                and (mode is None or r.mode == mode)]
        return next((r for r in rows if r.best_mode), rows[0] if rows else None)


# ------------------------------------------------------------------------------------------ child

def _device_name(device) -> str:
    try:
        if device.type == "cuda":
            import torch

            return torch.cuda.get_device_name(device)
        if device.type == "wgpu":
            import navitrain.wgpu as nw

            info = nw.adapter_info() if hasattr(nw, "adapter_info") else None
            name = getattr(info, "name", None) or (info.get("name") if isinstance(info, dict) else None)
            return str(name or device)
        if device.type == "cpu":
            from navitrain.bench.machine import cpu_model

            return cpu_model()
    except Exception:
        pass
    return str(device)


def _wake(device) -> None:
    """One tiny matmul read back and one optimizer built, so one-time start-up (device contexts, thread
    pools, and the seconds torch.optim spends importing torch._dynamo on its first use) counts as the
    route's preparation instead of landing on the first workload's time to first step."""
    import torch

    a = torch.ones(4, 4).to(device)
    float((a @ a).sum().item())
    torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)


def _child_main(route_name: str, specs: list[tuple[str, str]], steps: int, warmup: int, seed: int,
                reference_only: bool, events, stderr_path: str, route_modules: tuple[str, ...] = (),
                budget_s: float | None = None) -> None:
    """Entry point of a route's child process. Reports through `events`; never returns data by stdout."""
    # Keep the child's stderr (driver messages, fault lines) for the report without mixing it into ours.
    fd = os.open(stderr_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.dup2(fd, 2)
    os.close(fd)

    import importlib

    from navitrain.bench import measure
    from navitrain.routes import registry

    try:
        for module in route_modules:
            importlib.import_module(module)
        route = registry.get(route_name)
        available = route.availability()
        if not available.ok:
            events.put({"kind": "route", "status": "unavailable", "detail": available.reason})
            return
        t0 = time.perf_counter()
        device = route.prepare()
        _wake(device)
        prepare_s = time.perf_counter() - t0
        modes = ["eager"] if reference_only else list(mode_catalogue.for_device(device.type))
        events.put({"kind": "route", "status": "ok", "detail": available.reason, "device": str(device),
                    "device_name": _device_name(device), "prepare_s": prepare_s, "modes": modes})
    except Exception as exc:
        events.put({"kind": "route", "status": "error", "detail": f"{type(exc).__name__}: {exc}",
                    "traceback": traceback.format_exc()})
        return

    for name, size in specs:
        workload = get_workload(name, size)
        for mode in modes:
            settle = size != "tiny"  # graph replays settle on real GPUs; CI's tiny run skips them
            total = 1 if reference_only else steps + warmup + mode_catalogue.extra_warmup(mode, warmup, settle)
            events.put({"kind": "start", "workload": name, "mode": mode, "modes": len(modes), "total": total})
            try:
                if reference_only:
                    data = {"check_loss": measure.reference_loss(workload, device, seed)}
                else:
                    def on_step(done: int, total: int, loss: float, _name: str = name, _mode: str = mode) -> None:
                        events.put({"kind": "step", "workload": _name, "mode": _mode, "done": done, "total": total,
                                    "loss": loss})

                    data = measure.train_and_time(workload, device, steps=steps, warmup=warmup, seed=seed,
                                                  mode=mode, budget_s=budget_s, on_step=on_step, settle=settle)
                events.put({"kind": "result", "workload": name, "mode": mode, "data": data})
            except Exception as exc:
                events.put({"kind": "result", "workload": name, "mode": mode, "error": f"{type(exc).__name__}: {exc}",
                            "traceback": traceback.format_exc()})
    try:
        route.release()
    except Exception:
        pass


# ----------------------------------------------------------------------------------------- parent

def _stderr_tail(path: str, lines: int = 6) -> str:
    try:
        with open(path, errors="replace") as f:
            text = [line.rstrip() for line in f.read().splitlines() if line.strip()]
    except OSError:
        return ""
    return " | ".join(text[-lines:])


def _death_detail(exitcode: int | None, stderr_path: str) -> tuple[str, str]:
    """(status, detail) for a child that ended without finishing."""
    tail = _stderr_tail(stderr_path)
    detail = how_it_ended(exitcode, "exited with code {code} without a result")
    mode = verify.failure_mode(tail)
    if mode:
        detail += f" [{mode}]"
    return "crash", f"{detail}: {tail}" if tail else detail


def _key(workload: str, mode: str | None) -> str:
    return f"{workload}/{mode or 'eager'}"


def _run_child(route_name: str, workloads: list[Workload], *, steps: int, warmup: int, seed: int,
               timeout: float, reference_only: bool, on_event: EventCallback | None,
               route_modules: tuple[str, ...] = (), budget_s: float | None = None
               ) -> tuple[RouteInfo, dict[str, dict[str, Any]]]:
    """Run one route's child to the end (or until it dies or stalls). Returns the route's info and the
    raw messages per workload and mode (keyed "workload/mode")."""
    ctx = mp.get_context("spawn")  # never fork: a forked child would inherit the parent's state
    events = ctx.Queue()
    handle, stderr_path = tempfile.mkstemp(prefix=f"navitrain-bench-{route_name}-", suffix=".log")
    os.close(handle)
    specs = [(w.name, w.size) for w in workloads]
    child = ctx.Process(target=_child_main, name=f"navitrain-bench-{route_name}", daemon=True,
                        args=(route_name, specs, steps, warmup, seed, reference_only, events, stderr_path,
                              tuple(route_modules), budget_s))
    started = time.perf_counter()
    info = RouteInfo(route=route_name, status="crash")
    raw: dict[str, dict[str, Any]] = {}
    current: str | None = None
    route_reported = False
    last_heard = time.monotonic()
    child.start()
    try:
        while True:
            try:
                message = events.get(timeout=0.2)
            except queue_module.Empty:
                if not child.is_alive():
                    # drain what the child managed to send before it ended
                    try:
                        message = events.get(timeout=0.5)
                    except queue_module.Empty:
                        break
                elif time.monotonic() - last_heard > (limit := timeout if route_reported
                                                      else max(timeout, STARTUP_GRACE_S)):
                    child.kill()
                    child.join(5)
                    where = f"during {current}" if current else "while starting or preparing the route"
                    detail = f"no progress for {limit:g} s {where}; the process was killed"
                    if current:
                        raw[current] = {"status": "hang", "detail": detail}
                    else:
                        info.status, info.detail = "hang", detail
                    break
                else:
                    continue
            last_heard = time.monotonic()
            message["route"] = route_name
            kind = message["kind"]
            if kind == "route":
                route_reported = True
                info.status = message["status"]
                info.detail = message.get("detail", "")
                info.device = message.get("device", "")
                info.device_name = message.get("device_name", "")
                info.prepare_s = message.get("prepare_s")
                info.modes = list(message.get("modes") or ["eager"])
            elif kind == "start":
                current = _key(message["workload"], message.get("mode"))
            elif kind == "result":
                raw[_key(message["workload"], message.get("mode"))] = message
                current = None
            if on_event is not None:
                on_event(message)
        child.join(10)
        if child.is_alive():
            child.kill()
            child.join(5)
        if current is not None and current not in raw:
            status, detail = _death_detail(child.exitcode, stderr_path)
            raw[current] = {"status": status, "detail": detail}
        elif not route_reported and info.status == "crash":
            info.detail = _death_detail(child.exitcode, stderr_path)[1]
    finally:
        if child.is_alive():
            child.kill()
            child.join(5)
        events.close()
        try:
            os.unlink(stderr_path)
        except OSError:
            pass
    info.wall_s = time.perf_counter() - started
    if on_event is not None:
        on_event({"kind": "done", "route": route_name, "status": info.status, "detail": info.detail})
    return info, raw


def _result_from(route: str, workload: Workload, info: RouteInfo, message: dict[str, Any] | None,
                 mode: str = "eager") -> WorkloadResult:
    result = WorkloadResult(route=route, workload=workload.name, title=workload.title, size=workload.size,
                            batch_size=workload.batch_size, status="error", mode=mode,
                            label=mode_catalogue.label(route, mode, len(info.modes)))
    if info.status != "ok":
        result.status = "unavailable" if info.status == "unavailable" else info.status
        result.detail = info.detail or "the route did not start"
    elif message is None:
        result.status = "not run"
        result.detail = "the route's process ended before this workload ran (see the one before it)"
    elif "error" in message:
        mode = verify.failure_mode(message["error"] + "\n" + message.get("traceback", ""))
        result.detail = message["error"] + (f" [{mode}]" if mode else "")
    elif "status" in message:
        result.status, result.detail = message["status"], message["detail"]
    else:
        data = message["data"]
        result.status = "ok"
        for key in ("samples_per_s", "median_ms", "iqr_ms", "min_ms", "max_ms", "time_to_first_step_s",
                    "peak_memory_bytes", "memory_kind", "first_loss", "check_loss", "losses", "step_ms",
                    "batch_size", "batch_note", "timed_steps", "warmup_steps", "host_ms", "host_share",
                    "host_bound"):
            if key in data:
                setattr(result, key, data[key])
        if result.losses:
            result.last_loss = result.losses[-1]
    return result


def run_bench(routes: list[str], workload_names: list[str] | None = None, *, size: str = "standard",
              quick: bool = True, steps: int | None = None, warmup: int | None = None,
              budget_s: float | None = None, seed: int = 0, timeout: float = 300.0,
              on_event: EventCallback | None = None, route_modules: tuple[str, ...] = ()) -> BenchReport:
    """Bench `routes` on the named workloads; every route is checked against the CPU before its speed
    counts. `on_event` receives the children's progress messages (each with a "route" key).
    `route_modules` are imported in each child first: modules that register routes which are neither
    built in nor installed as entry points (the tests' deliberately broken routes, say)."""
    from navitrain.bench.machine import machine_info

    plan = plan_for(quick, size)
    steps = plan["steps"] if steps is None else steps
    warmup = plan["warmup"] if warmup is None else warmup
    budget_s = plan["budget_s"] if budget_s is None else budget_s
    if budget_s is not None and not budget_s > 0:
        raise ValueError(f"the time budget must be positive (got {budget_s})")
    if steps < 2:
        raise ValueError(f"steps must be at least 2 (got {steps}): a single step shows no loss trend")
    if warmup < 0:
        raise ValueError(f"warmup must not be negative (got {warmup})")
    if timeout <= 0:
        raise ValueError(f"timeout must be positive (got {timeout})")
    workloads = [get_workload(name, size) for name in (workload_names or list(DEFAULT_WORKLOADS))]
    started = time.perf_counter()
    load = noise.OtherLoad().start()

    # The CPU goes first: its first-step losses are the reference every other route must match.
    ordered = sorted(dict.fromkeys(routes), key=lambda r: r != "cpu")
    infos: list[RouteInfo] = []
    results: list[WorkloadResult] = []
    cpu_check: dict[str, float] = {}
    if "cpu" not in ordered:
        _, raw = _run_child("cpu", workloads, steps=steps, warmup=warmup, seed=seed, timeout=timeout,
                            reference_only=True, on_event=None, route_modules=route_modules)
        cpu_check = {m["workload"]: m["data"]["check_loss"] for m in raw.values() if "data" in m}
    for route in ordered:
        info, raw = _run_child(route, workloads, steps=steps, warmup=warmup, seed=seed, timeout=timeout,
                               reference_only=False, on_event=on_event, route_modules=route_modules,
                               budget_s=budget_s)
        infos.append(info)
        for workload in workloads:
            for mode in info.modes:
                result = _result_from(route, workload, info, raw.get(_key(workload.name, mode)), mode)
                if route == "cpu" and result.status == "ok" and result.check_loss is not None:
                    cpu_check.setdefault(workload.name, result.check_loss)
                results.append(result)

    for result in results:
        if result.status != "ok":
            continue
        result.cpu_check_loss = cpu_check.get(result.workload)
        problem = verify.problem(result.losses, result.check_loss, result.cpu_check_loss)
        if problem:
            # A refused route gets no timings: a fast wrong answer must not look like a fast route.
            result.status, result.detail = "refused", problem
            for key in _TIMING_FIELDS:
                setattr(result, key, None)
        elif result.cpu_check_loss is None and result.route != "cpu":
            result.detail = "timed, but not checked against the CPU: the CPU reference did not run"
    for result in results:
        if result.status == "ok":
            result.relative_spread = noise.relative_spread(result.iqr_ms, result.median_ms)
            result.noisy = noise.is_noisy(result.relative_spread)
    other_load = load.stop()
    busy = noise.machine_busy(other_load)
    cpu_rows = {r.workload: r for r in results if r.route == "cpu" and r.status == "ok" and r.mode == "eager"}
    for result in results:
        base = cpu_rows.get(result.workload)
        if result.status == "ok" and base is not None and base.samples_per_s:
            result.speedup_vs_cpu = result.samples_per_s / base.samples_per_s
            result.speedup_reliable = not (result.noisy or base.noisy or busy)
    mark_best_modes(results)
    return BenchReport(size=size, steps=steps, warmup=warmup, seed=seed, routes=infos, results=results,
                       machine=machine_info(infos), wall_s=time.perf_counter() - started,
                       other_load=other_load, plan="quick" if quick else "full", budget_s=budget_s)


def mark_best_modes(results: list[WorkloadResult]) -> None:
    """A route's score for a workload is its fastest mode that trained correctly (issue 18: wgpu's
    captured graph, not its eager mode, is what a user who wants speed runs)."""
    best: dict[tuple[str, str], WorkloadResult] = {}
    for result in results:
        result.best_mode = False
        if result.status != "ok" or not result.samples_per_s:
            continue
        key = (result.route, result.workload)
        if key not in best or result.samples_per_s > best[key].samples_per_s:
            best[key] = result
    for result in best.values():
        result.best_mode = True
