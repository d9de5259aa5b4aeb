"""Winograd F(2x2,3x3) against the implicit-GEMM convolution and cuDNN, per stride-1 3x3 ResNet-18 layer.

For each layer (CIFAR ResNet-18, batch 128) the Winograd forward is checked against a float64
convolution, then timed on the GPU (timestamp queries) with its kernels apart: the two transforms are
memory-bound, so they are reported in GB/s (bytes each must move at least: the image or grad read once,
the 16 transformed planes written or read once). The implicit-GEMM forward and cuDNN (torch.conv2d on
CUDA, TF32 off) are timed in the same run.

    python benchmarks/bench_winograd.py [--batch 128] [--json out.json]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cuda_time, machine, print_table, rel_error, wgpu_gpu_time, write_json  # noqa: E402

import navitrain.wgpu  # noqa: E402,F401  (registers the device)
from navitrain.wgpu.kernels import conv as wconv  # noqa: E402
from navitrain.wgpu.kernels import winograd  # noqa: E402
from navitrain.wgpu.tensor import empty  # noqa: E402

LAYERS = [("layer1", 64, 32), ("layer2", 128, 16), ("layer3", 256, 8), ("layer4", 512, 4)]  # channels, size


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    info = machine()
    print(" | ".join(f"{k}: {v}" for k, v in info.items()))
    ref_dev = "cuda" if torch.cuda.is_available() else "cpu"
    gen = torch.Generator().manual_seed(0)
    rows, results = [], []
    for name, C, H in LAYERS:
        N = args.batch
        x_cpu = torch.randn(N, C, H, H, generator=gen)
        w_cpu = torch.randn(C, C, 3, 3, generator=gen) / (9 * C) ** 0.5
        ref = torch.ops.aten.convolution(x_cpu.to(ref_dev, torch.float64), w_cpu.to(ref_dev, torch.float64), None,
                                         [1, 1], [1, 1], [1, 1], False, [0, 0], 1).cpu()
        x, w = x_cpu.to("wgpu"), w_cpu.to("wgpu")
        y = empty([N, C, H, H], torch.float32)
        g = wconv.Geometry(N, C, H, H, C, H, H, 3, 3, (1, 1), (1, 1), (1, 1), 1)
        runs = {"winograd": lambda: winograd.conv3x3(x, w, None, 1, y),
                "implicit GEMM": lambda: wconv.forward(x, w, None, g, y)}
        times = {}
        for label, fn in runs.items():
            fn()
            err = rel_error(y.cpu(), ref)
            if err > 1e-5:
                raise SystemExit(f"{name} {label}: relative error {err:.1e} (not timed)")
            times[label] = wgpu_gpu_time(fn, args.iters)
        wino, kernels = times["winograd"]
        P = N * ((H + 1) // 2) ** 2
        plane_bytes = 16 * C * P * 4
        image_bytes = N * C * H * H * 4
        t_in = kernels.get("winograd_input", 0.0)
        t_out = kernels.get("winograd_output", 0.0)
        gbs_in = (image_bytes + plane_bytes) / t_in / 1e9 if t_in else 0.0
        gbs_out = (plane_bytes + image_bytes) / t_out / 1e9 if t_out else 0.0
        cudnn = None
        if torch.cuda.is_available():
            torch.backends.cudnn.allow_tf32 = False
            cx, cw = x_cpu.cuda(), w_cpu.cuda()
            cudnn = cuda_time(
                lambda: torch.ops.aten.convolution(cx, cw, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1), args.iters)
        gemm_t = times["implicit GEMM"][0]
        rows.append([name, f"{wino * 1e3:.3f}", f"{t_in * 1e6:.0f} ({gbs_in:.0f} GB/s)",
                     f"{t_out * 1e6:.0f} ({gbs_out:.0f} GB/s)", f"{gemm_t * 1e3:.3f}",
                     f"{cudnn * 1e3:.3f}" if cudnn else "-", f"{wino / cudnn:.2f}x" if cudnn else "-"])
        results.append({"layer": name, "winograd_ms": wino * 1e3, "input_transform_us": t_in * 1e6,
                        "input_gbs": gbs_in, "output_transform_us": t_out * 1e6, "output_gbs": gbs_out,
                        "implicit_gemm_ms": gemm_t * 1e3, "cudnn_ms": cudnn * 1e3 if cudnn else None,
                        "kernels_us": {k: v * 1e6 for k, v in kernels.items()}})
    print_table(["layer", "winograd GPU ms", "input transform us", "output transform us", "implicit GEMM ms",
                 "cuDNN ms", "winograd x cuDNN"], rows,
                f"3x3 stride-1 forward, batch {args.batch}, fp32 (GPU time)")
    write_json(args.json, {"machine": info, "layers": results})
    return results


if __name__ == "__main__":
    main()
