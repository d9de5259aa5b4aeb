"""One rank of the distributed tests (tests/wgpu/test_distributed.py runs it as a subprocess per rank).

    python ddp_worker.py CASE RANK WORLD PORT OUT_FILE
    torchrun ... ddp_worker.py CASE env env env OUT_FILE     # rank and world from torchrun ({rank} in OUT_FILE)

Each case saves what it saw (CPU tensors) to OUT_FILE with torch.save; the test compares that with
PyTorch on the CPU. A subprocess rather than torch.multiprocessing: a hung rank can be killed, so a
broken backend fails the test instead of hanging CI.
"""
from __future__ import annotations

import copy
import os
import sys
import time
from datetime import timedelta

import torch
import torch.distributed as dist

import navitrain.wgpu  # noqa: F401
import navitrain.wgpu.distributed as wd
from navitrain.bench import models

DEV = "wgpu"
TIMEOUT = timedelta(seconds=20)


def rank_inputs(rank: int) -> dict[str, torch.Tensor]:
    """Fresh random inputs for one rank (the test rebuilds the same ones to compute the expectations)."""
    g = torch.Generator().manual_seed(1000 + rank)
    wide = torch.randn(5, 9, generator=g)
    special = torch.randn(11, generator=g)
    special[3], special[7] = float("inf") if rank == 0 else 1.0, float("nan") if rank == 1 else 2.0
    return {
        "odd": torch.randn(7, generator=g),                           # 7 elements: no tidy multiple
        "wide": wide,                                                  # its transpose is non-contiguous
        "special": special,
        "int32": torch.randint(-1000, 1000, (13,), generator=g, dtype=torch.int32),
        "half": torch.randn(6, generator=g).half(),
        "gather": torch.randn(3, 5, generator=g),
        "scatter": torch.randn(2 * 9, generator=g),                     # world 2 x 9 each
        "bcast": torch.randn(4, 3, generator=g),
    }


def case_collectives(rank: int, world: int) -> dict:
    x = {k: v.to(DEV) for k, v in rank_inputs(rank).items()}
    out = {}
    for key in ("odd", "special", "int32", "half"):
        t = x[key].clone()
        dist.all_reduce(t)
        out[f"sum_{key}"] = t.cpu()
    t = x["odd"].clone()
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    out["max_odd"] = t.cpu()
    # A non-contiguous view: all_reduce must write the results back through the view's strides,
    # leaving the base's other elements alone.
    base = x["wide"].clone()
    view = base.t()[1:8:2]            # (4, 5) with strides (2, 9)
    assert not view.is_contiguous()
    dist.all_reduce(view)
    out["sum_view_base"] = base.cpu()
    b = x["bcast"].clone().t()        # non-contiguous broadcast target
    dist.broadcast(b, src=1)
    out["bcast"] = b.cpu()
    gathered = [torch.empty(3, 5, device=DEV) for _ in range(world)]
    dist.all_gather(gathered, x["gather"])
    out["all_gather"] = [g.cpu() for g in gathered]
    flat = torch.empty(world * 3, 5, device=DEV)
    dist.all_gather_single(flat, x["gather"].t().contiguous().t())
    out["all_gather_into_tensor"] = flat.cpu()
    piece = torch.empty(9, device=DEV)
    dist.reduce_scatter_single(piece, x["scatter"])
    out["reduce_scatter_tensor"] = piece.cpu()
    pieces = torch.empty(2 * 9, device=DEV)
    dist.all_to_all_single(pieces, x["scatter"])
    out["all_to_all_single"] = pieces.cpu()
    into = [torch.empty(3, 5, device=DEV) for _ in range(world)] if rank == 0 else None
    dist.gather(x["gather"], into, dst=0)
    out["gather"] = [t.cpu() for t in into] if into else None
    if rank == 0:
        dist.send(x["bcast"].t(), dst=1)              # non-contiguous source
    else:
        got = torch.zeros(4, 3, device=DEV).t()       # non-contiguous target
        dist.recv(got, src=0)
        out["recv"] = got.cpu()
    dist.barrier()
    out["device"] = str(x["odd"].device)
    return out


def snapshot(model, with_buffers: bool) -> dict:
    """The parameters (and, where ranks must agree on them, the running statistics) as CPU float32."""
    named = list(model.named_parameters()) + (list(model.named_buffers()) if with_buffers else [])
    return {k: t.detach().float().cpu().clone() for k, t in named if t.is_floating_point()}


def _ddp_train(model, batches, loss_fn, make_opt, rank: int, world: int, with_buffers: bool) -> list[dict]:
    if with_buffers:       # SyncBatchNorm: every rank normalizes with the statistics of the whole batch
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = model.to(DEV)
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    opt = make_opt(ddp.parameters())
    snapshots = []
    for x, y in batches:
        share = x.shape[0] // world
        x, y = x[rank * share:(rank + 1) * share].to(DEV), y[rank * share:(rank + 1) * share].to(DEV)
        opt.zero_grad(set_to_none=True)
        loss_fn(ddp(x), y).backward()
        opt.step()
        snapshots.append(snapshot(model, with_buffers))
    return snapshots


def ddp_setup(name: str):
    """Model, batches, loss and optimizer of one DDP test; the test builds the same for its reference."""
    torch.manual_seed(0)
    if name == "resnet":
        model = models.cifar_resnet18(num_classes=10, width=4)
        # 16x16 images: at 8x8 the last stage's BatchNorm sees 4 values per channel and PyTorch's own
        # float32 CPU run leaves float64 by 6.8e-3 at step 2 (at 16x16: 1.2e-7).
        batches = [models.cifar_batch(8, image_size=16, seed=s) for s in range(5)]
        return model, batches, models.cifar_loss, lambda p: torch.optim.SGD(p, lr=0.01, momentum=0.9)
    if name == "syncbn":
        # Two BatchNorm layers (the second after a stride-2 conv: 2 x 4 x 4 values per channel and rank),
        # made SyncBatchNorm on the ranks, plain BatchNorm in the one-process reference.
        model = torch.nn.Sequential(
            torch.nn.Conv2d(3, 6, 3, padding=1), torch.nn.BatchNorm2d(6), torch.nn.ReLU(),
            torch.nn.Conv2d(6, 5, 3, stride=2, padding=1), torch.nn.BatchNorm2d(5), torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(5, 10))
        batches = [models.cifar_batch(4, image_size=8, seed=s) for s in range(2)]
        return model, batches, models.cifar_loss, lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9)
    model = models.gpt_decoder(vocab=64, context=16, d_model=32, layers=2, heads=2)
    batches = [models.gpt_batch(4, context=16, vocab=64, seed=s) for s in range(5)]
    return model, batches, models.gpt_loss, lambda p: torch.optim.AdamW(p, lr=2e-3, weight_decay=0.05)


def case_ddp(name: str, rank: int, world: int) -> dict:
    model, batches, loss_fn, make_opt = ddp_setup(name)
    return {"snapshots": _ddp_train(copy.deepcopy(model), batches, loss_fn, make_opt, rank, world,
                                    with_buffers=name == "syncbn"),
            "fallbacks": navitrain.wgpu.fallback_report()["total_fallback_calls"]}


def _error_of(call) -> dict:
    t0 = time.monotonic()
    try:
        call()
    except Exception as exc:          # noqa: BLE001 - what matters is the type and message it reports
        return {"error_type": type(exc).__name__, "error": str(exc), "seconds": time.monotonic() - t0}
    return {"error": None}


def case_dead_rank(rank: int, world: int) -> dict:
    """A rank dies between DDP steps. The survivor's next backward (whose bucket all-reduces finish after
    backward has queued everything) and then a plain all_reduce must fail with a clear error, not hang
    or abort the process."""
    model, batches, loss_fn, make_opt = ddp_setup("gpt")
    # No buffer broadcast before each forward: the first collective to meet the dead rank is a
    # gradient bucket's all_reduce, inside backward.
    ddp = torch.nn.parallel.DistributedDataParallel(model.to(DEV), broadcast_buffers=False)
    x, y = (t.to(DEV) for t in batches[0])
    for _ in range(2):                 # both ranks alive: works (the second forward rebuilds the buckets:
        loss_fn(ddp(x), y).backward()  # a broadcast)
    t = torch.randn(5, device=DEV)
    dist.all_reduce(t)
    if rank == 1:
        os._exit(3)                    # dies without a word, as a crashed or OOM-killed process does
    return {"ddp": _error_of(lambda: loss_fn(ddp(x), y).backward()),
            "all_reduce": _error_of(lambda: dist.all_reduce(t))}


def main() -> None:
    case, port, out_file = sys.argv[1], sys.argv[4], sys.argv[5]
    global DEV
    if port == "env":                  # under torchrun: RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        DEV = wd.local_device()
        dist.init_process_group(wd.NAME, timeout=TIMEOUT)
    else:
        rank, world = int(sys.argv[2]), int(sys.argv[3])
        os.environ.setdefault("LOCAL_RANK", str(rank))
        DEV = wd.local_device()
        dist.init_process_group(wd.NAME, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                                timeout=TIMEOUT)
    out_file = out_file.format(rank=rank)
    if case == "collectives":
        result = case_collectives(rank, world)
    elif case in ("resnet", "gpt", "syncbn"):
        result = case_ddp(case, rank, world)
    elif case == "all":               # one start-up (most of a run's time on lavapipe) for the three
        result = {"collectives": case_collectives(rank, world), "gpt": case_ddp("gpt", rank, world),
                  "resnet": case_ddp("resnet", rank, world), "syncbn": case_ddp("syncbn", rank, world)}
    elif case == "dead_rank":
        result = case_dead_rank(rank, world)
    else:
        raise SystemExit(f"unknown case {case!r}")
    torch.save(result, out_file)
    if case != "dead_rank":
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
