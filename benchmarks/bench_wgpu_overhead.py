"""Host time per op on the wgpu device: a long chain of small elementwise ops.

What it measures: the Python + PyTorch dispatch + navitrain recording cost of one op, which bounds
eager training speed when kernels are small. The chain is recorded with no sync inside the timed
region except the batch submissions navitrain makes itself; GPU execution is timed separately by a
synchronize() after the chain. Results are validated against the CPU before any timing.

    python benchmarks/bench_wgpu_overhead.py [--ops 2000] [--size 1024] [--json out.json]

Target (issue 5): at most 30 us of host time per small op.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

import navitrain.wgpu as nw
from navitrain.wgpu.runtime import runtime

OPS_PER_STEP = 2  # each step of the chain is two aten ops


def chain(x, n):
    for i in range(n):
        x = x * 1.0001 + 0.0001 if i % 2 == 0 else torch.relu(x) - 0.0001
    return x


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ops", type=int, default=2000, help="steps in the chain, two aten ops each (default 2000)")
    ap.add_argument("--size", type=int, default=1024, help="elements per tensor (default 1024: small ops)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", help="write results to this file")
    args = ap.parse_args(argv)

    x_cpu = torch.randn(args.size, generator=torch.Generator().manual_seed(0))
    x = x_cpu.to("wgpu")
    # Validate first: 200 ops of the chain must match the CPU.
    ref = chain(x_cpu, 200)
    got = chain(x, 200).cpu()
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    rt = runtime()
    chain(x, args.ops)
    nw.synchronize()  # warm-up: kernels compiled, allocator at steady state

    host, total = [], []
    d0 = rt.dispatch_count
    s0 = rt.submit_count
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        y = chain(x, args.ops)
        t1 = time.perf_counter()
        nw.synchronize()
        t2 = time.perf_counter()
        host.append((t1 - t0) / (args.ops * OPS_PER_STEP) * 1e6)
        total.append((t2 - t0) / (args.ops * OPS_PER_STEP) * 1e6)
        del y
    dispatches = (rt.dispatch_count - d0) / args.repeats / (args.ops * OPS_PER_STEP)
    submits = (rt.submit_count - s0) / args.repeats
    bytes_per_op = 2 * args.size * 4  # one read, one write of the tensor
    result = {
        "adapter": nw.adapter_info(),
        "torch": torch.__version__,
        "ops": args.ops * OPS_PER_STEP, "size": args.size,
        "host_us_per_op_median": statistics.median(host),
        "host_us_per_op_min": min(host),
        "wall_us_per_op_median": statistics.median(total),
        "dispatches_per_op": dispatches,
        "submits_per_chain": submits,
        "effective_GBps": bytes_per_op / (statistics.median(total) * 1e-6) / 1e9,
        "target_host_us_per_op": 30.0,
    }
    a = result["adapter"]
    print(f"adapter: {a['name']} ({a['backend']}, {a['driver']})  torch {torch.__version__}")
    print(f"{'ops':>6} {'elements':>9} {'host us/op':>11} {'wall us/op':>11} {'GB/s':>7} {'dispatch/op':>12} "
          f"{'submits':>8}")
    print(f"{args.ops * OPS_PER_STEP:>6} {args.size:>9} {result['host_us_per_op_median']:>11.1f} "
          f"{result['wall_us_per_op_median']:>11.1f} {result['effective_GBps']:>7.2f} {dispatches:>12.2f} "
          f"{submits:>8.1f}")
    verdict = "meets" if result["host_us_per_op_median"] <= 30 else "misses"
    print(f"host time per op {verdict} the 30 us target")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
