"""Data-parallel scaling, shared by ddp_wgpu.py and ddp_nomiopen.py: steps per second of one process
against N processes under DistributedDataParallel, in the same run.

Each process trains on its own fixed batch of the per-GPU size (weak scaling, as data-parallel
training is used), so N processes do N times the work per step. The ratio printed is
throughput(N) / throughput(1) = N * steps/s(N) / steps/s(1); the ideal is N. The N-process time is
the slowest rank's. Routes differ only in how a process gets its device and which backend it uses.
"""
from __future__ import annotations

import json
import os
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

# name: (builder, builder kwargs, batch fn, batch kwargs, per-process batch, loss, optimizer, tiny overrides)
MODELS = {
    "resnet18": ("cifar_resnet18", {"width": 64}, "cifar_batch", {"image_size": 32}, 128, "cifar_loss", "sgd",
                 {"model": {"width": 4}, "data": {"image_size": 16}, "batch": 8}),
    "gpt": ("gpt_decoder", {"vocab": 4096, "context": 256, "d_model": 384, "layers": 6, "heads": 6}, "gpt_batch",
            {"context": 256, "vocab": 4096}, 16, "gpt_loss", "adamw",
            {"model": {"vocab": 64, "context": 16, "d_model": 32, "layers": 2, "heads": 2},
             "data": {"context": 16, "vocab": 64}, "batch": 4}),
}


@dataclass(frozen=True)
class Route:
    name: str
    backend: str                                   # torch.distributed backend for N > 1
    setup: Callable[[int], torch.device]           # local rank -> this process's device (module-level fn)
    sync: Callable[[torch.device], None]           # wait for the device's queued work


def _worker(rank: int, world: int, port: int, route: Route, model_name: str, args, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    from navitrain.bench import models

    device = route.setup(rank)
    build, mkw, batch_fn, bkw, batch, loss_name, opt_name, tiny = MODELS[model_name]
    if args.tiny:
        mkw, bkw, batch = {**mkw, **tiny["model"]}, {**bkw, **tiny["data"]}, tiny["batch"]
    torch.manual_seed(0)
    model = getattr(models, build)(**mkw).to(device)
    if world > 1:
        dist.init_process_group(route.backend, rank=rank, world_size=world, timeout=timedelta(seconds=args.timeout))
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    opt = (torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9) if opt_name == "sgd"
           else torch.optim.AdamW(model.parameters(), lr=1e-4))
    loss_fn = getattr(models, loss_name)
    x, y = (t.to(device) for t in getattr(models, batch_fn)(batch, **bkw, seed=rank))

    def step():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        return loss

    for _ in range(args.warmup):
        step()
    loss = float(step().detach())   # a read-back: every rank has finished its warm-up
    route.sync(device)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    route.sync(device)
    seconds = time.perf_counter() - t0
    if world > 1:
        slowest = torch.tensor([seconds], dtype=torch.float32, device=device)
        dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
        seconds = float(slowest)
        dist.destroy_process_group()
    if rank == 0:
        Path(out).write_text(json.dumps({"seconds": seconds, "steps": args.steps, "batch": batch, "loss": loss,
                                         "device": str(device)}))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(route: Route, model_name: str, world: int, args) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "rank0.json")
        mp.spawn(_worker, args=(world, _free_port(), route, model_name, args, out), nprocs=world, join=True)
        result = json.loads(Path(out).read_text())
    result["steps_per_s"] = result["steps"] / result["seconds"]
    return result


def add_arguments(parser) -> None:
    parser.add_argument("--models", default="resnet18,gpt", help="comma-separated: " + ", ".join(MODELS))
    parser.add_argument("--world", type=int, default=2, help="processes to compare with one (default 2)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (compiling, tuning)")
    parser.add_argument("--tiny", action="store_true", help="tiny models and batches (CPU, lavapipe, CI)")
    parser.add_argument("--timeout", type=float, default=600, help="process group timeout in seconds")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")


def run(route: Route, args, note: str) -> int:
    rows = []
    for model_name in args.models.split(","):
        if model_name not in MODELS:
            print(f"unknown model {model_name!r}: use {', '.join(MODELS)}", file=sys.stderr)
            return 2
        one = measure(route, model_name, 1, args)
        many = measure(route, model_name, args.world, args)
        ratio = args.world * many["steps_per_s"] / one["steps_per_s"]
        rows.append({"model": model_name, "batch_per_process": one["batch"], "steps": args.steps,
                     "steps_per_s_1": one["steps_per_s"], f"steps_per_s_{args.world}": many["steps_per_s"],
                     "world": args.world, "scaling": ratio, "devices": [one["device"], many["device"]]})
    summary = {"route": route.name, "backend": route.backend, "tiny": args.tiny, "measured": note, "results": rows}
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"{route.name}: DDP over {route.backend}, {args.steps} timed steps after {args.warmup} warm-up; {note}")
    for r in rows:
        many = r[f"steps_per_s_{args.world}"]
        print(f"  {r['model']:9s} batch {r['batch_per_process']:4d}/process  1 process {r['steps_per_s_1']:8.3f} "
              f"steps/s  {args.world} processes {many:8.3f} steps/s each  "
              f"scaling {r['scaling']:.2f}x (ideal {args.world}x)  on {', '.join(r['devices'])}")
    return 0
