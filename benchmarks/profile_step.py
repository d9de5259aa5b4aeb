"""Where a training step's time and memory traffic go on the wgpu device: per kernel, GPU time, bytes
moved, bandwidth, FLOPs and throughput (navitrain.wgpu.profile()) for an eager, a compiled
(torch.compile backend "wgpu") or a captured-graph (navitrain.wgpu.graphed) step; and, for eager steps,
recording vs GPU time, the cost of one submission, step time under other submission policies and a
cProfile of one step.

    python benchmarks/profile_step.py --models gpt,resnet18
    python benchmarks/profile_step.py --models resnet18 --size tiny --modes eager,compile,graph --no-host \
        --json traffic.json

Columns of the kernel table: dispatches in the step, GPU ms, MB moved (bytes read + written, each
tensor region an op reads or writes counted once: compulsory traffic, see navitrain/wgpu/traffic.py),
GB/s (bytes moved / GPU time), MFLOP and TFLOPS (FLOPs / GPU time). `untracked` counts dispatches
whose traffic no one reported (their bytes are missing from the totals).
"""
from __future__ import annotations

import argparse
import cProfile
import dataclasses
import io
import json
import pstats
import statistics
import time

import torch

import navitrain.wgpu as nw
from navitrain.bench import models, workloads
from navitrain.wgpu import runtime as runtime_mod

MODES = ("eager", "compile", "graph")
WARMUP = 3  # steps before the profiled one: kernels compile; compiled and graphed steps capture


def submit_cost(rt, n=200):
    """Host seconds of one flush that carries a single tiny dispatch."""
    x = torch.randn(256).to("wgpu")
    nw.synchronize()
    t_record = t_flush = 0.0
    for _ in range(n):
        t0 = time.perf_counter()
        x.add_(1.0)
        t1 = time.perf_counter()
        rt.flush()
        t_flush += time.perf_counter() - t1
        t_record += t1 - t0
    nw.synchronize()
    return t_record / n, t_flush / n


def build_step(workload, mode: str):
    """A fresh model, optimizer and data; step() runs one training step the way `mode` says."""
    torch.manual_seed(0)
    model = workload.build().to("wgpu")
    opt = workload.make_optimizer(model.parameters(), capturable=mode != "eager")
    x, y = workload.batch(0, device="wgpu")
    train = models.train_step(model, opt, workload.loss)
    if mode == "compile":
        import navitrain.wgpu.compile  # noqa: F401  (registers backend "wgpu" where no entry point is installed)

        train = torch.compile(train, backend="wgpu")
    elif mode == "graph":
        train = nw.graphed(train, warmup=WARMUP - 1)
    return lambda: train(x, y)


def kernel_rows(table) -> list[dict]:
    rows = []
    for name, row in table.items():
        seconds = row.seconds
        rows.append({"kernel": name, "dispatches": row.count, "gpu_ms": seconds * 1e3,
                     "bytes_read": row.bytes_read, "bytes_written": row.bytes_written, "bytes": row.bytes_moved,
                     "GBps": row.bytes_moved / seconds / 1e9 if seconds > 0 else None, "flops": row.flops,
                     "TFLOPS": row.flops / seconds / 1e12 if seconds > 0 else None, "untracked": row.untracked})
    return sorted(rows, key=lambda r: -r["gpu_ms"])


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_table(title: str, rows: list[dict], totals: dict, top: int) -> None:
    print(f"\n{title}")
    print(f"  {'kernel':<48} {'disp':>5} {'GPU ms':>9} {'MB':>9} {'GB/s':>8} {'MFLOP':>10} {'TFLOPS':>8}")
    for r in rows[:top]:
        print(f"  {r['kernel'][:48]:<48} {r['dispatches']:>5} {r['gpu_ms']:>9.3f} {r['bytes'] / 1e6:>9.3f} "
              f"{_fmt(r['GBps'], '8.2f')} {r['flops'] / 1e6:>10.2f} {_fmt(r['TFLOPS'], '8.4f')}")
    if len(rows) > top:
        print(f"  ... {len(rows) - top} more kernels")
    seconds = totals["seconds"]
    print(f"  {'step total':<48} {totals['dispatches']:>5} {seconds * 1e3:>9.3f} {totals['bytes_moved'] / 1e6:>9.3f} "
          f"{_fmt(totals['bytes_moved'] / seconds / 1e9 if seconds else None, '8.2f')} "
          f"{totals['flops'] / 1e6:>10.2f} {_fmt(totals['flops'] / seconds / 1e12 if seconds else None, '8.4f')}")
    print(f"  read {totals['bytes_read'] / 1e6:.3f} MB, written {totals['bytes_written'] / 1e6:.3f} MB, "
          f"{totals['untracked']} dispatches untracked")


def profile_mode(workload, mode: str, top: int) -> dict:
    step = build_step(workload, mode)
    for _ in range(WARMUP):
        step().item()
    nw.synchronize()
    with nw.profile() as table:
        loss = step()
    loss.item()
    totals = table.totals()
    rows = kernel_rows(table)
    print_table(f"{workload.title} ({workload.size}, batch {workload.batch_size}), {mode} step:", rows, totals, top)
    return {"totals": totals, "kernels": rows}


def host_breakdown(workload, policies: str, steps: int) -> None:
    """Eager step time under other submission policies, and a cProfile of one step."""
    rt = runtime_mod.runtime()
    step = build_step(workload, "eager")
    for _ in range(WARMUP):
        step().item()
    for policy in policies.split(","):
        rt._batch_limit, rt._heavy_batch = (int(v) for v in policy.split("/"))
        hosts, totals = [], []
        d0, s0 = rt.dispatch_count, rt.submit_count
        for _ in range(steps):
            nw.synchronize()
            t0 = time.perf_counter()
            step()
            hosts.append(time.perf_counter() - t0)
            nw.synchronize()
            totals.append(time.perf_counter() - t0)
        print(f"{workload.name} batch/heavy {policy:>8}: step {statistics.median(totals) * 1e3:6.1f} ms, "
              f"recording {statistics.median(hosts) * 1e3:6.1f} ms, "
              f"{(rt.dispatch_count - d0) // steps} dispatches, "
              f"{(rt.submit_count - s0) // steps} submits")
    rt._batch_limit, rt._heavy_batch = 64, 4
    nw.synchronize()
    prof = cProfile.Profile()
    prof.enable()
    step()
    prof.disable()
    nw.synchronize()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(30)
    print(out.getvalue()[-9000:])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="gpt,resnet18", help=f"workloads ({', '.join(workloads.names())})")
    ap.add_argument("--size", default="standard", choices=workloads.SIZES)
    ap.add_argument("--modes", default="eager", help=f"steps to profile per kernel: {', '.join(MODES)}")
    ap.add_argument("--batch", type=int, help="batch size instead of the workload's (the standard ResNet-18 at 8-16 "
                    "fits a software adapter)")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--policies", default="64/4,64/64,256/256,16/16", help="batch/heavy-batch pairs to time")
    ap.add_argument("--no-host", action="store_true", help="only the kernel tables (no host-time breakdown)")
    ap.add_argument("--top", type=int, default=25, help="kernels listed per table (the JSON has all)")
    ap.add_argument("--json", help="write the kernel tables and totals to this file")
    args = ap.parse_args(argv)
    modes = args.modes.split(",")
    unknown = set(modes) - set(MODES)
    if unknown:
        ap.error(f"unknown modes {sorted(unknown)}; modes: {', '.join(MODES)}")
    rt = runtime_mod.runtime()
    print(f"adapter: {rt.info.name}")
    if not args.no_host:
        rec, fl = submit_cost(rt)
        print(f"one tiny op: recording {rec * 1e6:.1f} us, flush (submit) {fl * 1e6:.1f} us")
    result = {"adapter": nw.adapter_info(), "torch": torch.__version__, "size": args.size, "batch": args.batch,
              "models": {}}
    for name in args.models.split(","):
        workload = workloads.get(name, args.size)
        if args.batch:
            workload = dataclasses.replace(workload, batch_size=args.batch)
        if not args.no_host:
            host_breakdown(workload, args.policies, args.steps)
        result["models"][name] = {"title": workload.title,
                                  "modes": {mode: profile_mode(workload, mode, args.top) for mode in modes}}
        per_mode = result["models"][name]["modes"]
        if "eager" in per_mode and len(per_mode) > 1:
            eager_bytes = per_mode["eager"]["totals"]["bytes_moved"]
            for mode, got in per_mode.items():
                if mode != "eager" and eager_bytes:
                    print(f"{name}: {mode} step moves {got['totals']['bytes_moved'] / eager_bytes:.1%} of the eager "
                          f"step's bytes")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
