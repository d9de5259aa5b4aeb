"""Host CPU time per aten op of eager wgpu work, in thread CPU time (the measure that a shared, busy machine
leaves meaningful: wall time there is mostly other people's work).

Three measurements:
  chain   a chain of small elementwise ops (mul/add/relu/sub): us of thread CPU per op.
  step    one eager training step of a bench workload (tiny size by default): the CPU time of every thread
          that ran an op (the main thread, and autograd's device thread, which runs backward), per step and
          per aten op.
  by op   the step's ops grouped by aten overload: count and exclusive thread CPU time inside
          __torch_dispatch__ (time of nested ops, e.g. a decomposition's, is charged to them), and the share
          of the step spent outside dispatch (autograd, nn.Module code, the optimizer's Python).

    python benchmarks/host_time_per_op.py --models gpt,resnet18 --size tiny [--top 25] [--cprofile] [--no-gpu-work]
    python benchmarks/host_time_per_op.py --models tv:mobilenet_v3_small,tv:densenet121 --no-gpu-work --plans both

`tv:<name>` is a torchvision classification model (10 classes, 64 px, batch 2, SGD with momentum). `--plans
both` measures each step with eager op plans off, then on (NAVITRAIN_WGPU_PLANS, wgpu/op_plans.py), in one
process, and prints the ratio.

--no-gpu-work records and encodes every batch as usual but submits none (the values computed are
garbage): on lavapipe the software GPU's threads otherwise run on the same few cores and roughly double
the host's thread CPU time (MobileNetV3-Small at 64 px: ~150 -> ~62 ms a step on a 2-core box). What
remains is the host cost a fast GPU would leave, the eager step time's floor.
"""
from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import statistics
import threading
import time
from collections import defaultdict

import torch

import navitrain.wgpu as nw
from navitrain import _env
from navitrain.bench import models, workloads
from navitrain.wgpu import dispatch, op_plans
from navitrain.wgpu import runtime as runtime_mod


def chain_us_per_op(n: int = 400, repeats: int = 20) -> float:
    x = torch.randn(1024).to("wgpu")

    def chain(y, steps):
        for i in range(steps):
            y = y * 1.0001 + 0.0001 if i % 2 == 0 else torch.relu(y) - 0.0001
        return y

    chain(x, 200)
    nw.synchronize()
    timer = OpTimer()
    rt = runtime_mod.runtime()
    rt.flush = timer.timed_flush(type(rt).flush.__get__(rt))
    samples, totals = [], []
    try:
        for _ in range(repeats):
            timer.flush_seconds = 0.0
            t0 = time.thread_time()
            y = chain(x, n // 2)
            samples.append((time.thread_time() - t0 - timer.flush_seconds) / n * 1e6)
            totals.append((time.thread_time() - t0) / n * 1e6)
            nw.synchronize()
            del y
    finally:
        del rt.flush
    return min(samples), statistics.median(samples), min(totals)


class OpTimer:
    """A dispatch tracer: per aten overload, calls and exclusive thread CPU seconds; the threads seen.
    Submissions (Runtime.flush) are timed apart: on lavapipe a submit runs the software driver's command
    processing on the calling thread, work that a real GPU's driver does not do on the host, so it
    would swamp the per-op Python costs this is meant to find."""

    def __init__(self):
        self.calls = defaultdict(int)
        self.seconds = defaultdict(float)
        self.flush_seconds = 0.0
        self.threads: set[int] = set()
        self._local = threading.local()

    def timed_flush(self, flush):
        def run():
            t0 = time.thread_time()
            try:
                return flush()
            finally:
                spent = time.thread_time() - t0
                self.flush_seconds += spent
                stack = getattr(self._local, "stack", None)
                if stack:
                    stack[-1] += spent  # not the op's own time
        return run

    def __call__(self, cls, func, types, args=(), kwargs=None):
        local = self._local
        stack = getattr(local, "stack", None)
        if stack is None:
            stack = local.stack = []
            self.threads.add(threading.get_ident())
        stack.append(0.0)
        t0 = time.thread_time()
        try:
            return dispatch.torch_dispatch(cls, func, types, args, kwargs)
        finally:
            spent = time.thread_time() - t0
            children = stack.pop()
            if stack:
                stack[-1] += spent
            self.calls[func] += 1
            self.seconds[func] += spent - children


def skip_gpu_work(rt) -> None:
    """From now on, batches are recorded and encoded but never submitted (see --no-gpu-work)."""
    native = rt._native
    if native is not None:
        native.submit = lambda commands, _native=native: _native.lib.wgpuCommandBufferRelease(commands)
    queue = rt.queue

    class NoSubmitQueue:   # graph replays and timed passes submit through wgpu-py's queue
        def __getattr__(self, name):
            return getattr(queue, name)

        def submit(self, command_buffers):
            pass

    rt.queue = NoSubmitQueue()


def _thread_clocks(idents) -> dict[int, float]:
    clocks = {}
    for ident in idents:
        try:
            clocks[ident] = time.clock_gettime(time.pthread_getcpuclockid(ident))
        except OSError:  # the thread has ended
            pass
    return clocks


def build_step(workload):
    torch.manual_seed(0)
    model = workload.build().to("wgpu")
    opt = workload.make_optimizer(model.parameters())
    x, y = workload.batch(0, device="wgpu")
    train = models.train_step(model, opt, workload.loss)
    return lambda: train(x, y)


def measure_step(workload, steps: int, top: int, profile: bool, no_gpu_work: bool = False) -> dict:
    step = build_step(workload)
    for _ in range(3):
        step().item()
    nw.synchronize()
    timer = OpTimer()
    rt = runtime_mod.runtime()
    if no_gpu_work:
        skip_gpu_work(rt)
    rt.flush = timer.timed_flush(type(rt).flush.__get__(rt))
    dispatch.trace_ops(timer)
    try:
        step().item()  # learns which threads run ops
        nw.synchronize()
        timer.calls.clear()
        timer.seconds.clear()
        threads = timer.threads | {threading.get_ident()}
        # Untraced steps: the CPU time of every op-running thread, per step.
        dispatch.trace_ops(None)
        per_step, with_submits = [], []
        for _ in range(steps):
            nw.synchronize()
            timer.flush_seconds = 0.0
            before = _thread_clocks(threads)
            step()
            after = _thread_clocks(threads)
            with_submits.append(sum(after[k] - before[k] for k in after if k in before))
            per_step.append(with_submits[-1] - timer.flush_seconds)
            nw.synchronize()
        dispatch.trace_ops(timer)
        step()
        nw.synchronize()
    finally:
        dispatch.trace_ops(None)
        del rt.flush
    n_ops = sum(timer.calls.values())
    step_ms = statistics.median(per_step) * 1e3
    in_dispatch = sum(timer.seconds.values())
    print(f"\n{workload.title} ({workload.size}) eager step, thread CPU less submissions: median {step_ms:.2f} ms, "
          f"min {min(per_step) * 1e3:.2f} ms of {steps}; {n_ops} aten ops, {step_ms * 1e3 / n_ops:.1f} us/op; "
          f"with submissions: median {statistics.median(with_submits) * 1e3:.2f} ms, "
          f"min {min(with_submits) * 1e3:.2f} ms; inside dispatch (traced) {in_dispatch * 1e3:.2f} ms")
    rows = sorted(timer.seconds.items(), key=lambda kv: -kv[1])
    print(f"  {'aten op':<52} {'calls':>6} {'ms':>7} {'us/call':>8}")
    for func, seconds in rows[:top]:
        print(f"  {str(func)[:52]:<52} {timer.calls[func]:>6} {seconds * 1e3:>7.2f} "
              f"{seconds / timer.calls[func] * 1e6:>8.1f}")
    if profile:
        nw.synchronize()
        prof = cProfile.Profile(time.thread_time)
        prof.enable()
        step()
        prof.disable()
        nw.synchronize()
        out = io.StringIO()
        pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(top)
        print(out.getvalue()[-7000:])
    return {"step_ms": step_ms, "ops": n_ops, "us_per_op": step_ms * 1e3 / n_ops}


def torchvision_workload(name: str, image: int = 64, batch_size: int = 2) -> workloads.Workload:
    """A torchvision classification model as a workload: 10 classes, `image` px images, SGD momentum."""
    from _common import import_torchvision

    import_torchvision()
    import torchvision

    def batch(batch_size, seed=0, device="cpu"):
        gen = torch.Generator().manual_seed(seed)
        x = torch.randn(batch_size, 3, image, image, generator=gen)
        return x.to(device), torch.randint(0, 10, (batch_size,), generator=gen).to(device)

    return workloads.Workload(name=name, size=f"{image}px", title=f"torchvision {name} {image}px",
                              batch_size=batch_size, build=lambda: getattr(torchvision.models, name)(num_classes=10),
                              make_batch=batch, loss=torch.nn.functional.cross_entropy, optimizer="sgd", lr=0.01)


def _workload(name: str, size: str) -> workloads.Workload:
    return torchvision_workload(name[3:]) if name.startswith("tv:") else workloads.get(name, size)


def measure_plans_both(workload, steps: int, no_gpu_work: bool) -> None:
    """The step with eager op plans off, then on, in this process; prints both and the ratio."""
    results = {}
    for setting in ("0", "1"):
        os.environ[_env.WGPU_PLANS] = setting
        runtime_mod.runtime().plans.clear()
        op_plans.stats.clear()
        results[setting] = measure_step(workload, steps, 0, False, no_gpu_work)
    off, on = results["0"]["step_ms"], results["1"]["step_ms"]
    repeated, recorded = op_plans.stats["repeated"], op_plans.stats["recorded"]
    print(f"  plans: off {off:.2f} ms, on {on:.2f} ms per step: {on / off:.2f}x "
          f"({repeated} calls repeated, {recorded} recorded over the measured steps)")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="gpt,resnet18")
    ap.add_argument("--size", default="tiny", choices=workloads.SIZES)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--cprofile", action="store_true", help="also a cProfile (thread CPU) of one untraced step")
    ap.add_argument("--no-chain", action="store_true")
    ap.add_argument("--no-gpu-work", action="store_true", help="submit nothing (see above); implies --no-chain")
    ap.add_argument("--plans", choices=("as-set", "both"), default="as-set",
                    help="both: each step with eager op plans off, then on (see above)")
    args = ap.parse_args(argv)
    args.no_chain = args.no_chain or args.no_gpu_work
    if not args.no_chain:
        print("chain, us thread CPU per op: less submissions min {:.1f} median {:.1f}; with submissions min {:.1f}"
              .format(*chain_us_per_op()))
    for name in args.models.split(","):
        if not name:
            continue
        if args.plans == "both":
            measure_plans_both(_workload(name, args.size), args.steps, args.no_gpu_work)
        else:
            measure_step(_workload(name, args.size), args.steps, args.top, args.cprofile, args.no_gpu_work)


if __name__ == "__main__":
    main()
