#!/usr/bin/env python3
"""The largest batch that trains under a memory cap (NAVITRAIN_WGPU_MEMORY_LIMIT), found by bisection.

Each try is a child process (an out-of-memory error leaves the allocator's heaps behind, and a fresh
process is what a user's run is): it builds the model on the wgpu device with the cap set, runs two
training steps (fp32, or with torch.autocast("wgpu", float16)) and says whether they fit. The batch is
doubled until a try fails, then bisected between the last fit and the first failure.

    python benchmarks/max_batch.py --limit 6GiB --out max_batch.json             # on a GPU: docs/wgpu.md's table
    python benchmarks/max_batch.py --limit 48MiB --size tiny --models resnet18 --max 64   # lavapipe smoke test

Models: resnet18 and gpt are navitrain bench's workloads (`--size standard`: CIFAR ResNet-18 at 32x32,
the GPT decoder 6x384 at context 256); resnet50 is torchvision's at 224x224 (needs torchvision).
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def _build(model: str, size: str):
    """(module, make_batch(batch) -> (x, y) on the device, loss)."""
    if model == "resnet50":
        import torch
        import torchvision

        net = torchvision.models.resnet50(num_classes=1000)
        side = 224 if size == "standard" else 64

        def batch(n):
            return torch.randn(n, 3, side, side).to("wgpu"), torch.randint(0, 1000, (n,)).to("wgpu")

        return net, batch, torch.nn.functional.cross_entropy
    from navitrain.bench import workloads

    work = workloads.get(model, size)
    return work.build(), lambda n: work.make_batch(n, seed=0, device="wgpu"), work.loss


def try_batch(model: str, size: str, batch: int, precision: str) -> dict:
    """In the child: two training steps at this batch. {"fits": bool, "peak_bytes"?, "error"?}."""
    import torch

    import navitrain.wgpu as nw

    net, make_batch, loss_fn = _build(model, size)
    net = net.to("wgpu")
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, foreach=False)
    try:
        for _ in range(2):
            x, y = make_batch(batch)
            with torch.autocast("wgpu", dtype=torch.float16, enabled=precision == "fp16"):
                loss = loss_fn(net(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        loss.item()
    except torch.OutOfMemoryError as exc:
        return {"fits": False, "error": str(exc)}
    return {"fits": True, "peak_bytes": nw.max_memory_allocated()}


def _child(model, size, batch, precision, limit) -> dict:
    env = {**os.environ, "NAVITRAIN_WGPU_MEMORY_LIMIT": limit,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, __file__, "--child", model, size, str(batch), precision],
                          env=env, capture_output=True, text=True)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    return {"fits": False, "error": f"child exited {proc.returncode}: {proc.stderr.strip()[-500:]}"}


def largest_batch(fits, most: int, start: int = 1) -> tuple[int, dict]:
    """The largest n <= most with fits(n)["fits"] (0 when even 1 does not), by doubling from start then bisection."""
    good, good_result, bad = 0, {}, None
    n = max(1, min(start, most))
    while n <= most:
        result = fits(n)
        if not result["fits"]:
            bad = n
            break
        good, good_result = n, result
        n *= 2
    if bad is None:
        bad = most + 1 if good < most else None
        if bad is None:
            return good, good_result
    while bad - good > 1:
        mid = (good + bad) // 2
        result = fits(mid)
        if result["fits"]:
            good, good_result = mid, result
        else:
            bad = mid
    return good, good_result


def main(argv=None) -> int:
    if argv is None and sys.argv[1:2] == ["--child"]:
        model, size, batch, precision = sys.argv[2:6]
        print("RESULT " + json.dumps(try_batch(model, size, int(batch), precision)), flush=True)
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", default="6GiB", help="NAVITRAIN_WGPU_MEMORY_LIMIT for every try (default 6GiB)")
    parser.add_argument("--models", default="resnet18,resnet50,gpt")
    parser.add_argument("--precisions", default="fp32,fp16")
    parser.add_argument("--size", default="standard", choices=("tiny", "standard"))
    parser.add_argument("--max", type=int, default=4096, help="largest batch tried")
    parser.add_argument("--start", type=int, default=1, help="first batch tried (doubling goes on from there)")
    parser.add_argument("--parallel", type=int, default=1,
                        help="searches run at once (each child holds at most --limit; a big GPU fits several)")
    parser.add_argument("--out", help="write the results as JSON here (rewritten after every search)")
    args = parser.parse_args(argv)
    combos = [(m, p) for m in args.models.split(",") for p in args.precisions.split(",")]
    rows = []

    def search(combo):
        model, precision = combo
        batch, result = largest_batch(lambda n: _child(model, args.size, n, precision, args.limit),
                                      args.max, args.start)
        return {"model": model, "precision": precision, "size": args.size, "limit": args.limit,
                "largest_batch": batch, "peak_bytes": result.get("peak_bytes")}

    # the searches are independent processes, so several can share one large GPU; results print as they finish
    with concurrent.futures.ThreadPoolExecutor(max(1, args.parallel)) as pool:
        for row in pool.map(search, combos):
            rows.append(row)
            peak = row["peak_bytes"]
            print(f"{row['model']:9s} {row['precision']}: largest batch {row['largest_batch']}"
                  + (f" (peak {peak / 2**20:.0f} MiB)" if peak else ""), flush=True)
            if args.out:
                Path(args.out).write_text(json.dumps({"results": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
