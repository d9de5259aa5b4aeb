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
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

try:
    import navitrain  # noqa: F401
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

import _ddp_scaling  # noqa: E402


def setup_wgpu(local_rank: int) -> torch.device:
    import navitrain.wgpu.distributed as wd

    return wd.local_device()


def sync_wgpu(device: torch.device) -> None:
    import navitrain.wgpu as nw

    nw.synchronize()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    _ddp_scaling.add_arguments(parser)
    args = parser.parse_args(argv)
    from navitrain.wgpu.device import adapter_names   # lists them without opening one here

    names = adapter_names()
    count = len(names)
    note = (f"{args.world} processes on {count} adapter(s) ({'; '.join(names)})"
            + ("; adapters shared: this measures collective overhead, not GPU scaling" if count < args.world else ""))
    route = _ddp_scaling.Route("wgpu", "navitrain", setup_wgpu, sync_wgpu)
    return _ddp_scaling.run(route, args, note)


if __name__ == "__main__":
    sys.exit(main())
