#!/usr/bin/env python3
"""Grouped convolutions (ResNeXt-50 32x4d, RegNet-Y-400MF) and large-kernel/strided stems (AlexNet
11x11/s4, ResNet 7x7/s2) on wgpu, per layer and per pass (issue 23).

For every layer and pass (forward, grad-input, grad-weight) it validates the wgpu result against float64
on the CPU, then times the GPU work (navitrain.wgpu.profile: timestamp queries on a GPU, on lavapipe the
time every lane really executes) with
  old   the implicit GEMM (the direct grouped kernels switched off, tile tuning as configured),
  new   what kernels/conv/choose.py picks now (the direct grouped kernels where its rule or the tuner
        says so),
and, where CUDA is present, PyTorch's CUDA convolution on the same layer (CUDA events). It prints
GFLOP/s, new/old and wgpu/CUDA ratios, and writes JSON with --out.

    python benchmarks/bench_grouped_conv.py --batch 1 --layers grouped      # lavapipe: a few minutes
    python benchmarks/bench_grouped_conv.py --batch 32 --out grouped.json   # on a GPU (tuning as set)
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

try:
    import navitrain  # noqa: F401
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
import torch.nn.functional as F
from _common import cuda_time, wgpu_gpu_time

aten = torch.ops.aten

# (model, layer, in channels, out channels, input size, kernel, stride, padding, groups) at 224 px.
# ResNeXt-50 32x4d: the 3x3 of each bottleneck has width 128/256/512/1024 in 32 groups (4/8/16/32
# channels a group), the first block of stages 2-4 strided. RegNet-Y-400MF: group width 8, stage
# widths 48/104/208/440 (6/13/26/55 groups), the first block of each stage strided.
GROUPED = [
    ("resnext50", "l1", 128, 128, 56, 3, 1, 1, 32),
    ("resnext50", "l2.0", 256, 256, 56, 3, 2, 1, 32),
    ("resnext50", "l2", 256, 256, 28, 3, 1, 1, 32),
    ("resnext50", "l3.0", 512, 512, 28, 3, 2, 1, 32),
    ("resnext50", "l3", 512, 512, 14, 3, 1, 1, 32),
    ("resnext50", "l4.0", 1024, 1024, 14, 3, 2, 1, 32),
    ("resnext50", "l4", 1024, 1024, 7, 3, 1, 1, 32),
    ("regnet_y_400mf", "s1.0", 48, 48, 112, 3, 2, 1, 6),
    ("regnet_y_400mf", "s2.0", 104, 104, 56, 3, 2, 1, 13),
    ("regnet_y_400mf", "s2", 104, 104, 28, 3, 1, 1, 13),
    ("regnet_y_400mf", "s3.0", 208, 208, 28, 3, 2, 1, 26),
    ("regnet_y_400mf", "s3", 208, 208, 14, 3, 1, 1, 26),
    ("regnet_y_400mf", "s4.0", 440, 440, 14, 3, 2, 1, 55),
    ("regnet_y_400mf", "s4", 440, 440, 7, 3, 1, 1, 55),
]
STEMS = [
    ("alexnet", "stem11x11s4", 3, 64, 224, 11, 4, 2, 1),
    ("alexnet", "conv2.5x5", 64, 192, 27, 5, 1, 2, 1),
    ("resnet", "stem7x7s2", 3, 64, 224, 7, 2, 3, 1),
]
PASSES = ("fwd", "dgrad", "wgrad")


def _operands(layer, batch, dtype, device, seed=0):
    _, _, C, OC, H, k, s, p, g = layer
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, C, H, H, generator=gen, dtype=torch.float64)
    w = torch.randn(OC, C // g, k, k, generator=gen, dtype=torch.float64) / (C // g * k * k) ** 0.5
    OH = (H + 2 * p - k) // s + 1
    dy = torch.randn(batch, OC, OH, OH, generator=gen, dtype=torch.float64)
    return x, w, dy


def _pass_fn(name, x, w, dy, layer):
    _, _, _, _, _, _, s, p, g = layer
    if name == "fwd":
        return lambda: F.conv2d(x, w, None, s, p, 1, g)
    mask = [name == "dgrad", name == "wgrad", False]
    pick = 0 if name == "dgrad" else 1
    return lambda: aten.convolution_backward.default(dy, x, w, None, [s, s], [p, p], [1, 1], False, [0, 0], g,
                                                     mask)[pick]


def _to(t, device, dtype, channels_last):
    t = t.to(dtype)
    if channels_last:
        t = t.contiguous(memory_format=torch.channels_last)
    return t.to(device)


def _flops(layer, batch):
    _, _, C, OC, H, k, s, p, g = layer
    OH = (H + 2 * p - k) // s + 1
    return 2.0 * batch * OC * OH * OH * (C // g) * k * k


def run_layer(layer, batch, channels_last, iters, cuda, passes):
    from navitrain.wgpu.kernels import conv_grouped

    x64, w64, dy64 = _operands(layer, batch, torch.float64, "cpu")
    refs = {name: _pass_fn(name, x64, w64, dy64, layer)() for name in passes}
    xd, wd, dyd = (_to(t, "wgpu", torch.float32, channels_last) for t in (x64, w64, dy64))
    rows = []
    for name in passes:
        fn = _pass_fn(name, xd, wd, dyd, layer)
        row = {"model": layer[0], "layer": layer[1], "pass": name, "batch": batch,
               "layout": "nhwc" if channels_last else "nchw", "gflop": _flops(layer, batch) / 1e9}
        for label, ctx in (("old", conv_grouped.disabled), ("new", _nothing)):
            with ctx():
                got = fn().cpu().double()
                ref = refs[name]
                err = ((got - ref).abs().max() / (ref.abs().max() + 1e-12)).item()
                if err > 1e-4:
                    raise SystemExit(f"{layer[:2]} {name} {label}: relative error {err:.2e}")
                seconds, kernels = wgpu_gpu_time(fn, iters)
            row[label + "_us"] = seconds * 1e6
            row[label + "_kernels"] = sorted({k.split("@")[0] for k in kernels})
        if cuda:
            xc, wc, dyc = (_to(t, "cuda", torch.float32, channels_last) for t in (x64, w64, dy64))
            row["cuda_us"] = cuda_time(_pass_fn(name, xc, wc, dyc, layer), iters) * 1e6
        rows.append(row)
    return rows


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--layers", default="grouped,stems", help="grouped, stems, or both (comma-separated)")
    ap.add_argument("--only", default="", help="comma-separated layer names (e.g. l1,s2) to run")
    ap.add_argument("--formats", default="nchw,nhwc")
    ap.add_argument("--passes", default=",".join(PASSES))
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    import navitrain.wgpu  # noqa: F401  (registers the device)

    layers = [*(GROUPED if "grouped" in args.layers else []), *(STEMS if "stems" in args.layers else [])]
    if args.only:
        layers = [lay for lay in layers if lay[1] in args.only.split(",")]
    cuda = torch.cuda.is_available()
    rows = []
    print(f"{'model':<15}{'layer':<12}{'pass':<6}{'fmt':<5}{'old us':>10}{'new us':>10}{'new GF/s':>10}"
          f"{'new/old':>8}{'cuda us':>9}{'new/cuda':>9}  kernels (new)")
    for fmt in args.formats.split(","):
        for layer in layers:
            for r in run_layer(layer, args.batch, fmt == "nhwc", args.iters, cuda, args.passes.split(",")):
                rows.append(r)
                cu = r.get("cuda_us")
                print(f"{r['model']:<15}{r['layer']:<12}{r['pass']:<6}{fmt:<5}{r['old_us']:>10.1f}{r['new_us']:>10.1f}"
                      f"{r['gflop'] / r['new_us'] * 1e6:>10.2f}{r['new_us'] / r['old_us']:>8.2f}"
                      f"{cu if cu else float('nan'):>9.1f}{r['new_us'] / cu if cu else float('nan'):>9.2f}  "
                      f"{','.join(r['new_kernels'])}", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
