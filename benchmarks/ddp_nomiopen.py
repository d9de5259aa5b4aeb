#!/usr/bin/env python3
"""Does the nomiopen route train correctly under DistributedDataParallel (one process per GPU)?

Each process enables the route, trains a small CNN (3x3, grouped/strided, 1x1, depthwise and
transposed convolutions; GroupNorm so samples stay independent) for a few SGD steps on its share
of a fixed global batch under DDP, and also trains an identical single-process copy on the whole
global batch. DDP's averaged gradients equal the full-batch gradient, so the losses and the final
weights must agree to float32 rounding. Rank 0 prints the comparison and PASS or FAIL (exit 1).

    torchrun --nproc_per_node=2 benchmarks/ddp_nomiopen.py             # GPUs, NCCL/RCCL
    python benchmarks/ddp_nomiopen.py --spawn 2                         # the same without torchrun
    python benchmarks/ddp_nomiopen.py --spawn 2 --device cpu            # CPU, gloo (route on the CPU key)

With --bench it measures data-parallel scaling instead (benchmarks/_ddp_scaling.py): steps/s of CIFAR
ResNet-18 (batch 128 per GPU) and the GPT decoder, one process against N, in the same run:

    python benchmarks/ddp_nomiopen.py --bench                           # 1 vs 2 GPUs, NCCL/RCCL
    python benchmarks/ddp_nomiopen.py --bench --device cpu --tiny       # dry run on the CPU, gloo
"""
from __future__ import annotations

import argparse
import copy
import os
import socket
import sys
from pathlib import Path

try:
    import navitrain  # noqa: F401
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn
import torch.nn.functional as F

import navitrain.routes.nomiopen as nomiopen
from navitrain.nomiopen_conv import policy

LOSS_RTOL = 1e-4
WEIGHT_RTOL = 1e-4


def small_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.GroupNorm(4, 16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1), nn.GroupNorm(4, 32), nn.ReLU(),
        nn.Conv2d(32, 32, 3, stride=2, padding=1, groups=4), nn.ReLU(),
        nn.Conv2d(32, 64, 1), nn.ReLU(),
        nn.Conv2d(64, 64, 3, padding=1, groups=64), nn.ReLU(),
        nn.ConvTranspose2d(64, 32, 2, stride=2), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))


def batches(steps: int, global_batch: int, size: int):
    g = torch.Generator().manual_seed(1234)
    return [(torch.randn(global_batch, 3, size, size, generator=g), torch.randint(0, 10, (global_batch,), generator=g))
            for _ in range(steps)]


def train(model, data, device, rank=0, world=1):
    """SGD steps; returns the loss of each step (averaged over ranks when distributed)."""
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for x, y in data:
        per_rank = x.shape[0] // world
        x, y = x[rank * per_rank:(rank + 1) * per_rank].to(device), y[rank * per_rank:(rank + 1) * per_rank].to(device)
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        loss = loss.detach()
        if world > 1:
            dist.all_reduce(loss)
            loss /= world
        losses.append(float(loss))
    return losses


def run(rank: int, world: int, local_rank: int, args) -> bool:
    device = torch.device("cuda", local_rank) if args.device == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=world)
    ok = True
    try:
        torch.backends.cuda.matmul.allow_tf32 = False
        nomiopen.enable("CUDA" if device.type == "cuda" else "CPU")
        data = batches(args.steps, args.batch * world, args.size)
        torch.manual_seed(0)
        base = small_cnn()
        for impl in args.impl.split(","):
            with policy.use_policy(impl):
                calls_before = sum(nomiopen.stats().values())
                single = copy.deepcopy(base).to(device)
                ref_losses = train(single, data, device)
                ddp = nn.parallel.DistributedDataParallel(
                    copy.deepcopy(base).to(device), device_ids=[local_rank] if device.type == "cuda" else None)
                ddp_losses = train(ddp, data, device, rank, world)
                calls = sum(nomiopen.stats().values()) - calls_before
            loss_err = max(abs(a - b) / abs(b) for a, b in zip(ddp_losses, ref_losses))
            weight_err = max(float((p.detach() - q.detach()).abs().max() / q.detach().abs().max().clamp_min(1e-12))
                             for p, q in zip(ddp.module.parameters(), single.parameters()))
            passed = loss_err <= LOSS_RTOL and weight_err <= WEIGHT_RTOL and calls > 0
            verdict = torch.tensor([1.0 if passed else 0.0], device=device)
            dist.all_reduce(verdict, op=dist.ReduceOp.MIN)
            passed = bool(verdict.item())
            ok = ok and passed
            if rank == 0:
                print(f"policy {impl}: {world} processes x batch {args.batch} vs one process x batch "
                      f"{args.batch * world}, {args.steps} steps on {device.type}")
                for i, (a, b) in enumerate(zip(ddp_losses, ref_losses)):
                    print(f"  step {i}: ddp loss {a:.7f}  single loss {b:.7f}")
                print(f"  max loss rel diff {loss_err:.2e} (tol {LOSS_RTOL:.0e}), max weight rel diff "
                      f"{weight_err:.2e} (tol {WEIGHT_RTOL:.0e}), nomiopen convolution calls {calls}")
                print(f"  algorithms so far: {nomiopen.stats()}")
                print("PASS" if passed else "FAIL", flush=True)
    finally:
        nomiopen.disable()
        dist.destroy_process_group()
    return ok


def _spawned(rank: int, world: int, port: int, args) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    if not run(rank, world, rank, args):
        sys.exit(1)


def setup_cuda(local_rank: int) -> torch.device:
    torch.cuda.set_device(local_rank)
    torch.backends.cuda.matmul.allow_tf32 = False
    nomiopen.enable("CUDA")
    return torch.device("cuda", local_rank)


def setup_cpu(local_rank: int) -> torch.device:
    nomiopen.enable("CPU")
    return torch.device("cpu")


def sync_device(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_main(argv) -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import _ddp_scaling

    parser = argparse.ArgumentParser(description="nomiopen data-parallel scaling (1 vs N processes)")
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    _ddp_scaling.add_arguments(parser)
    args = parser.parse_args(argv)
    if args.device == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            print("nomiopen scaling needs a CUDA/ROCm build of torch and a GPU; none here, nothing measured "
                  "(--device cpu --tiny runs a dry run on the CPU)")
            return 0
        route = _ddp_scaling.Route("nomiopen", "nccl", setup_cuda, sync_device)
        note = f"{args.world} processes on {count} GPU(s) ({torch.cuda.get_device_name(0)})"
        if count < args.world:
            print(f"--world {args.world} needs {args.world} GPUs for NCCL, found {count}", file=sys.stderr)
            return 2
    else:
        route = _ddp_scaling.Route("nomiopen", "gloo", setup_cpu, sync_device)
        note = f"{args.world} processes sharing this machine's CPU: a dry run of the script, not GPU scaling"
    return _ddp_scaling.run(route, args, note)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--bench" in argv:
        return bench_main([a for a in argv if a != "--bench"])
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--spawn", type=int, default=0, help="start this many processes here (without torchrun)")
    parser.add_argument("--impl", default="auto,winograd4",
                        help="nomiopen policies to check, comma-separated (default auto,winograd4)")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=8, help="per-process batch")
    parser.add_argument("--size", type=int, default=16, help="image size")
    args = parser.parse_args(argv)
    for impl in args.impl.split(","):
        if impl not in policy.POLICIES:
            print(f"unknown policy {impl!r}: use {', '.join(policy.POLICIES)}", file=sys.stderr)
            return 2
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA/ROCm device: use --device cpu", file=sys.stderr)
        return 2
    if args.spawn:
        if args.device == "cuda" and torch.cuda.device_count() < args.spawn:
            print(f"--spawn {args.spawn} needs {args.spawn} GPUs, found {torch.cuda.device_count()}", file=sys.stderr)
            return 2
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        try:
            mp.spawn(_spawned, args=(args.spawn, port, args), nprocs=args.spawn, join=True)
        except mp.ProcessExitedException:
            return 1
        return 0
    if "RANK" not in os.environ:  # plain `python ddp_nomiopen.py`: one process, still a valid (trivial) check
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="29511")
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    return 0 if run(rank, world, int(os.environ.get("LOCAL_RANK", rank)), args) else 1


if __name__ == "__main__":
    sys.exit(main())
