"""How much of PyTorch's OpInfo database runs on the wgpu device, and how much of it only via the CPU.

    python benchmarks/opinfo_coverage.py                      # everything: 5 dtypes, forward and gradients
    python benchmarks/opinfo_coverage.py --dtypes float32 --no-grad --jobs 1
    python benchmarks/opinfo_coverage.py --ops softmax,conv --merge   # rerun some ops into the stored table

Every OpInfo entry (torch.testing._internal.common_methods_invocations.op_db) runs up to --samples sample
inputs on wgpu and on the CPU, per dtype and mode (forward; gradients of float dtypes), compared strictly
(float32 atol=rtol=1e-4). Items run in child processes (benchmarks/_coverage_child.py), a chunk at a
time, so an abort ("terminate called without an active exception"), a segfault or a hang is recorded as
"crash" for the item that caused it and the rest of the chunk continues in a fresh child. navitrain's
CPU-fallback counter tells "pass" from "fallback". Writes docs/coverage.md and docs/coverage.json
(only with --merge or --out-* when --ops/--quick select a subset).

float16 and bfloat16 are judged by the float64 rule where they differ from the CPU: PyTorch's CPU half
kernels often round intermediates to the dtype (or overflow in it), while wgpu computes in float32 and rounds
once, so the CPU's result is not always the better one. An output that differs from the CPU's beyond the
dtype's tolerance still passes if it is within that tolerance of the float64 result computed from the same
inputs upcast (rounded to the dtype) AND its largest error against that is no larger than the CPU's
(gradients: against float64 gradients of the same inputs and output gradients). Such
items keep status "pass" (or "fallback") but carry "float64_rule": {"wgpu_err", "cpu_err"} and the detail
"closer to float64 than the CPU: wgpu err X, CPU err Y"; the Markdown lists them in a table of their own and
counts them in the headline. Anything further from float64 stays a mismatch, with both errors in its detail
(benchmarks/_coverage_precision.py).
"""
from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import json
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from _coverage_report import STATUSES, headline, write_markdown  # noqa: E402

ALL_DTYPES = ("float32", "float16", "bfloat16", "int64", "bool")
QUICK_OPS = ("add", "mul", "softmax", "nn.functional.conv2d", "sum", "cummax", "erfinv", "searchsorted")
CHUNK = 25  # items per child process: amortises the child's start (torch, op_db, adapter) of ~10 s


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ops", help="comma-separated substrings of OpInfo names (e.g. 'softmax,pool3d')")
    p.add_argument("--dtypes", default=",".join(ALL_DTYPES), help=f"comma-separated, of {','.join(ALL_DTYPES)}")
    p.add_argument("--no-grad", action="store_true", help="forward only")
    p.add_argument("--jobs", type=int, default=1, help="child processes at once (each opens the GPU)")
    p.add_argument("--samples", type=int, default=3, help="sample inputs per op, dtype and mode")
    p.add_argument("--timeout", type=float, default=180, help="seconds one item may take before it is a crash")
    p.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK_OPS)}")
    p.add_argument("--merge", action="store_true", help="keep stored results of items not rerun")
    p.add_argument("--rerun-failing", action="store_true",
                   help="rerun only the stored items that did not pass (implies --merge)")
    p.add_argument("--out-md", type=Path, help="default docs/coverage.md")
    p.add_argument("--out-json", type=Path, help="default docs/coverage.json")
    p.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    return p.parse_args(argv)


def plan(args) -> list[list[str]]:
    """[op_key, dtype, mode] for every item the CPU supports (others are not counted at all)."""
    import torch
    from _coverage_child import DTYPES, op_key, op_table

    wanted = [w for w in (args.ops or "").split(",") if w]
    items = []
    for key, op in op_table().items():
        if args.quick and key not in QUICK_OPS or wanted and not any(w in key for w in wanted):
            continue
        forward = op.supported_dtypes("cpu")
        backward = op.supported_backward_dtypes("cpu") if op.supports_autograd else set()
        for name in args.dtypes.split(","):
            dtype = DTYPES[name]
            if dtype in forward:
                items.append([op_key(op), name, "forward"])
            if not args.no_grad and dtype.is_floating_point and dtype in backward and dtype != torch.bool:
                items.append([op_key(op), name, "grad"])
    return items


def _reader(stream, q):
    for line in stream:
        q.put(line)
    q.put(None)


def run_chunk(items, args, progress) -> tuple[list[dict], dict]:
    """Run items in children; a child that dies or hangs costs the item it was on, not the rest."""
    results, adapter, pending = [], {}, list(items)
    while pending:
        child = subprocess.Popen([sys.executable, str(HERE / "_coverage_child.py")], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
        child.stdin.write(json.dumps({"items": pending, "samples": args.samples}))
        child.stdin.close()
        out_q, err_lines = queue.Queue(), []
        threading.Thread(target=_reader, args=(child.stdout, out_q), daemon=True).start()
        threading.Thread(target=lambda: err_lines.extend(child.stderr), daemon=True).start()
        current, done = None, 0
        deadline = time.monotonic() + args.timeout + 60  # the child's start counts against its first item
        crash = None
        while True:
            try:
                line = out_q.get(timeout=max(1.0, deadline - time.monotonic()))
            except queue.Empty:
                crash = f"no result within {args.timeout:.0f} s (killed)"
                child.kill()
                break
            if line is None:
                break
            msg = json.loads(line)
            if "adapter" in msg:
                adapter = msg["adapter"]
            elif "start" in msg:
                current = msg["start"]
                deadline = time.monotonic() + args.timeout
            elif "result" in msg:
                key, dtype, mode = pending[current]
                results.append({"op": key, "dtype": dtype, "mode": mode, **msg["result"]})
                progress(results[-1])
                done = current + 1
                current = None
        child.wait()
        if current is None and done == len(pending):
            break
        if current is None:  # died between items (e.g. at start-up): blame the next one
            current = done
        tail = "".join(err_lines[-5:]).strip()[-300:]
        detail = crash or f"child exited with {child.returncode}: {tail or 'no message'}"
        key, dtype, mode = pending[current]
        results.append({"op": key, "dtype": dtype, "mode": mode, "status": "crash", "detail": detail})
        progress(results[-1])
        pending = pending[current + 1:]
    return results, adapter


def dump(report: dict) -> str:
    """JSON with one result per line: small, and a rerun's diff shows the items that changed."""
    head = {k: v for k, v in report.items() if k != "results"}
    lines = [json.dumps(r, default=str, sort_keys=True) for r in report["results"]]
    return json.dumps(head, indent=1, default=str)[:-2] + ',\n "results": [\n' + ",\n".join(lines) + "\n ]\n}\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    args.merge = args.merge or args.rerun_failing
    subset = bool(args.ops or args.quick or args.rerun_failing)
    out_md = args.out_md or (None if subset and not args.merge else ROOT / "docs" / "coverage.md")
    out_json = args.out_json or (None if subset and not args.merge else ROOT / "docs" / "coverage.json")
    items = plan(args)
    if args.rerun_failing:
        stored = json.loads((out_json or ROOT / "docs" / "coverage.json").read_text())["results"]
        failing = {(r["op"], r["dtype"], r["mode"]) for r in stored if r["status"] not in ("pass", "n/a")}
        items = [i for i in items if tuple(i) in failing]
    print(f"{len(items)} items (op, dtype, mode) in chunks of {CHUNK}, {args.jobs} at a time", file=sys.stderr)
    started, done, lock = time.monotonic(), [0], threading.Lock()

    def progress(r):
        with lock:
            done[0] += 1
            print(f"[{done[0]}/{len(items)} {time.monotonic() - started:6.0f}s] {r['op']} {r['dtype']} {r['mode']}: "
                  f"{r['status']}" + (f" ({r['detail'][:120]})" if (r["status"] != "pass" or r.get("float64_rule"))
                                      and r.get("detail") else ""), file=sys.stderr, flush=True)

    chunks = [items[i:i + CHUNK] for i in range(0, len(items), CHUNK)]
    results, adapter = [], {}
    with concurrent.futures.ThreadPoolExecutor(max(1, args.jobs)) as pool:
        for chunk_results, chunk_adapter in pool.map(lambda c: run_chunk(c, args, progress), chunks):
            results += chunk_results
            adapter = chunk_adapter or adapter
    if args.merge and out_json and out_json.exists():
        stored = json.loads(out_json.read_text())
        rerun = {(r["op"], r["dtype"], r["mode"]) for r in results}
        results = [r for r in stored["results"] if (r["op"], r["dtype"], r["mode"]) not in rerun] + results
        adapter = adapter or stored.get("adapter", {})
    results.sort(key=lambda r: (r["op"], r["mode"], r["dtype"]))
    report = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "adapter": adapter, "samples": args.samples, "summary": headline(results), "results": results}
    if out_json:
        out_json.write_text(dump(report))
    if out_md:
        write_markdown(out_md, report)
    if args.json:
        print(json.dumps({k: report[k] for k in ("date", "adapter", "summary")}, indent=1))
    else:
        for mode_dtype, s in report["summary"].items():
            print(f"{mode_dtype:18s} " + " ".join(f"{k} {s[k]}" for k in STATUSES) + f"  pass {s['pass_pct']:.1f}%"
                  + (f" ({s['float64_rule']} by the float64 rule)" if s.get("float64_rule") else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
