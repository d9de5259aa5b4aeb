"""sin, cos and tan on the wgpu device against float64 on the CPU, per range of |x| (both signs).

Why: Vulkan bounds sin/cos only to 2^-11 absolute on [-pi, pi]; an H100's driver (580.159) was 1.2e-3 off
at |x| in [1e3, 1e4) and garbage past 1e6, so navitrain computes them itself (kernels/wgsl_trig.py). This
prints, per range and function, the largest absolute error, relative error and error in ulps of the
float64 result rounded to float32 (ulp: the spacing of float32 numbers in that result's binade, 2^-149 at
zero). Random x: uniform in the decades, log-uniform in the two wide ranges at the top.

    python benchmarks/trig_accuracy.py [--n 400000] [--json out.json]

Under 20 s on a GPU (most of it float64 on the CPU); about a minute on lavapipe.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, print_table, write_json  # noqa: E402

import navitrain.wgpu  # noqa: E402,F401  (registers the device)

F32_MAX = float(np.finfo(np.float32).max)
RANGES = [(0.0, 3.2), (3.2, 100.0), (100.0, 1e3), (1e3, 1e4), (1e4, 1e5), (1e5, 1e6), (1e6, 1e30),
          (1e30, F32_MAX)]
FUNCTIONS = {"sin": torch.sin, "cos": torch.cos, "tan": torch.tan}


def sample(lo: float, hi: float, n: int, gen: torch.Generator) -> torch.Tensor:
    """n float32 values with |x| in [lo, hi), random signs."""
    u = torch.rand(n, generator=gen, dtype=torch.float64)
    if lo > 0 and hi / lo > 1e3:
        mag = torch.exp(np.log(lo) + u * (np.log(hi) - np.log(lo)))
    else:
        mag = lo + u * (hi - lo)
    sign = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0).double()
    return (mag * sign).float().clamp(-F32_MAX, F32_MAX)


def ulp_f32(ref: torch.Tensor) -> torch.Tensor:
    """The spacing of float32 numbers in the binade of ref rounded to float32 (2^-149 at zero)."""
    r32 = ref.float().double().abs()
    exponent = torch.floor(torch.log2(r32.clamp(min=2.0 ** -126)))
    return torch.pow(2.0, exponent - 23).clamp(min=2.0 ** -149)


def errors(got: torch.Tensor, ref: torch.Tensor) -> dict:
    """Largest absolute, relative and ulp errors of float32 `got` against float64 `ref`."""
    diff = (got.double() - ref).abs()
    diff = torch.where(torch.isnan(diff), torch.inf, diff)  # a NaN for a finite x counts as infinitely off
    return {"abs": diff.max().item(), "rel": (diff / ref.abs().clamp(min=1e-300)).max().item(),
            "ulp": (diff / ulp_f32(ref)).max().item()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=400_000, help="samples per range")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    info = machine()
    print(" | ".join(f"{k}: {v}" for k, v in info.items()))
    gen = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    rows, results = [], []
    for lo, hi in RANGES:
        x = sample(lo, hi, args.n, gen)
        xd = x.to("wgpu")
        row = [f"[{lo:g}, {hi:.3g})"]
        for name, fn in FUNCTIONS.items():
            err = errors(fn(xd).cpu(), fn(x.double()))
            results.append({"range": [lo, hi], "function": name, **err})
            row += [f"{err['abs']:.2g}", f"{err['rel']:.2g}", f"{err['ulp']:.2f}"]
        rows.append(row)
    header = ["|x| in"] + [f"{f} {k}" for f in FUNCTIONS for k in ("abs", "rel", "ulp")]
    print_table(header, rows)
    print(f"{time.perf_counter() - t0:.1f} s")
    if args.json:
        write_json(args.json, {"machine": info, "n": args.n, "results": results})


if __name__ == "__main__":
    main()
