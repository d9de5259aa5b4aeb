#!/usr/bin/env python3
"""The largest batch that trains under a memory cap (NAVITRAIN_WGPU_MEMORY_LIMIT), found by bisection.

Each try is a child process (an out-of-memory error leaves the allocator's heaps behind, and a fresh
process is what a user's run is): it builds the model on the wgpu device with the cap set, runs two
training steps (fp32, or with torch.autocast("wgpu", float16)) and says whether they fit. The batch is
doubled until a try fails, then bisected between the last fit and the first failure.

    python benchmarks/max_batch.py --limit 6GiB --out max_batch.json             # on a GPU: docs/wgpu.md's table
    python benchmarks/max_batch.py --limit 48MiB --size tiny --models resnet18 --max 64   # lavapipe smoke test

Without the GPU, `--predict` measures instead (max_batch_predict.py says why that carries over): a few
uncapped tries at small batches record every allocation the two steps make, and the allocator, replayed
on that trace extrapolated to larger batches with the target card's heaps and binding limit, finds the
largest batch under the cap. `--verify` then runs real capped tries here at the batch predicted for this
adapter and 10% above it.

    python benchmarks/max_batch.py --predict --limit 6GiB --traces t/ --out predicted.json --markdown predicted.md
    python benchmarks/max_batch.py --predict --verify --limit 384MiB --models resnet18 --precisions fp16 --traces t/

(on lavapipe a standard-size try takes minutes: keep the traces and the second command measures nothing
new, it only runs the two real tries; the predictions are for an RX 5600 XT's limits, --profile none for
this adapter's.)

Models: resnet18 and gpt are navitrain bench's workloads (`--size standard`: CIFAR ResNet-18 at 32x32,
the GPT decoder 6x384 at context 256); resnet50 is torchvision's at 224x224 (bench_conv.py's definition of
the same network where torchvision is not installed).
"""
from __future__ import annotations

import argparse
import concurrent.futures
import importlib.util
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
HERE = Path(__file__).resolve().parent
# The batches --predict measures by default: small enough for lavapipe, three to see a line.
PREDICT_BATCHES = {"resnet18": (4, 8, 16), "resnet50": (1, 2, 4), "gpt": (1, 2, 4)}


def _build(model: str, size: str):
    """(module, make_batch(batch) -> (x, y) on the device, loss)."""
    if model == "resnet50":
        import torch

        try:
            import torchvision

            net = torchvision.models.resnet50(num_classes=1000)
        except ImportError:
            sys.path.insert(0, str(HERE))
            from bench_conv import resnet50  # the same layers, written out

            net, _ = resnet50()
        side = 224 if size == "standard" else 64

        def batch(n):
            return torch.randn(n, 3, side, side).to("wgpu"), torch.randint(0, 1000, (n,)).to("wgpu")

        return net, batch, torch.nn.functional.cross_entropy
    from navitrain.bench import workloads

    work = workloads.get(model, size)
    return work.build(), lambda n: work.make_batch(n, seed=0, device="wgpu"), work.loss


def _two_steps(model: str, size: str, batch: int, precision: str) -> None:
    import torch

    net, make_batch, loss_fn = _build(model, size)
    net = net.to("wgpu")
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, foreach=False)
    for _ in range(2):
        x, y = make_batch(batch)
        with torch.autocast("wgpu", dtype=torch.float16, enabled=precision == "fp16"):
            loss = loss_fn(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    loss.item()


def try_batch(model: str, size: str, batch: int, precision: str) -> dict:
    """In the child: two training steps at this batch. {"fits": bool, "peak_bytes"?, "error"?}."""
    import torch

    import navitrain.wgpu as nw

    try:
        _two_steps(model, size, batch, precision)
    except torch.OutOfMemoryError as exc:
        return {"fits": False, "error": str(exc)}
    return {"fits": True, "peak_bytes": nw.max_memory_allocated()}


def _record_allocations(allocator) -> tuple[list[int], list[str]]:
    """Log every malloc (its byte count) and free (-(k + 1) for the k-th block) of this allocator from now
    on, in max_batch_predict's trace format, and where each malloc came from (the files and lines of its
    callers: what lines up the traces of two batches when a size-dependent kernel choice adds a request).
    Blocks allocated before are not followed."""
    trace: list[int] = []
    sites: list[str] = []
    live: dict[int, tuple[int, object]] = {}  # id(block) -> (its number, the block: keeps the id unique)
    malloc, free = allocator.malloc, allocator.free

    def logged_malloc(nbytes):
        block = malloc(nbytes)
        live[id(block)] = (len(sites), block)
        frame, callers = sys._getframe(1), []
        while frame is not None and len(callers) < 6:
            callers.append(f"{Path(frame.f_code.co_filename).name}:{frame.f_code.co_name}:{frame.f_lineno}")
            frame = frame.f_back
        sites.append(" ".join(callers))
        trace.append(nbytes)
        return block

    def logged_free(block):
        known = live.pop(id(block), None)
        if known is not None:
            trace.append(-(known[0] + 1))
        free(block)

    allocator.malloc, allocator.free = logged_malloc, logged_free
    return trace, sites


def measure(model: str, size: str, batch: int, precision: str, out: str) -> dict:
    """In the child, uncapped: two training steps at this batch with every allocation logged; the trace
    goes to `out` (it can be long), the summary is returned."""
    import navitrain.wgpu as nw
    from navitrain.wgpu.runtime import runtime

    allocator = runtime().allocator
    trace, sites = _record_allocations(allocator)
    start = time.perf_counter()
    _two_steps(model, size, batch, precision)
    Path(out).write_text(json.dumps(trace))
    Path(out + ".sites").write_text(json.dumps(sites))
    return {"batch": batch, "seconds": time.perf_counter() - start, "peak_bytes": nw.max_memory_allocated(),
            "reserved_bytes": nw.memory_reserved(), "heap_bytes": allocator.heap_size,
            "max_binding_bytes": allocator.max_binding, "cpu_fallbacks": nw.fallback_report()["cpu_fallbacks"]}


def _env(**extra) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")]))}
    for name, value in extra.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


def _run_child(args: list[str], env: dict) -> dict:
    proc = subprocess.run([sys.executable, __file__, *args], env=env, capture_output=True, text=True)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    return {"error": f"child exited {proc.returncode}: {proc.stderr.strip()[-500:]}"}


def _child(model, size, batch, precision, limit, **env) -> dict:
    result = _run_child(["--child", model, size, str(batch), precision],
                        _env(NAVITRAIN_WGPU_MEMORY_LIMIT=limit, **env))
    return result if "fits" in result else {"fits": False, **result}


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


def _predictor():
    """max_batch_predict.py beside this file (loaded by path: this script is not part of a package)."""
    module = sys.modules.get("max_batch_predict")
    if module is None:
        spec = importlib.util.spec_from_file_location("max_batch_predict", HERE / "max_batch_predict.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules["max_batch_predict"] = module
    return module


def predict_one(model: str, precision: str, args) -> dict:
    """--predict for one (model, precision): uncapped measured tries at small batches, the prediction for
    the target card, and with --verify real capped tries here around the batch predicted for this adapter."""
    mbp = _predictor()

    # Built-in tiles and algorithms (no tuner): the same kernels, so the same requests, on every adapter;
    # the limits profile makes this adapter refuse what the card would.
    env = {"NAVITRAIN_WGPU_TUNE": "0", "NAVITRAIN_WGPU_LIMITS": args.profile}
    batches = [int(b) for b in args.batches.split(",")] if args.batches else list(PREDICT_BATCHES[model])
    row = {"model": model, "precision": precision, "size": args.size, "limit": args.limit, "batches": batches,
           "limits_profile": args.profile}
    measurements = []
    with tempfile.TemporaryDirectory() as tmp:
        for batch in batches:
            name = f"trace_{model}_{args.size}_{precision}_{batch}_{args.profile or 'here'}"
            out, kept = Path(args.traces or tmp) / f"{name}.json", Path(args.traces or tmp) / f"{name}.summary.json"
            if kept.exists() and out.exists():  # measured before: a new limit or target needs no new try
                summary = json.loads(kept.read_text())
            else:
                summary = _run_child(["--measure-child", model, args.size, str(batch), precision, str(out)],
                                     _env(NAVITRAIN_WGPU_MEMORY_LIMIT=None, **env))
                if "error" in summary:
                    return {**row, "error": summary["error"]}
                kept.write_text(json.dumps(summary))
            summary["trace"] = json.loads(out.read_text())
            sites = Path(f"{out}.sites")
            if sites.exists():
                summary["sites"] = json.loads(sites.read_text())
            measurements.append(summary)
    row["measure_seconds"] = [round(m["seconds"], 1) for m in measurements]
    row["peak_bytes_reported"] = [m["peak_bytes"] for m in measurements]
    row["cpu_fallbacks"] = measurements[-1]["cpu_fallbacks"]
    limit = mbp.parse_bytes(args.limit)
    row["target"] = mbp.target_adapter(args.profile, measurements[0])
    row.update(mbp.predict(measurements, limit, row["target"], args.max, largest_batch))
    if args.verify:
        here = mbp.predict(measurements, limit, mbp.target_adapter(None, measurements[0]), args.max, largest_batch)
        n = here["predicted"]
        tries = [n, max(n + 1, math.ceil(n * 1.1))] if n else [1]
        outcome = [(t, _child(model, args.size, t, precision, args.limit, **env)["fits"]) for t in tries]
        row["verified"] = {"limit": args.limit, "predicted_here": n, "tries": outcome,
                           "as_predicted": outcome[0][1] and not outcome[-1][1] if n else not outcome[0][1]}
    return row


def _predict_main(args, combos) -> int:
    rows = []
    for model, precision in combos:
        row = predict_one(model, precision, args)
        rows.append(row)
        if "error" in row:
            print(f"{model:9s} {precision}: {row['error']}", flush=True)
        else:
            verified = row.get("verified")
            print(f"{model:9s} {precision}: predicted {row['predicted']} under {args.limit} on {row['target']['name']}"
                  f" (measured at {row['batches']} in {row['measure_seconds']} s)"
                  + (f"; here under {verified['limit']}: {verified['tries']}" if verified else ""), flush=True)
        if args.out:
            Path(args.out).write_text(json.dumps({"results": rows}, indent=1) + "\n")
    table = _predictor().markdown([row for row in rows if "error" not in row])
    print(table)
    if args.markdown:
        Path(args.markdown).write_text(table + "\n")
    return 0 if all("error" not in row for row in rows) else 1


def main(argv=None) -> int:
    if argv is None and sys.argv[1:2] == ["--child"]:
        model, size, batch, precision = sys.argv[2:6]
        print("RESULT " + json.dumps(try_batch(model, size, int(batch), precision)), flush=True)
        return 0
    if argv is None and sys.argv[1:2] == ["--measure-child"]:
        model, size, batch, precision, out = sys.argv[2:7]
        print("RESULT " + json.dumps(measure(model, size, int(batch), precision, out)), flush=True)
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
    parser.add_argument("--predict", action="store_true",
                        help="no search: measure uncapped tries at small batches and predict (max_batch_predict.py)")
    parser.add_argument("--batches", help="--predict: the batches measured (default per model: "
                        + "; ".join(f"{m} {','.join(map(str, b))}" for m, b in PREDICT_BATCHES.items()) + ")")
    parser.add_argument("--profile", default="rx5600xt",
                        help="--predict: the card predicted for, a NAVITRAIN_WGPU_LIMITS profile the tries also run "
                             "under (default rx5600xt); 'none': this adapter")
    parser.add_argument("--verify", action="store_true",
                        help="--predict: real capped tries here at the batch predicted for this adapter and 10%% more")
    parser.add_argument("--markdown", help="--predict: write the table here as well")
    parser.add_argument("--traces", help="--predict: keep the allocation traces in this folder, and use the ones "
                                           "already there instead of measuring again")
    args = parser.parse_args(argv)
    if args.profile == "none":
        args.profile = None
    combos = [(m, p) for m in args.models.split(",") for p in args.precisions.split(",")]
    if args.predict:
        return _predict_main(args, combos)
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
