"""Eager op plans on a real GPU, step by step: why a step is faster or slower with plans on (wgpu/op_plans.py).

Run 17 timed eager steps with plans on and off in separate processes and found both faster (host-bound
MobileNets, EfficientNet, RegNet: 0.51-0.72x) and slower (CIFAR ResNet-18 b128: 36.6 against 28.9 ms) steps,
with step-to-step swings of 25% in some runs. This runs one process per model, warms up with plans on, then
alternates blocks of steps with plans off and on (so drift in the machine's speed falls on both), and for every
step records:
  wall      the step until the GPU is done (ms);
  host      until the step's Python returns, the GPU maybe still busy (ms);
  cpu       the process's CPU time while the host recorded (all threads: autograd's device thread runs backward),
            and the main thread's (forward, optimizer);
  plans     what op_plans did: repeated, moved (recorded elsewhere: re-recorded), recorded, unplannable reasons;
  gc        cyclic-GC collections during the step and their seconds;
  submits   queue submissions.
A host time well above its CPU time means the host waited (for the driver or the GPU), not computed.

    python benchmarks/plans_on_device.py --models resnet18,gpt,tv:mobilenet_v2 [--blocks 3 --per-block 4]

Models: the bench workloads (navitrain.bench.workloads: resnet18 is the CIFAR ResNet-18 b128, gpt the 6x384 GPT
b16, as in bench_wgpu_train.py) and torchvision models as `tv:<name>` (224 px, bench_wgpu_zoo.py's batch).
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _workload(name: str, quick: bool):
    """A workload of navitrain.bench.workloads (standard size; tiny with --quick), or "tv:<model>": the torchvision
    model at 224 px and bench_wgpu_zoo's batch (64 px, batch 2 with --quick)."""
    from host_time_per_op import torchvision_workload

    from navitrain.bench import workloads
    if not name.startswith("tv:"):
        return workloads.get(name, "tiny" if quick else "standard")
    from bench_wgpu_zoo import BATCH
    model = name[3:]
    return torchvision_workload(model, 64, 2) if quick else torchvision_workload(model, 224, BATCH.get(model, 16))


def _build(name: str, quick: bool):
    """(step function returning the loss, description): the workload's training step as a script runs it, each
    step's batch (two, in turn) moved to the device first, as bench_wgpu_train.py's loop does."""
    import itertools

    import torch

    from navitrain.bench import models
    workload = _workload(name, quick)
    torch.manual_seed(0)
    model = workload.build().to("wgpu")
    train = models.train_step(model, workload.make_optimizer(model.parameters()), workload.loss)
    batches = itertools.cycle([workload.batch(seed) for seed in (0, 1)])

    def step():
        x, y = (t.to("wgpu") for t in next(batches))
        return train(x, y)
    return step, f"{workload.title}, batch {workload.batch_size}"


def worker(spec: str, blocks: int, per_block: int, warmup: int, quick: bool, no_gpu_work: bool) -> dict:
    import navitrain.wgpu as nw
    from navitrain.wgpu import op_plans
    from navitrain.wgpu.runtime import runtime

    step, what = _build(spec, quick)
    rt = runtime()
    if no_gpu_work:   # the host's work alone (values garbage): see host_time_per_op.py
        from host_time_per_op import skip_gpu_work
        skip_gpu_work(rt)
    gc_log = []
    started = {}

    def on_gc(phase, info):
        if phase == "start":
            started["t"] = time.perf_counter()
        else:
            gc_log.append((info["generation"], time.perf_counter() - started.get("t", time.perf_counter())))
    gc.callbacks.append(on_gc)
    os.environ["NAVITRAIN_WGPU_PLANS"] = "1"
    loss = None
    for _ in range(warmup):
        loss = step()
        loss.item()
    rows = []
    for b in range(2 * blocks):
        mode = "0" if b % 2 == 0 else "1"
        os.environ["NAVITRAIN_WGPU_PLANS"] = mode
        for _ in range(per_block):
            nw.synchronize()
            before = dict(op_plans.stats)
            gc_log.clear()
            s0 = rt.submit_count
            c0, m0 = time.process_time(), time.thread_time()
            t0 = time.perf_counter()
            loss = step()
            t1 = time.perf_counter()
            c1, m1 = time.process_time(), time.thread_time()
            nw.synchronize()
            t2 = time.perf_counter()
            plans = {k: v - before.get(k, 0) for k, v in op_plans.stats.items() if v != before.get(k, 0)}
            rows.append({"plans": mode, "wall_ms": (t2 - t0) * 1e3, "host_ms": (t1 - t0) * 1e3,
                         "cpu_ms": (c1 - c0) * 1e3, "main_cpu_ms": (m1 - m0) * 1e3, "submits": rt.submit_count - s0,
                         "plan_stats": plans, "gc": [(g, s * 1e3) for g, s in gc_log]})
            loss.item()
    summary = {}
    for mode in ("0", "1"):
        mine = [r for r in rows if r["plans"] == mode]
        summary[mode] = {k: statistics.median(r[k] for r in mine) for k in ("wall_ms", "host_ms", "cpu_ms")}
    return {"model": spec, "what": what, "adapter": nw.adapter_info()["name"], "rows": rows, "median": summary}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="resnet18,gpt,tv:mobilenet_v2")
    ap.add_argument("--blocks", type=int, default=3, help="blocks of steps per mode, alternating off, on")
    ap.add_argument("--per-block", type=int, default=4)
    ap.add_argument("--warmup", type=int, default=4)
    ap.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test on lavapipe)")
    ap.add_argument("--no-gpu-work", action="store_true", help="record and encode, submit nothing (lavapipe)")
    ap.add_argument("--timeout", type=float, default=150)
    ap.add_argument("--json", help="write every model's rows here")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, args.blocks, args.per_block, args.warmup, args.quick,
                                args.no_gpu_work)))
        return
    results = []
    for spec in args.models.split(","):
        cmd = [sys.executable, __file__, "--worker", spec, "--blocks", str(args.blocks), "--per-block",
               str(args.per_block), "--warmup", str(args.warmup)] + (["--quick"] if args.quick else []) + \
            (["--no-gpu-work"] if args.no_gpu_work else [])
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
        except subprocess.TimeoutExpired:
            print(f"{spec}: timed out after {args.timeout:.0f} s", flush=True)
            continue
        if done.returncode != 0:
            print(f"{spec}: failed (exit {done.returncode})\n{done.stderr[-2000:]}", flush=True)
            continue
        r = json.loads(done.stdout.strip().splitlines()[-1])
        results.append(r)
        print(f"== {r['what']} on {r['adapter']}", flush=True)
        for row in r["rows"]:
            stats = " ".join(f"{k.replace('unplannable: ', 'x:')}={v}" for k, v in sorted(row["plan_stats"].items()))
            gcs = ",".join(f"g{g}:{ms:.1f}" for g, ms in row["gc"] if g > 0 or ms > 1)
            print(f"  plans={row['plans']} wall {row['wall_ms']:6.1f}  host {row['host_ms']:6.1f}  cpu "
                  f"{row['cpu_ms']:6.1f} (main {row['main_cpu_ms']:5.1f})  submits {row['submits']:3d}  {stats} {gcs}",
                  flush=True)
        off, on = r["median"]["0"], r["median"]["1"]
        print(f"  median off: wall {off['wall_ms']:.1f} host {off['host_ms']:.1f} cpu {off['cpu_ms']:.1f} | on: wall "
              f"{on['wall_ms']:.1f} host {on['host_ms']:.1f} cpu {on['cpu_ms']:.1f} | on/off wall "
              f"{on['wall_ms'] / off['wall_ms']:.2f}x", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
