"""Per-step series of one eager training loop, for telling apart why step times switch modes within a run
(issue 19: eager GPT steps on an H100 at ~39 ms, then ~65 ms, in one process).

Each step prints: wall ms; thread CPU ms of every thread that runs ops (main and autograd's device thread),
and of the main thread alone; wall and CPU ms inside submissions; the core the main thread ended on and its
voluntary / involuntary context switches and minor page faults;
Python GC collections per generation and their CPU ms; heap buffers created; submissions and dispatches;
and the sizes of navitrain's host caches (dispatch routes, launch geometry, view geometry, GEMM plans,
kernels, bind groups). What each column rules in or out:

  wall >> CPU on slow steps       the host waited (driver, GPU, another process): not Python work;
                                  sub_w >> sub_c: the wait is inside submissions (the driver)
  CPU up with GC / buffers / a    host work that changed: the column says which
  cache size changing
  CPU up with every column flat   the same work running slower: CPU clock, cache or core contention;
                                  a mode that follows the core column (another socket, an SMT sibling)
                                  goes away with --pin

    python benchmarks/step_modes.py --model gpt --size tiny --steps 40 [--gc default|freeze|off]
                                    [--fresh-batches] [--pin CORE]

--fresh-batches uploads a new batch each step and reads the loss back, as bench_wgpu_train.py does.
"""
from __future__ import annotations

import argparse
import gc
import os
import resource
import statistics
import threading
import time

import torch

import navitrain.wgpu as nw
from navitrain.bench import models, workloads
from navitrain.wgpu import dispatch
from navitrain.wgpu import runtime as runtime_mod
from navitrain.wgpu.kernels import gemm, pointwise
from navitrain.wgpu.ops import views


class GcWatch:
    """Collections per generation and the thread CPU time they took, via gc.callbacks."""

    def __init__(self):
        self.collections = [0, 0, 0]
        self.seconds = 0.0
        self._started: dict[int, float] = {}

    def __call__(self, phase, info):
        ident = threading.get_ident()
        if phase == "start":
            self._started[ident] = time.thread_time()
        else:
            self.collections[info["generation"]] += 1
            self.seconds += time.thread_time() - self._started.pop(ident, time.thread_time())


class Counting:
    """Wraps a runtime method, counting calls and the wall and thread CPU seconds spent in them: a driver
    that blocks the host (in vkQueueSubmit, or a staging upload waiting for memory) shows as wall >> CPU
    here."""

    def __init__(self, method):
        self.method = method
        self.calls = 0
        self.wall = 0.0
        self.cpu = 0.0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        t0, c0 = time.perf_counter(), time.thread_time()
        try:
            return self.method(*args, **kwargs)
        finally:
            self.wall += time.perf_counter() - t0
            self.cpu += time.thread_time() - c0


def op_threads(step) -> set[int]:
    """The threads that run ops in a step (autograd runs backward on a device thread of its own)."""
    seen: set[int] = {threading.get_ident()}

    def tracer(cls, func, types, args=(), kwargs=None):
        seen.add(threading.get_ident())
        return dispatch.torch_dispatch(cls, func, types, args, kwargs)

    dispatch.trace_ops(tracer)
    try:
        step(0)
        nw.synchronize()
    finally:
        dispatch.trace_ops(None)
    return seen


def thread_cpu(idents) -> float:
    total = 0.0
    for ident in idents:
        try:
            total += time.clock_gettime(time.pthread_getcpuclockid(ident))
        except OSError:  # the thread has ended
            pass
    return total


def switches() -> tuple[int, int, int]:
    """(voluntary, involuntary) context switches and minor page faults of the calling thread so far:
    voluntary switches are waits (a lock, the driver), involuntary ones another thread or process taking
    the core; page faults grow when memory is mapped afresh each step (malloc handing large blocks back
    to the kernel, driver staging memory)."""
    try:
        usage = resource.getrusage(resource.RUSAGE_THREAD)
    except (AttributeError, OSError):  # not Linux
        return (0, 0, 0)
    return (usage.ru_nvcsw, usage.ru_nivcsw, usage.ru_minflt)


def current_core() -> int:
    """The CPU the calling thread last ran on (Linux), -1 elsewhere: a mode tied to one core shows here."""
    try:
        with open("/proc/thread-self/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[36])
    except (OSError, IndexError, ValueError):
        return -1


def cache_sizes(rt) -> dict[str, int]:
    return {"routes": len(dispatch._ROUTES), "groups": len(pointwise._GROUPS),
            "layouts": len(pointwise._LAYOUTS), "views": len(views._VIEW_GEOMETRY), "plans": len(gemm._PLANS),
            "kernels": len(rt._kernels), "bindgroups": len(rt._bind_groups)}


def run(model: str, size: str, steps: int, warmup: int, gc_mode: str = "default", fresh_batches: bool = False,
        pin: int | None = None) -> list[dict]:
    workload = workloads.get(model, size)
    torch.manual_seed(0)
    net = workload.build().to("wgpu")
    opt = workload.make_optimizer(net.parameters())
    train = models.train_step(net, opt, workload.loss)
    cpu_batches = [workload.batch(s) for s in range(warmup + steps + 1)] if fresh_batches else None
    fixed = None if fresh_batches else workload.batch(0, device="wgpu")

    def batch_for(i):
        return tuple(t.to("wgpu") for t in cpu_batches[i]) if fresh_batches else fixed

    def step(i):
        return train(*batch_for(i))

    for i in range(warmup):
        step(i).item()
    threads = op_threads(step)
    cpus = os.sched_getaffinity(0) if pin is not None else None
    if pin is not None:  # Linux: pid 0 is the calling thread only, so threads started earlier keep their CPUs
        os.sched_setaffinity(0, {pin})
    rt = runtime_mod.runtime()
    buffers = rt._create_heap_buffer = Counting(rt._create_heap_buffer)
    submits = rt._submit = Counting(rt._submit)
    watch = GcWatch()
    gc.callbacks.append(watch)
    if gc_mode == "freeze":
        gc.freeze()
    elif gc_mode == "off":
        gc.disable()
    rows = []
    try:
        for i in range(warmup, warmup + steps):
            batch = batch_for(i)
            nw.synchronize()
            before = (list(watch.collections), watch.seconds, buffers.calls, submits.calls, rt.dispatch_count,
                      submits.wall, submits.cpu)
            main0, switches0 = time.thread_time(), switches()
            cpu0, t0 = thread_cpu(threads), time.perf_counter()
            loss = train(*batch)
            wall, cpu = time.perf_counter() - t0, thread_cpu(threads) - cpu0
            main_cpu = time.thread_time() - main0
            voluntary, involuntary, faults = (a - b for a, b in zip(switches(), switches0))
            nw.synchronize()
            if fresh_batches:
                loss.item()
            rows.append({"wall_ms": wall * 1e3, "cpu_ms": cpu * 1e3, "main_ms": main_cpu * 1e3,
                         "submit_wall_ms": (submits.wall - before[5]) * 1e3,
                         "submit_cpu_ms": (submits.cpu - before[6]) * 1e3,
                         "core": current_core(), "vcsw": voluntary, "ivcsw": involuntary, "faults": faults,
                         "gc": [a - b for a, b in zip(watch.collections, before[0])],
                         "gc_ms": (watch.seconds - before[1]) * 1e3, "new_buffers": buffers.calls - before[2],
                         "submits": submits.calls - before[3], "dispatches": rt.dispatch_count - before[4],
                         **cache_sizes(rt)})
    finally:
        gc.callbacks.remove(watch)
        if gc_mode == "freeze":
            gc.unfreeze()
        elif gc_mode == "off":
            gc.enable()
        del rt._create_heap_buffer, rt._submit
        if cpus is not None:
            os.sched_setaffinity(0, cpus)
    return rows


def full_collection_ms() -> float:
    """What one gen-2 collection of this process costs now: the size of the spike a gen-2 collection
    would add to the step it lands in."""
    t0 = time.thread_time()
    gc.collect()
    return (time.thread_time() - t0) * 1e3


def report(rows: list[dict]) -> None:
    caches = list(cache_sizes(runtime_mod.runtime()))
    print(f"{'step':>4} {'wall':>7} {'cpu':>7} {'main':>7} {'sub_w':>6} {'sub_c':>6} "
          f"{'core':>4} {'vcsw':>5} {'ivcsw':>5} {'faults':>6} {'gc0/1/2':>8} {'gc_ms':>6} "
          f"{'newbuf':>6} {'subm':>5} {'disp':>5}  "
          + " ".join(f"{c:>10}" for c in caches))
    for i, r in enumerate(rows):
        print(f"{i:>4} {r['wall_ms']:>7.2f} {r['cpu_ms']:>7.2f} {r['main_ms']:>7.2f} {r['submit_wall_ms']:>6.2f} "
              f"{r['submit_cpu_ms']:>6.2f} {r['core']:>4} {r['vcsw']:>5} {r['ivcsw']:>5} "
              f"{r['faults']:>6} {'/'.join(map(str, r['gc'])):>8} {r['gc_ms']:>6.2f} "
              f"{r['new_buffers']:>6} {r['submits']:>5} {r['dispatches']:>5}  "
              + " ".join(f"{r[c]:>10}" for c in caches))
    cpu = [r["cpu_ms"] for r in rows]
    wall = [r["wall_ms"] for r in rows]
    changing = [c for c in caches + ["submits", "dispatches", "new_buffers"] if len({r[c] for r in rows}) > 1]
    collections = [sum(r["gc"][g] for r in rows) for g in range(3)]
    print(f"cpu ms median {statistics.median(cpu):.2f} min {min(cpu):.2f} max {max(cpu):.2f}; "
          f"wall ms median {statistics.median(wall):.2f}; gc collections {collections}"
          f" ({sum(r['gc_ms'] for r in rows):.2f} ms); columns that changed between steps: {changing or 'none'}")
    print(f"one full (gen-2) collection now: {full_collection_ms():.1f} ms thread CPU over {len(gc.get_objects())} "
          "tracked objects")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gpt")
    ap.add_argument("--size", default="tiny", choices=workloads.SIZES)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--gc", default="default", choices=("default", "freeze", "off"),
                    help="freeze: gc.freeze() after warm-up (old objects never rescanned); off: gc.disable()")
    ap.add_argument("--fresh-batches", action="store_true", help="a new batch uploaded each step, as the bench does")
    ap.add_argument("--pin", type=int, default=None,
                    help="after warm-up, keep the main thread on this CPU (the driver's threads stay free)")
    args = ap.parse_args(argv)
    report(run(args.model, args.size, args.steps, args.warmup, args.gc, args.fresh_batches, args.pin))


if __name__ == "__main__":
    main()
