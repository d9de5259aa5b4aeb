"""The torchvision model zoo (issue 23) training on wgpu (eager and captured graph) against native CUDA,
same machine, same run; plus a per-layer micro benchmark of depthwise convolutions.

Models: the issue's list from torchvision when it is installed (batch sizes of the OpenCL backend's
table, 224 px, SGD momentum, fp32, TF32 off); without torchvision, faithful definitions of the
depthwise-heavy ones written here (mobilenet_v2, mobilenet_v3_small, efficientnet_b0, convnext_small:
same layer shapes, activations, SE blocks and norms as torchvision's; stochastic depth left out).
Each (device, model) pair runs in its own child process; every child builds the model from the same
seed on the CPU and trains on the same synthetic batches; dropout is off so the first-step losses must
agree (relative 1e-3). The table gives each step time / CUDA's and the geometric means.

Layers: the depthwise layers of these models, forward / grad-input / grad-weight, as GB/s moved
(the bytes each pass must read and write at least) on wgpu's direct kernels (GPU time from timestamp
queries), wgpu's implicit GEMM (the route before conv_depthwise.py; only with --devices ...,wgpu-gemm) and
cuDNN (CUDA events).

    python benchmarks/bench_wgpu_zoo.py                                 # models + layers, wgpu vs cuda
    python benchmarks/bench_wgpu_zoo.py --models mobilenet_v2 --devices wgpu,wgpu-graph,cuda,cuda-graph
    python benchmarks/bench_wgpu_zoo.py --quick --devices wgpu,wgpu-graph   # lavapipe smoke test
    python benchmarks/bench_wgpu_zoo.py --models alexnet --devices wgpu --profile 25   # + GPU time per kernel
    python benchmarks/bench_wgpu_zoo.py --no-models --json out.json         # layers only
    python benchmarks/bench_wgpu_zoo.py --no-models --devices wgpu --layer-batch 2 --layer-match NHWC
        # the layers' shapes at batch 2 (they fit lavapipe's 128 MiB bindings), only the channels-last ones
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

# The OpenCL backend's table (issue 23) for the first ten; the last four are in its model list without a
# batch size in the issue, so these are ours: their family's batch (ResNet-50's as ResNeXt-50's, the wide one
# and MobileNetV3-Large at the batch that fits like their neighbours').
BATCH = {"regnet_y_400mf": 64, "resnext50_32x4d": 32, "densenet161": 16, "vgg16": 16, "resnet18": 64,
         "alexnet": 64, "mobilenet_v3_small": 64, "convnext_small": 16, "efficientnet_b0": 32, "mobilenet_v2": 32,
         "resnet50": 32, "wide_resnet50_2": 16, "mobilenet_v3_large": 32, "mnasnet1_0": 32}
OWN = ("mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0", "convnext_small")


# ---------------------------------------------------------------------------------------------
# Model definitions used when torchvision is absent (layer for layer as torchvision builds them).
def _divisible(v, d=8):
    new = max(d, int(v + d / 2) // d * d)
    return new + d if new < 0.9 * v else new


def _own_model(name):
    import torch
    from torch import nn

    def cba(cin, cout, k, s=1, groups=1, act=nn.ReLU6):
        layers = [nn.Conv2d(cin, cout, k, s, (k - 1) // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
        return nn.Sequential(*layers, act()) if act else nn.Sequential(*layers)

    class SE(nn.Module):
        def __init__(self, c, squeeze, act, gate):
            super().__init__()
            self.fc1, self.fc2, self.act, self.gate = nn.Conv2d(c, squeeze, 1), nn.Conv2d(squeeze, c, 1), act(), gate()

        def forward(self, x):
            return x * self.gate(self.fc2(self.act(self.fc1(x.mean((2, 3), keepdim=True)))))

    class Block(nn.Module):   # inverted residual / MBConv
        def __init__(self, cin, exp, cout, k, s, act, se=None):
            super().__init__()
            layers = [cba(cin, exp, 1, act=act)] if exp != cin else []
            layers.append(cba(exp, exp, k, s, groups=exp, act=act))
            if se:
                layers.append(SE(exp, *se))
            layers.append(cba(exp, cout, 1, act=None))
            self.body, self.residual = nn.Sequential(*layers), s == 1 and cin == cout

        def forward(self, x):
            return x + self.body(x) if self.residual else self.body(x)

    if name == "mobilenet_v2":
        layers, cin = [cba(3, 32, 3, 2)], 32
        for t, c, n, s in [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                           (6, 160, 3, 2), (6, 320, 1, 1)]:
            for i in range(n):
                layers.append(Block(cin, cin * t, c, 3, s if i == 0 else 1, nn.ReLU6))
                cin = c
        layers.append(cba(cin, 1280, 1))
        head = [nn.Dropout(0.2), nn.Linear(1280, 1000)]
    elif name == "mobilenet_v3_small":
        RE, HS = nn.ReLU, nn.Hardswish
        layers, cin = [cba(3, 16, 3, 2, act=HS)], 16
        for k, exp, c, se, act, s in [(3, 16, 16, True, RE, 2), (3, 72, 24, False, RE, 2), (3, 88, 24, False, RE, 1),
                                      (5, 96, 40, True, HS, 2), (5, 240, 40, True, HS, 1), (5, 240, 40, True, HS, 1),
                                      (5, 120, 48, True, HS, 1), (5, 144, 48, True, HS, 1), (5, 288, 96, True, HS, 2),
                                      (5, 576, 96, True, HS, 1), (5, 576, 96, True, HS, 1)]:
            squeeze = (_divisible(exp // 4), nn.ReLU, nn.Hardsigmoid) if se else None
            layers.append(Block(cin, exp, c, k, s, act, squeeze))
            cin = c
        layers.append(cba(cin, 576, 1, act=HS))
        head = [nn.Linear(576, 1024), nn.Hardswish(), nn.Dropout(0.2), nn.Linear(1024, 1000)]
    elif name == "efficientnet_b0":
        layers, cin = [cba(3, 32, 3, 2, act=nn.SiLU)], 32
        for t, k, s, c, n in [(1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3),
                              (6, 5, 1, 112, 3), (6, 5, 2, 192, 4), (6, 3, 1, 320, 1)]:
            for i in range(n):
                layers.append(Block(cin, cin * t, c, k, s if i == 0 else 1, nn.SiLU,
                                    (max(1, cin // 4), nn.SiLU, nn.Sigmoid)))
                cin = c
        layers.append(cba(cin, 1280, 1, act=nn.SiLU))
        head = [nn.Dropout(0.2), nn.Linear(1280, 1000)]
    elif name == "convnext_small":
        class LayerNorm2d(nn.LayerNorm):
            def forward(self, x):
                return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

        class CNBlock(nn.Module):
            def __init__(self, dim):
                super().__init__()
                self.dw = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
                self.norm = nn.LayerNorm(dim, eps=1e-6)
                self.fc1, self.fc2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)
                self.scale = nn.Parameter(torch.full((dim, 1, 1), 1e-6))

            def forward(self, x):
                y = self.fc2(nn.functional.gelu(self.fc1(self.norm(self.dw(x).permute(0, 2, 3, 1)))))
                return x + self.scale * y.permute(0, 3, 1, 2)

        dims, depths = [96, 192, 384, 768], [3, 3, 27, 3]
        layers = [nn.Conv2d(3, 96, 4, 4), LayerNorm2d(96, eps=1e-6)]
        for i, (dim, depth) in enumerate(zip(dims, depths)):
            if i:
                layers += [LayerNorm2d(dims[i - 1], eps=1e-6), nn.Conv2d(dims[i - 1], dim, 2, 2)]
            layers += [CNBlock(dim) for _ in range(depth)]
        layers += [nn.AdaptiveAvgPool2d(1), LayerNorm2d(768, eps=1e-6)]
        return nn.Sequential(*layers, nn.Flatten(), nn.Linear(768, 1000))
    else:
        raise SystemExit(f"{name} needs torchvision, which is not installed here (own definitions: {', '.join(OWN)})")
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), *head)


def build(name):
    try:
        from _common import import_torchvision
        import_torchvision()
        import torchvision

        model = getattr(torchvision.models, name)(weights=None)
    except ImportError:
        model = _own_model(name)
    for m in model.modules():   # dropout and stochastic depth off: the first-step losses must agree
        if hasattr(m, "p") and isinstance(getattr(m, "p"), float):
            m.p = 0.0
    return model


# ---------------------------------------------------------------------------------------------
def model_worker(device, name, batch, size, steps, warmup, out, profile_top=0):
    """Time one model's training step on one device. "wgpu" with "wgpu-graph" requested together run in
    one child ("wgpu+graph"): the eager steps first, then the same step captured and replayed, so a
    shape's tile tuning (tuning on) and the model build are paid once. "wgpu-compile" is the unchanged
    step under torch.compile(backend="wgpu"). Writes a list of results."""
    import torch

    base = device.split("+")[0].split("-")[0]
    if base == "wgpu":
        import navitrain.wgpu as nw
    elif base == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    model = build(name).to(base)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 3, size, size, generator=gen).to(base)
    y = torch.randint(0, 1000, (batch,), generator=gen).to(base)

    def step(set_to_none=True):
        # Eager steps zero the gradients as a script does by default (set_to_none=True: backward assigns
        # them, no fill and no accumulating add per parameter); a captured step keeps them in place.
        opt.zero_grad(set_to_none=set_to_none)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss

    def sync():
        if base != "cpu":
            nw.synchronize() if base == "wgpu" else torch.cuda.synchronize()

    def counts():
        if base != "wgpu":
            return 0, 0
        from navitrain.wgpu.runtime import runtime
        return runtime().dispatch_count, runtime().submit_count

    def timed(run):
        """Median step and median host recording time (until run() returns, the GPU maybe still busy:
        a host time close to the step time means the step is host-bound), ms; dispatches and submits
        per step (wgpu)."""
        sync()
        times, host = [], []
        d0, s0 = counts()
        for _ in range(steps):
            t0 = time.perf_counter()
            run()
            host.append(time.perf_counter() - t0)
            sync()
            times.append(time.perf_counter() - t0)
        d1, s1 = counts()
        return {"median_ms": statistics.median(times) * 1e3, "host_ms": statistics.median(host) * 1e3,
                "dispatches_per_step": (d1 - d0) / steps, "submits_per_step": (s1 - s0) / steps}

    if device.endswith("-compile"):
        import navitrain.wgpu.compile  # noqa: F401  (registers the backend)
        step = torch.compile(step, backend="wgpu")
    t0 = time.perf_counter()
    first_loss = step().item()
    first_step_s = time.perf_counter() - t0
    for _ in range(warmup - 1):
        step()
    modes = ["eager", "graph"] if device.endswith("+graph") else [device.split("-")[1] if "-" in device else "eager"]
    results = []
    for mode in modes:
        run = step
        if mode == "graph":
            step_in_place = lambda: step(set_to_none=False)  # noqa: E731
            if base == "cpu":
                raise SystemExit("cpu has no captured graphs")
            if base == "wgpu":
                step_in_place()   # the gradients exist before the capture
                g = nw.WgpuGraph()
                with nw.graph(g):
                    step_in_place()
            else:
                side = torch.cuda.Stream()
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):
                    step_in_place()
                torch.cuda.current_stream().wait_stream(side)
                g = torch.cuda.CUDAGraph()
                with torch.cuda.graph(g):
                    step_in_place()
            run = g.replay
            for _ in range(3):
                run()
        name_of = base if mode == "eager" else f"{base}-{mode}"
        results.append({"device": name_of, "model": name, "batch": batch, "first_loss": first_loss,
                        "first_step_s": first_step_s, **timed(run)})
    if base == "wgpu" and profile_top:
        # one more eager step, each kernel timed alone (timestamp queries): where the GPU time goes
        from profile_step import kernel_rows

        nw.synchronize()
        with nw.profile() as table:
            step().item()
        results[0]["kernels"], results[0]["kernel_totals"] = kernel_rows(table), table.totals()
    if base == "wgpu":
        from navitrain.wgpu.kernels import gemm_tuning
        from navitrain.wgpu.runtime import runtime
        # what the first step's seconds went to: tuning (and its kernel compiles), all compiles
        tuning = {**gemm_tuning.tuning_summary(), "all_compiles": runtime().compile_count,
                  "all_compile_seconds": runtime().compile_seconds}
        for r in results:
            r["tuning"] = tuning
            r["fallbacks"] = nw.fallback_report().get("total_fallback_calls", 0)
            r["adapter"] = nw.adapter_info()["name"]
    Path(out).write_text(json.dumps(results))


# Depthwise layers of the models above at their batch sizes: (name, N, C, H, k, stride, channels_last).
LAYERS = [("mbv2 96@112 s2", 32, 96, 112, 3, 2, False), ("mbv2 144@56", 32, 144, 56, 3, 1, False),
          ("mbv2 192@28", 32, 192, 28, 3, 1, False), ("mbv2 576@14", 32, 576, 14, 3, 1, False),
          ("mbv2 960@7", 32, 960, 7, 3, 1, False), ("effb0 240@28 5x5", 32, 240, 28, 5, 1, False),
          ("effb0 672@14 5x5 s2", 32, 672, 14, 5, 2, False), ("convnext 96@56 7x7", 16, 96, 56, 7, 1, False),
          ("convnext 384@14 7x7", 16, 384, 14, 7, 1, False), ("convnext 96@56 7x7 NHWC", 16, 96, 56, 7, 1, True),
          ("mbv2 144@56 NHWC", 32, 144, 56, 3, 1, True)]
QUICK_LAYERS = [("3x3", 2, 8, 16, 3, 1, False), ("3x3 s2", 2, 8, 16, 3, 2, False), ("7x7 NHWC", 2, 8, 12, 7, 1, True)]


def layer_worker(device, quick, iters, out, batch=None, match=None):
    import torch

    if device.startswith("wgpu"):
        from _common import wgpu_gpu_time

        from navitrain.wgpu.kernels import conv_depthwise
    else:
        from _common import cuda_time
        torch.backends.cudnn.benchmark = True
        torch.backends.cudnn.allow_tf32 = False
    dev = "wgpu" if device.startswith("wgpu") else "cuda"
    F = torch.nn.functional
    results = []
    for name, N, C, H, k, s, cl in (QUICK_LAYERS if quick else LAYERS):
        if match and match not in name:
            continue
        N = batch or N
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(N, C, H, H, generator=gen)
        if cl:
            x = x.contiguous(memory_format=torch.channels_last)
        x, w = x.to(dev), torch.randn(C, 1, k, k, generator=gen).to(dev)
        y = F.conv2d(x, w, None, s, k // 2, groups=C)
        dy = torch.randn(y.shape, generator=gen).to(dev)
        if cl:
            dy = dy.contiguous(memory_format=torch.channels_last)
        conv_bwd = torch.ops.aten.convolution_backward.default
        passes = {
            "fwd": (lambda: F.conv2d(x, w, None, s, k // 2, groups=C), x.numel() + y.numel()),
            "dgrad": (lambda: conv_bwd(dy, x, w, None, [s, s], [k // 2] * 2, [1, 1], False, [0, 0], C,
                                       [True, False, False]), x.numel() + y.numel()),
            "wgrad": (lambda: conv_bwd(dy, x, w, None, [s, s], [k // 2] * 2, [1, 1], False, [0, 0], C,
                                       [False, True, False]), x.numel() + y.numel()),
        }
        row = {"layer": name}
        for pname, (fn, elems) in passes.items():
            if dev == "wgpu":
                if device == "wgpu-gemm":
                    with conv_depthwise.disabled():
                        seconds, _ = wgpu_gpu_time(fn, iters)
                else:
                    seconds, _ = wgpu_gpu_time(fn, iters)
            else:
                seconds = cuda_time(fn, iters)
            row[pname] = {"us": seconds * 1e6, "GBps": elems * 4 / seconds / 1e9}
        results.append(row)
    Path(out).write_text(json.dumps({"device": device, "layers": results}))


# ---------------------------------------------------------------------------------------------
def _child(args, extra, out, timeout):
    cmd = [sys.executable, str(Path(__file__).resolve())] + extra + ["--out", out]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"no result within {timeout} s"}
    if proc.returncode != 0 or not Path(out).exists():
        return {"error": (proc.stderr or proc.stdout)[-1500:]}
    return json.loads(Path(out).read_text())


def _child_runs(devices):
    """The children to start per model: wgpu eager and graph share one (see model_worker)."""
    runs = [d for d in devices if d not in ("wgpu", "wgpu-graph")]
    if "wgpu" in devices and "wgpu-graph" in devices:
        return ["wgpu+graph"] + runs
    return [d for d in devices if d in ("wgpu", "wgpu-graph")] + runs


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=None,
                    help=f"comma-separated (default: torchvision's list, else {','.join(OWN)})")
    ap.add_argument("--devices", default="wgpu,wgpu-graph,cuda,cuda-graph",
                    help="of wgpu, wgpu-graph, wgpu-compile, cuda, cuda-graph, cpu "
                         "(the loss and speed reference where no CUDA)")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=5,
                    help="untimed steps first (a fresh GPU machine's first 5-7 steps are slow)")
    ap.add_argument("--layer-iters", type=int, default=20)
    ap.add_argument("--no-models", action="store_true")
    ap.add_argument("--no-layers", action="store_true")
    ap.add_argument("--quick", action="store_true", help="64 px, batch 4, tiny layers (lavapipe smoke test)")
    ap.add_argument("--layer-batch", type=int, help="batch of every layer (default: its model's batch size)")
    ap.add_argument("--layer-match", help="only the layers whose name contains this")
    ap.add_argument("--timeout", type=int, default=1800, help="seconds per child")
    ap.add_argument("--json", help="write all results here")
    ap.add_argument("--profile", type=int, default=0, metavar="TOP",
                    help="after timing, profile one eager wgpu step per kernel and print its TOP kernels")
    ap.add_argument("--model-worker", nargs=2, metavar=("DEVICE", "MODEL"), help=argparse.SUPPRESS)
    ap.add_argument("--layer-worker", metavar="DEVICE", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    # --quick: 64 px, batch 4. At 32 px and batch 2 the last stages' BatchNorm sees 2 values per
    # channel and the loss is ill-conditioned: the CPU's own float32 and float64 first losses differ.
    size = 64 if args.quick else 224
    if args.model_worker:
        device, name = args.model_worker
        return model_worker(device, name, 4 if args.quick else BATCH[name], size, args.steps, args.warmup, args.out,
                            args.profile)
    if args.layer_worker:
        return layer_worker(args.layer_worker, args.quick, args.layer_iters, args.out,
                            args.layer_batch, args.layer_match)

    try:
        from _common import import_torchvision
        import_torchvision()
        default_models = list(BATCH)
    except ImportError:
        default_models = list(OWN)
        print("torchvision is not installed: the models are this file's own definitions")
    models = args.models.split(",") if args.models else default_models
    devices = args.devices.split(",")
    import torch

    if not torch.cuda.is_available() and any(d.startswith("cuda") for d in devices):
        print("no CUDA here: the cuda devices are left out")
        devices = [d for d in devices if not d.startswith("cuda")]
    flags = ["--steps", str(args.steps), "--warmup", str(args.warmup), "--layer-iters", str(args.layer_iters)]
    flags += ["--quick"] if args.quick else []
    flags += ["--profile", str(args.profile)] if args.profile else []
    flags += ["--layer-batch", str(args.layer_batch)] if args.layer_batch else []
    flags += ["--layer-match", args.layer_match] if args.layer_match else []
    tmp = f"/tmp/bench_zoo_{os.getpid()}"
    results = {"models": [], "layers": []}
    if not args.no_models:
        for name in models:
            for run in _child_runs(devices):
                rows = _child(args, ["--model-worker", run, name] + flags, f"{tmp}_{run}_{name}.json", args.timeout)
                if isinstance(rows, dict):   # an error: one row per device this child was to measure
                    rows = [dict(rows, device=d) for d in (["wgpu", "wgpu-graph"] if run == "wgpu+graph" else [run])]
                for r in rows:
                    r.setdefault("model", name)
                    results["models"].append(r)
                    print(f"[{name} on {r['device']}] " + (
                        f"{r['median_ms']:.1f} ms (host recording {r['host_ms']:.1f} ms"
                        + (f", {r['dispatches_per_step']:.0f} dispatches, {r['submits_per_step']:.0f} submits"
                           if r.get("dispatches_per_step") else "")
                        + f"), first loss {r['first_loss']:.5f}, first step {r['first_step_s']:.1f} s"
                        + (" (tuning {seconds:.1f} s for {shapes} shapes, {compile_seconds:.1f} s of it compiling "
                           "{compiles} kernels; {all_compiles} kernels compiled in {all_compile_seconds:.1f} s)"
                           .format(**r["tuning"]) if r.get("tuning") else "")
                        if "error" not in r else "failed:\n" + r["error"]), flush=True)
                    if r.get("kernels"):
                        from profile_step import print_table

                        print_table(f"{name} (batch {r['batch']}), one eager step, kernels by GPU time:",
                                    r["kernels"], r["kernel_totals"], args.profile)
        report_models(results["models"], devices)
    if not args.no_layers:
        kinds = {x.split("-")[0] for x in devices}
        # wgpu-gemm (depthwise layers through the implicit GEMM: up to 100x slower) only when asked for
        layer_devices = [d for d in ("wgpu", "wgpu-gemm", "cuda")
                         if d in devices or (d != "wgpu-gemm" and d.split("-")[0] in kinds)]
        for device in layer_devices:
            r = _child(args, ["--layer-worker", device] + flags, f"{tmp}_layers_{device}.json", args.timeout)
            r.setdefault("device", device)
            results["layers"].append(r)
            if "error" in r:
                print(f"[layers on {device}] failed:\n{r['error']}")
        report_layers(results["layers"])
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return results


def report_models(rows, devices):
    by_model = {}
    for r in rows:
        by_model.setdefault(r["model"], {})[r["device"]] = r
    ref_name = "cuda" if "cuda" in devices else "cpu"
    print(f"\n{'model':20} {'batch':>5} " + " ".join(f"{d + ' ms':>15}" for d in devices)
          + f"  ratios vs {ref_name} eager, loss check")
    ratios = {}
    for name, devs in by_model.items():
        cuda = devs.get(ref_name, {})
        cells, notes = [], []
        for d in devices:
            r = devs.get(d, {})
            cells.append(f"{r['median_ms']:>15.1f}" if "median_ms" in r else f"{'failed':>15}")
            if "median_ms" in r and "median_ms" in cuda and d.startswith("wgpu"):
                ratio = r["median_ms"] / cuda["median_ms"]
                ratios.setdefault(d, []).append(ratio)
                ok = abs(r["first_loss"] - cuda["first_loss"]) <= 1e-3 * max(1.0, abs(cuda["first_loss"]))
                notes.append(f"{d} {ratio:.2f}x{'' if ok else ' LOSS DIFFERS'}"
                             f"{' FALLBACKS ' + str(r['fallbacks']) if r.get('fallbacks') else ''}")
        batch = next((r["batch"] for r in devs.values() if "batch" in r), "")
        print(f"{name:20} {batch:>5} " + " ".join(cells) + "  " + ", ".join(notes))
    for d, rs in ratios.items():
        gm = math.exp(sum(map(math.log, rs)) / len(rs))
        print(f"geometric mean {d} / {ref_name}: {gm:.2f}x ({100 / gm:.0f}% of its speed) over {len(rs)} models")


def report_layers(rows):
    ok = [r for r in rows if "layers" in r]
    if not ok:
        return
    columns = (f"{r['device'] + ' ' + p:>17}" for p in ("fwd", "dgrad", "wgrad") for r in ok)
    print(f"\n{'depthwise layer (us / GB/s)':26} " + " ".join(columns))
    for i, layer in enumerate(ok[0]["layers"]):
        cells = []
        for p in ("fwd", "dgrad", "wgrad"):
            for r in ok:
                v = r["layers"][i][p]
                cells.append(f"{v['us']:>9.1f} /{v['GBps']:>6.1f}")
        print(f"{layer['layer']:26} " + " ".join(cells))
    print("GB/s: the input and output images each pass must move at least, over its GPU time")


if __name__ == "__main__":
    main()
