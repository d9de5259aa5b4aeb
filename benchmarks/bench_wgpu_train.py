"""Training step time of the standard models on wgpu, native CUDA and the CPU, same machine, same run.

Each (device, model) pair runs in its own child process: PyTorch accepts one accelerator per process,
and registering the wgpu device makes CUDA autograd fail in that process. Every child builds the model
from the same seed and trains on the same synthetic batches; the parent checks that the first-step
losses agree (relative 1e-3) and that the loss goes down before it reports any time. fp32 throughout,
TF32 off on CUDA.

Devices: wgpu, cuda, cpu, and wgpu-graph / cuda-graph (the step captured once and replayed:
navitrain.wgpu.WgpuGraph / torch.cuda.CUDAGraph, optimizers in capturable mode), and wgpu-compile (the
unchanged step under torch.compile(backend="wgpu"): its graphs captured and replayed by
navitrain.wgpu.compile; the first step's time includes compiling).

    python benchmarks/bench_wgpu_train.py                           # resnet18, gpt on wgpu, cuda, cpu
    python benchmarks/bench_wgpu_train.py --devices wgpu,wgpu-graph,cuda,cuda-graph,cpu
    python benchmarks/bench_wgpu_train.py --models mlp --devices wgpu,cpu --quick
    python benchmarks/bench_wgpu_train.py --models lstm --devices wgpu,wgpu-graph,cuda,cuda-graph
    python benchmarks/bench_wgpu_train.py --devices wgpu,wgpu-compile,cuda
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

MODELS = {
    # name: (builder kwargs, batch function kwargs, batch size, quick overrides)
    "resnet18": ("cifar_resnet18", {"width": 64}, "cifar_batch", {"image_size": 32}, 128, "cifar_loss",
                 {"width": 8, "image_size": 16, "batch": 4}),
    "gpt": ("gpt_decoder", {"vocab": 4096, "context": 256, "d_model": 384, "layers": 6, "heads": 6},
            "gpt_batch", {"context": 256, "vocab": 4096}, 16, "gpt_loss",
            {"model": {"vocab": 64, "context": 16, "d_model": 32, "layers": 2, "heads": 2},
             "data": {"context": 16, "vocab": 64}, "batch": 4}),
    "mlp": ("mlp", {"in_features": 784, "hidden": (1024, 1024)}, "mlp_batch", {"in_features": 784}, 512, "mlp_loss",
            {"model": {"in_features": 64, "hidden": (64,)}, "data": {"in_features": 64}, "batch": 16}),
    # PyTorch's word_language_model (medium LSTM: 2 x 650, bptt 35, batch 20), next to cuDNN's LSTM.
    "lstm": ("lstm_lm", {"vocab": 10000, "d_model": 650, "layers": 2}, "gpt_batch", {"context": 35, "vocab": 10000},
             20, "gpt_loss", {"model": {"vocab": 64, "d_model": 16, "layers": 2}, "data": {"context": 8, "vocab": 64},
                              "batch": 4}),
    # PyTorch's word_language_model Transformer at base size (6 x 512, 8 heads, ff 2048), context 128, b16.
    "tlm": ("transformer_lm", {"vocab": 10000, "context": 128}, "gpt_batch", {"context": 128, "vocab": 10000},
            16, "gpt_loss", {"model": {"vocab": 64, "d_model": 32, "heads": 2, "feedforward": 64, "layers": 2,
                                       "context": 16}, "data": {"context": 16, "vocab": 64}, "batch": 4}),
    "unet": ("unet_small", {"width": 32}, "unet_batch", {"image_size": 128}, 16, "unet_loss",
             {"width": 8, "image_size": 16, "batch": 2}),
}


def worker(device: str, model_name: str, steps: int, warmup: int, quick: bool, out: str) -> None:
    import torch

    # "wgpu-graph" / "cuda-graph": the same step captured once (navitrain.wgpu.WgpuGraph /
    # torch.cuda.CUDAGraph) and replayed, with the optimizer in capturable mode.
    graphed = device.endswith("-graph")
    compiled = device == "wgpu-compile"
    device = device.removesuffix("-graph").removesuffix("-compile")
    if device == "wgpu":
        import navitrain.wgpu as nw  # noqa: F401
    if device == "cuda" and not os.environ.get("NAVITRAIN_BENCH_TF32"):
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    if device == "cpu" and int(os.environ.get("NAVITRAIN_BENCH_CPU_THREADS", "0")):
        torch.set_num_threads(int(os.environ["NAVITRAIN_BENCH_CPU_THREADS"]))
    from navitrain.bench import models

    build, mkw, batch_fn, bkw, batch, loss_name, q = MODELS[model_name]
    if quick:
        if "model" in q:
            mkw, bkw = dict(q["model"]), dict(q["data"])
        else:
            mkw = {"width": q["width"]}
            bkw = {"image_size": q["image_size"]}
        batch = q["batch"]
    torch.manual_seed(0)
    model = getattr(models, build)(**mkw).to(device)
    loss_fn = getattr(models, loss_name)
    batches = [getattr(models, batch_fn)(batch, **bkw, seed=s) for s in range(warmup + steps)]
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9) if model_name == "resnet18" else \
        torch.optim.AdamW(model.parameters(), lr=1e-3, capturable=graphed)  # compiled: as a script makes it

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()
        elif device == "wgpu":
            import navitrain.wgpu as nw

            nw.synchronize()

    step = models.train_step(model, opt, loss_fn)
    if compiled:
        import navitrain.wgpu.compile as wc

        step = torch.compile(step, backend="wgpu")

    if graphed:
        return graphed_worker(device, model_name, batch, batches, step, sync, warmup, steps, out)
    losses = []
    t_first = time.perf_counter()
    for i in range(warmup):
        x, y = (t.to(device) for t in batches[i])
        losses.append(step(x, y).item())
        if i == 0:
            first_step_s = time.perf_counter() - t_first
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    step_times, host_times = [], []
    for i in range(warmup, warmup + steps):
        x, y = (t.to(device) for t in batches[i])
        sync()
        t0 = time.perf_counter()
        loss = step(x, y)
        host_times.append(time.perf_counter() - t0)  # recording only: the GPU may still be busy
        sync()
        step_times.append(time.perf_counter() - t0)
        losses.append(loss.item())
    profile = None
    if device == "wgpu" and os.environ.get("NAVITRAIN_BENCH_PROFILE"):
        import navitrain.wgpu as nw

        x, y = (t.to(device) for t in batches[-1])
        with nw.profile() as table:
            step(x, y)
        profile = sorted(((v[1] * 1e3, v[0], k) for k, v in table.items()), reverse=True)
    peak = None
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated()
    elif device == "wgpu":
        import navitrain.wgpu as nw

        peak = nw.max_memory_allocated()
        fallbacks = nw.fallback_report()
    result = {"device": device + ("-compile" if compiled else ""), "model": model_name, "batch": batch,
              "losses": losses, "step_ms": [t * 1e3 for t in step_times],
              "median_ms": statistics.median(step_times) * 1e3, "host_ms": statistics.median(host_times) * 1e3,
              "first_step_s": first_step_s, "peak_bytes": peak, "threads": torch.get_num_threads()}
    if compiled:
        result["compile_stats"] = dict(wc.stats)  # eager runs, captures and replays of the compiled graphs
    if profile:
        result["profile_top_ms"] = profile[:40]
        kinds = {}
        for ms, count, name in profile:
            kind = name.split("@")[0].split("_")[0]
            total = kinds.setdefault(kind, [0.0, 0])
            total[0] += ms
            total[1] += count
        result["profile_kinds_ms"] = kinds
    if device == "wgpu":
        result["fallbacks"] = fallbacks
        result["adapter"] = nw.adapter_info()["name"]
    Path(out).write_text(json.dumps(result))


REPLAY_WARMUP = 10


def graphed_worker(device, model_name, batch, batches, step, sync, warmup, steps, out):
    """Warm up eagerly on static input tensors, capture one step, then time replays with each new
    batch copied into the static inputs (the copy is outside the timed region, as the other devices'
    .to(device) is)."""
    import torch

    sx, sy = (t.to(device) for t in batches[0])
    losses = []
    t_first = time.perf_counter()
    if device == "cuda":
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for i in range(warmup):
                sx.copy_(batches[i][0])
                sy.copy_(batches[i][1])
                losses.append(step(sx, sy).item())
        torch.cuda.current_stream().wait_stream(side)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            static_loss = step(sx, sy)
    else:
        import navitrain.wgpu as nw

        for i in range(warmup):
            sx.copy_(batches[i][0])
            sy.copy_(batches[i][1])
            losses.append(step(sx, sy).item())
        g = nw.WgpuGraph()
        with nw.graph(g):
            static_loss = step(sx, sy)
    first_step_s = time.perf_counter() - t_first
    # Untimed replays first: on the H200 the first ~7 wgpu replays after capture ran at 2-3x the
    # steady step time (36-60 ms, then 19-21 ms; run 10), whichever commit ran, as the GPU came up
    # to speed -- a median over 10 steps from a cold start measured that ramp, not the step.
    for _ in range(REPLAY_WARMUP):
        g.replay()
    sync()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    step_times, host_times = [], []
    for i in range(warmup, warmup + steps):
        sx.copy_(batches[i][0])
        sy.copy_(batches[i][1])
        sync()
        t0 = time.perf_counter()
        g.replay()
        # replay() itself: for wgpu, encoding every captured dispatch again and submitting; when this
        # is close to the step time, the replay is host-bound rather than GPU-bound
        host_times.append(time.perf_counter() - t0)
        sync()
        step_times.append(time.perf_counter() - t0)
        losses.append(static_loss.item())
    result = {"device": device + "-graph", "model": model_name, "batch": batch, "losses": losses,
              "step_ms": [t * 1e3 for t in step_times], "median_ms": statistics.median(step_times) * 1e3,
              "host_ms": statistics.median(host_times) * 1e3, "first_step_s": first_step_s,
              "threads": torch.get_num_threads()}
    if device == "cuda":
        result["peak_bytes"] = torch.cuda.max_memory_allocated()
    else:
        import navitrain.wgpu as nw

        result["peak_bytes"] = nw.max_memory_allocated()
        result["fallbacks"] = nw.fallback_report()
        result["adapter"] = nw.adapter_info()["name"]
        result["dispatches_per_step"] = g.dispatch_count
    Path(out).write_text(json.dumps(result))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="resnet18,gpt")
    ap.add_argument("--devices", default="wgpu,cuda,cpu")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--cpu-steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--cpu-threads", type=int, default=0, help="torch threads for the CPU runs (0: torch's default)")
    ap.add_argument("--quick", action="store_true", help="tiny models (smoke test)")
    ap.add_argument("--timeout", type=int, default=900, help="seconds per child")
    ap.add_argument("--json", help="write all results here")
    ap.add_argument("--tf32", action="store_true",
                    help="CUDA with PyTorch's defaults (cuDNN TF32 convolutions on), as `navitrain bench` measures it, "
                         "instead of fp32 throughout")
    ap.add_argument("--worker", nargs=3, metavar=("DEVICE", "MODEL", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        device, model, out = args.worker
        steps = args.cpu_steps if device == "cpu" else args.steps
        worker(device, model, steps, args.warmup if device != "cpu" else 1, args.quick, out)
        return None

    results = []
    env = dict(os.environ)
    if args.cpu_threads:
        env["NAVITRAIN_BENCH_CPU_THREADS"] = str(args.cpu_threads)
    if args.tf32:
        env["NAVITRAIN_BENCH_TF32"] = "1"
    for model in args.models.split(","):
        for device in args.devices.split(","):
            out = f"/tmp/bench_train_{device}_{model}_{os.getpid()}.json"
            cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", device, model, out,
                   "--steps", str(args.steps), "--cpu-steps", str(args.cpu_steps), "--warmup", str(args.warmup)]
            if args.quick:
                cmd.append("--quick")
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.timeout)
            if proc.returncode != 0 or not Path(out).exists():
                tail = (proc.stderr or proc.stdout)[-1500:]
                print(f"[{model} on {device}] failed (exit {proc.returncode}):\n{tail}")
                results.append({"device": device, "model": model, "error": tail})
                continue
            r = json.loads(Path(out).read_text())
            r["wall_s"] = time.perf_counter() - t0
            results.append(r)
            print(f"[{model} on {device}] median step {r['median_ms']:.1f} ms (host recording {r['host_ms']:.1f} ms), "
                  f"first step {r['first_step_s']:.1f} s, losses {r['losses'][0]:.4f} -> {r['losses'][-1]:.4f}",
                  flush=True)
            if "profile_kinds_ms" in r:
                total = sum(v[0] for v in r["profile_kinds_ms"].values())
                by_time = sorted(r["profile_kinds_ms"].items(), key=lambda kv: -kv[1][0])
                print(f"    GPU time by kernel kind, {total:.1f} ms in all: " + ", ".join(
                    f"{k} {v[0]:.1f} ms/{v[1]}x" for k, v in by_time))
            for ms, count, name in r.get("profile_top_ms", [])[:25]:
                print(f"    {ms:8.2f} ms {count:4d}x {name}")
    report(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return results


def report(results):
    by_model = {}
    for r in results:
        by_model.setdefault(r["model"], {})[r["device"]] = r
    print()
    print(f"{'model':9} {'device':10} {'batch':>5} {'step ms':>9} {'vs cuda':>8} {'vs cpu':>8} {'peak MiB':>9} "
          f"{'first-step loss':>16} {'valid':>6}")
    for model, devs in by_model.items():
        ref = devs.get("cpu") or devs.get("cuda")
        for device, r in devs.items():
            if "error" in r:
                print(f"{model:9} {device:10} {'':>5} {'failed':>9}")
                continue
            valid = all(abs(v) < float("inf") for v in r["losses"])   # finite (NaN fails the comparison)
            if ref is not None and "losses" in ref:
                valid = valid and abs(r["losses"][0] - ref["losses"][0]) <= 1e-3 * max(1.0, abs(ref["losses"][0]))
            if device.startswith("wgpu") and r.get("fallbacks", {}).get("total_fallback_calls"):
                valid = False
            vs_cuda = (r["median_ms"] / devs["cuda"]["median_ms"]
                       if "cuda" in devs and "median_ms" in devs["cuda"] else None)
            vs_cpu = devs["cpu"]["median_ms"] / r["median_ms"] if "cpu" in devs and "median_ms" in devs["cpu"] else None
            peak = f"{r['peak_bytes'] / 2**20:.0f}" if r.get("peak_bytes") else "-"
            print(f"{model:9} {device:10} {r['batch']:>5} {r['median_ms']:>9.1f} "
                  f"{(f'{vs_cuda:.2f}x' if vs_cuda else '-'):>8} {(f'{vs_cpu:.1f}x' if vs_cpu else '-'):>8} {peak:>9} "
                  f"{r['losses'][0]:>16.5f} {str(valid):>6}")
    print("vs cuda: step time / native CUDA step time (lower is better); vs cpu: CPU step time / this step time")


if __name__ == "__main__":
    main()
