"""Where a training step's host time goes on the wgpu device: recording vs GPU time per step, the cost
of one submission, step time under other submission policies, and a cProfile of one step.

    python benchmarks/profile_step.py --models gpt,resnet18
"""
from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import statistics
import time

import torch

import navitrain.wgpu as nw
from navitrain.bench import models
from navitrain.wgpu import runtime as runtime_mod

CONFIGS = {
    "gpt": (lambda: models.gpt_decoder(), lambda: models.gpt_batch(16), models.gpt_loss, "adamw"),
    "resnet18": (lambda: models.cifar_resnet18(), lambda: models.cifar_batch(128), models.cifar_loss, "sgd"),
}


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


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="gpt,resnet18")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--policies", default="64/4,64/64,256/256,16/16", help="batch/heavy-batch pairs to time")
    args = ap.parse_args()
    rt = runtime_mod.runtime()
    print(f"adapter: {rt.info.name}")
    rec, fl = submit_cost(rt)
    print(f"one tiny op: recording {rec * 1e6:.1f} us, flush (submit) {fl * 1e6:.1f} us")
    for name in args.models.split(","):
        build, batch, loss_fn, optim = CONFIGS[name]
        torch.manual_seed(0)
        model = build().to("wgpu")
        x, y = (t.to("wgpu") for t in batch())
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3) if optim == "adamw" else \
            torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)

        train = models.train_step(model, opt, loss_fn)

        def step():
            return train(x, y)

        for _ in range(3):
            step().item()
        for policy in args.policies.split(","):
            rt._batch_limit, rt._heavy_batch = (int(v) for v in policy.split("/"))
            hosts, totals = [], []
            d0, s0 = rt.dispatch_count, rt.submit_count
            for _ in range(args.steps):
                nw.synchronize()
                t0 = time.perf_counter()
                step()
                hosts.append(time.perf_counter() - t0)
                nw.synchronize()
                totals.append(time.perf_counter() - t0)
            print(f"{name} batch/heavy {policy:>8}: step {statistics.median(totals) * 1e3:6.1f} ms, "
                  f"recording {statistics.median(hosts) * 1e3:6.1f} ms, "
                  f"{(rt.dispatch_count - d0) // args.steps} dispatches, "
                  f"{(rt.submit_count - s0) // args.steps} submits")
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


if __name__ == "__main__":
    main()
