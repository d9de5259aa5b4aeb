#!/usr/bin/env python3
"""Data-parallel scaling on the wgpu device: CIFAR ResNet-18 (batch 128 per process) and the GPT
decoder, steps per second of one process against N under DDP over the "navitrain" backend (gloo
with each bucket staged through host memory), in the same run.

Each process drives wgpu:LOCAL_RANK (navitrain.wgpu.distributed.local_device). With fewer adapters
than processes they share adapters round-robin: then the ratio measures the collectives' overhead
and the sharing, not GPU scaling -- the output names the devices so that this shows.

    python benchmarks/ddp_wgpu.py                          # 1 vs 2 processes, full-size models
    python benchmarks/ddp_wgpu.py --tiny --steps 3         # tiny models: lavapipe / CI dry run
    python benchmarks/ddp_wgpu.py --world 4 --json
    python benchmarks/ddp_wgpu.py --allreduce-waits         # the same without overlap, to compare

DDP's reducer all-reduces each gradient bucket as it becomes ready; the navitrain backend downloads
it and returns while gloo exchanges it, so communication overlaps the rest of backward.
--allreduce-waits makes every all_reduce wait for gloo before returning (as the backend did before
issue 21's overlap): the difference between the two runs is what the overlap saves.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

try:
    import navitrain  # noqa: F401
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import _ddp_scaling  # noqa: E402
import torch  # noqa: E402

_WAITS = "NAVITRAIN_BENCH_ALLREDUCE_WAITS"   # set by --allreduce-waits, read in each spawned rank


def setup_wgpu(local_rank: int) -> torch.device:
    import navitrain.wgpu.distributed as wd

    if os.environ.get(_WAITS) == "1":
        overlapping = wd.WgpuProcessGroup.allreduce

        def allreduce_waiting(self, tensors, opts):
            work = overlapping(self, tensors, opts)
            work.wait()            # backward stops here until gloo is done with this bucket
            return work

        wd.WgpuProcessGroup.allreduce = allreduce_waiting
    return wd.local_device()


def sync_wgpu(device: torch.device) -> None:
    import navitrain.wgpu as nw

    nw.synchronize()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    _ddp_scaling.add_arguments(parser)
    parser.add_argument("--allreduce-waits", action="store_true",
                        help="every all_reduce waits for gloo before returning (no overlap with backward)")
    args = parser.parse_args(argv)
    if args.allreduce_waits:
        os.environ[_WAITS] = "1"
    from navitrain.wgpu.device import adapter_names  # lists them without opening one here

    names = adapter_names()
    count = len(names)
    note = (f"{args.world} processes on {count} adapter(s) ({'; '.join(names)}), all_reduce "
            + ("waiting for gloo" if args.allreduce_waits else "overlapping backward")
            + ("; adapters shared: this measures collective overhead, not GPU scaling" if count < args.world else ""))
    route = _ddp_scaling.Route("wgpu", "navitrain", setup_wgpu, sync_wgpu)
    return _ddp_scaling.run(route, args, note)


if __name__ == "__main__":
    sys.exit(main())
