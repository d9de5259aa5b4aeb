"""fp32 GEMM and implicit-GEMM convolution on the wgpu device, next to the same GPU's torch matmul.

Every kernel is validated against a float64 reference before it is timed (relative Frobenius error
below 1e-5). TFLOPS count 2*M*N*K per product. The torch reference is torch.mm on CUDA with TF32 off
(the issue's cuBLAS fp32 baseline), timed in the same run with CUDA events.

    python benchmarks/bench_wgpu_gemm.py                       # squares 1024..8192 + ResNet-18 convs
    python benchmarks/bench_wgpu_gemm.py --sweep               # every tile config, to pick defaults
    python benchmarks/bench_wgpu_gemm.py --quick               # tiny sizes (lavapipe smoke test)
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cuda_time, machine, print_table, rel_error, wgpu_gpu_time, wgpu_time, write_json  # noqa: E402

from navitrain.wgpu.kernels import conv as wconv  # noqa: E402
from navitrain.wgpu.kernels import gemm  # noqa: E402
from navitrain.wgpu.tensor import empty  # noqa: E402

T = gemm.TileConfig
SWEEP = [
    T(128, 128, 8, 8, 8, buffers=1),
    T(128, 128, 16, 8, 8, buffers=1),
    T(128, 128, 16, 8, 8),
    T(64, 64, 16, 8, 8, buffers=1),
    T(64, 64, 16, 8, 8),
    T(64, 64, 16, 4, 4),
    T(64, 64, 8, 4, 4),
    T(128, 64, 16, 8, 8, buffers=1),
    T(128, 64, 16, 8, 4),
    T(64, 32, 16, 4, 4),
    # split-K, as many slices as fill the GPU
    T(128, 128, 16, 8, 8, buffers=1, splits=0),
    T(64, 64, 16, 8, 8, buffers=1, splits=0),
    T(64, 64, 16, 4, 4, splits=0),
    # the first thread layout (one contiguous TMxTN block per thread), for comparison
    T(128, 128, 16, 8, 8, buffers=1, interleave=False),
    T(64, 64, 16, 8, 8, buffers=1, interleave=False),
    T(64, 64, 16, 4, 4, interleave=False),
    # without the padding of the workgroup tiles, for comparison
    T(128, 128, 16, 8, 8, buffers=1, pad=False),
    T(64, 64, 16, 8, 8, buffers=1, pad=False),
    T(128, 64, 16, 8, 4, pad=False),
    T(64, 64, 16, 4, 4, pad=False),
]

# CIFAR-style ResNet-18 convolutions: (name, in_channels, out_channels, image size, stride, kernel).
RESNET18 = [
    ("stem", 3, 64, 32, 1, 3),
    ("layer1", 64, 64, 32, 1, 3),
    ("layer2.down", 64, 128, 32, 2, 3),
    ("layer2", 128, 128, 16, 1, 3),
    ("layer2.short", 64, 128, 32, 2, 1),
    ("layer3.down", 128, 256, 16, 2, 3),
    ("layer3", 256, 256, 8, 1, 3),
    ("layer3.short", 128, 256, 16, 2, 1),
    ("layer4.down", 256, 512, 8, 2, 3),
    ("layer4", 512, 512, 4, 1, 3),
    ("layer4.short", 256, 512, 8, 2, 1),
]


def nw_limits():
    from navitrain.wgpu.runtime import runtime

    return runtime().limits


# The products of a training step of the GPT-style decoder (6 layers, d=384, batch 16 x 256 tokens):
# (label, M, N, K, A transposed in memory, B transposed in memory) -- x @ W^T uses W as stored.
GPT = [
    ("qkv fwd", 4096, 1152, 384, False, True), ("attn proj fwd", 4096, 384, 384, False, True),
    ("mlp up fwd", 4096, 1536, 384, False, True), ("mlp down fwd", 4096, 384, 1536, False, True),
    ("head fwd", 4096, 4096, 384, False, True), ("mlp up dX", 4096, 384, 1536, False, False),
    ("mlp up dW", 1536, 384, 4096, True, False), ("head dW", 4096, 384, 4096, True, False),
]


def shapes_table(shapes, iters):
    rows, results = [], []
    gen = torch.Generator().manual_seed(2)
    for label, M, N, K, ta, tb in shapes:
        a_cpu = torch.randn(K, M, generator=gen).t() if ta else torch.randn(M, K, generator=gen)
        b_cpu = torch.randn(N, K, generator=gen).t() if tb else torch.randn(K, N, generator=gen)
        ref = (a_cpu.to(_ref_device(), torch.float64) @ b_cpu.to(_ref_device(), torch.float64)).cpu()
        a = (a_cpu.t().contiguous().to("wgpu").t() if ta else a_cpu.contiguous().to("wgpu"))
        b = (b_cpu.t().contiguous().to("wgpu").t() if tb else b_cpu.contiguous().to("wgpu"))
        out = empty([M, N], torch.float32)
        gemm.gemm(a, b, out)
        err = rel_error(out.cpu(), ref)
        if err > 1e-5:
            rows.append([label, f"{M}x{N}x{K}", "INVALID", f"{err:.1e}", "", ""])
            continue
        t = wgpu_time(lambda: gemm.gemm(a, b, out), iters)
        gpu, _ = wgpu_gpu_time(lambda: gemm.gemm(a, b, out), iters)
        tflops, gpu_tflops = 2 * M * N * K / t / 1e12, 2 * M * N * K / gpu / 1e12
        ref_t = None
        if torch.cuda.is_available():
            torch.backends.cuda.matmul.allow_tf32 = False
            ca = a_cpu.cuda().t().contiguous().t() if ta else a_cpu.cuda()
            cb = b_cpu.cuda().t().contiguous().t() if tb else b_cpu.cuda()
            ref_t = 2 * M * N * K / cuda_time(lambda: torch.mm(ca, cb), iters) / 1e12
        rows.append([label, f"{M}x{N}x{K}", f"{t * 1e3:.3f}", f"{gpu * 1e3:.3f}", f"{gpu_tflops:.2f}",
                     f"{ref_t:.2f}" if ref_t else "-", f"{100 * gpu_tflops / ref_t:.0f}%" if ref_t else "-",
                     f"{100 * tflops / ref_t:.0f}%" if ref_t else "-"])
        results.append({"label": label, "M": M, "N": N, "K": K, "ms": t * 1e3, "gpu_ms": gpu * 1e3, "tflops": tflops,
                        "gpu_tflops": gpu_tflops, "torch_tflops": ref_t})
    print_table(["product", "MxNxK", "wall ms", "GPU ms", "TFLOPS", "torch TFLOPS", "%", "% (wall)"], rows,
                "GPT decoder products (fp32; TFLOPS and % from GPU time, % (wall) with the host included)")
    return results


def _ref_device():
    return "cuda" if torch.cuda.is_available() else "cpu"


def _torch_mm_tflops(M, N, K, iters):
    if not torch.cuda.is_available():
        return None
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    a = torch.randn(M, K, device="cuda")
    b = torch.randn(K, N, device="cuda")
    t = cuda_time(lambda: torch.mm(a, b), iters)
    return 2 * M * N * K / t / 1e12


def squares(sizes, configs, iters_for):
    rows, results = [], []
    gen = torch.Generator().manual_seed(0)
    for n in sizes:
        a_cpu = torch.randn(n, n, generator=gen)
        b_cpu = torch.randn(n, n, generator=gen)
        ref = (a_cpu.to(_ref_device(), torch.float64) @ b_cpu.to(_ref_device(), torch.float64)).cpu()
        a, b = a_cpu.to("wgpu"), b_cpu.to("wgpu")
        out = empty([n, n], torch.float32)
        torch_tflops = _torch_mm_tflops(n, n, n, iters_for(n))
        for cfg in configs or [None]:
            if cfg is not None and (n % cfg.BM or n % cfg.BN or not cfg.fits(nw_limits())):
                continue
            gemm.gemm(a, b, out, config=cfg)
            err = rel_error(out.cpu(), ref)
            if err > 1e-5:
                rows.append([n, _cfg(cfg), "INVALID", f"err {err:.1e}", "", ""])
                results.append({"n": n, "config": _cfg(cfg), "valid": False, "rel_error": err})
                continue
            t = wgpu_time(lambda: gemm.gemm(a, b, out, config=cfg), iters_for(n))
            gpu, _ = wgpu_gpu_time(lambda: gemm.gemm(a, b, out, config=cfg), iters_for(n))
            tflops, gpu_tflops = 2 * n ** 3 / t / 1e12, 2 * n ** 3 / gpu / 1e12
            pct = 100 * gpu_tflops / torch_tflops if torch_tflops else None
            pct_wall = 100 * tflops / torch_tflops if torch_tflops else None
            rows.append([n, _cfg(cfg), f"{t * 1e3:.3f}", f"{gpu * 1e3:.3f}", f"{gpu_tflops:.2f}",
                         f"{torch_tflops:.2f}" if torch_tflops else "-", f"{pct:.0f}%" if pct else "-",
                         f"{pct_wall:.0f}%" if pct_wall else "-"])
            results.append({"n": n, "config": _cfg(cfg), "valid": True, "rel_error": err, "ms": t * 1e3,
                            "gpu_ms": gpu * 1e3, "tflops": tflops, "gpu_tflops": gpu_tflops,
                            "torch_tflops": torch_tflops, "pct_of_torch": pct, "pct_of_torch_wall": pct_wall})
    print_table(["n", "tile BMxBNxBK/TMxTN", "wall ms", "GPU ms", "TFLOPS", "torch TFLOPS", "% torch", "% (wall)"],
                rows, "fp32 GEMM C = A @ B (square; TFLOPS and % from GPU time, % (wall) with the host included)")
    return results


def _cfg(cfg):
    return cfg.name if cfg is not None else "auto"


def convs(batch, iters, shapes):
    rows, results = [], []
    gen = torch.Generator().manual_seed(1)
    dev = _ref_device()
    for name, C, OC, H, s, k in shapes:
        p = k // 2
        x_cpu = torch.randn(batch, C, H, H, generator=gen)
        w_cpu = torch.randn(OC, C, k, k, generator=gen) * (1.0 / (C * k * k) ** 0.5)
        OH = (H + 2 * p - k) // s + 1
        dy_cpu = torch.randn(batch, OC, OH, OH, generator=gen)
        x64, w64, dy64 = (t.to(dev, torch.float64) for t in (x_cpu, w_cpu, dy_cpu))
        # aten ops directly, not autograd: with the wgpu device registered, PyTorch treats it as the
        # process's accelerator and CUDA autograd in the same process fails (see docs/wgpu.md).
        y64 = torch.ops.aten.convolution(x64, w64, None, [s, s], [p, p], [1, 1], False, [0, 0], 1)
        dx64, dw64, _ = torch.ops.aten.convolution_backward(dy64, x64, w64, None, [s, s], [p, p], [1, 1], False,
                                                            [0, 0], 1, [True, True, False])
        x, w, dy = x_cpu.to("wgpu"), w_cpu.to("wgpu"), dy_cpu.to("wgpu")
        g = wconv.Geometry(batch, C, H, H, OC, OH, OH, k, k, (s, s), (p, p), (1, 1), 1)
        y, dx, dw = empty(y64.shape, torch.float32), empty(x.shape, torch.float32), empty(w.shape, torch.float32)
        passes = {
            "forward": (lambda: wconv.forward(x, w, None, g, y), y, y64, (OC, batch * OH * OH, C * k * k)),
            "grad_input": (lambda: wconv.grad_input(dy, w, g, dx), dx, dx64, (C, batch * H * H, OC * k * k)),
            "grad_weight": (lambda: wconv.grad_weight(dy, x, g, dw), dw, dw64, (OC, C * k * k, batch * OH * OH)),
        }
        for pass_name, (fn, out, ref, (M, N, K)) in passes.items():
            fn()
            err = rel_error(out.cpu(), ref)
            flops = 2 * M * N * K
            if err > 1e-5:
                rows.append([name, pass_name, f"{M}x{N}x{K}", "INVALID", f"err {err:.1e}", "", "", ""])
                results.append({"layer": name, "pass": pass_name, "valid": False, "rel_error": err})
                continue
            t = wgpu_time(fn, iters)
            gpu, kernels = wgpu_gpu_time(fn, iters)
            ours = flops / gpu / 1e12
            ref_tflops = _torch_mm_tflops(M, N, K, iters)
            ratio = 100 * ours / ref_tflops if ref_tflops else None
            rows.append([name, pass_name, f"{M}x{N}x{K}", f"{t * 1e3:.3f}", f"{gpu * 1e3:.3f}", f"{ours:.2f}",
                         f"{ref_tflops:.2f}" if ref_tflops else "-", f"{ratio:.0f}%" if ratio else "-"])
            top = sorted(kernels.items(), key=lambda kv: -kv[1])[:4]
            results.append({"layer": name, "pass": pass_name, "M": M, "N": N, "K": K, "valid": True, "rel_error": err,
                            "ms": t * 1e3, "gpu_ms": gpu * 1e3, "tflops": ours, "torch_mm_tflops": ref_tflops,
                            "pct_of_torch_mm": ratio, "kernels_us": {k: v * 1e6 for k, v in top}})
    print_table(["layer", "pass", "GEMM MxNxK", "wall ms", "GPU ms", "TFLOPS", "torch.mm TFLOPS", "%"], rows,
                f"ResNet-18 (CIFAR) convolutions, batch {batch}, vs torch.mm of the same GEMM shape "
                "(TFLOPS and % from GPU time; wall ms includes the host)")
    for r in results:
        if r.get("valid") and r["pct_of_torch_mm"] is not None and r["pct_of_torch_mm"] < 40:
            print(f"  {r['layer']} {r['pass']}: " + ", ".join(f"{k} {v:.0f} us" for k, v in r["kernels_us"].items()))
    return results


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1024,2048,4096,8192")
    ap.add_argument("--sweep", action="store_true", help="time every tile config in SWEEP")
    ap.add_argument("--batch", type=int, default=128, help="batch of the ResNet-18 convolutions")
    ap.add_argument("--no-conv", action="store_true")
    ap.add_argument("--gpt", action="store_true", help="also the products of the GPT-style decoder's step")
    ap.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke test on lavapipe")
    ap.add_argument("--json", help="write all results here")
    ap.add_argument("--layers", help="only these ResNet-18 layers (comma-separated names, e.g. stem,layer2.short)")
    ap.add_argument("--tuning-log", action="store_true", help="print every tuning candidate's time")
    args = ap.parse_args(argv)
    if args.tuning_log:
        import logging

        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("tuning: %(message)s"))
        tuning = logging.getLogger("navitrain.wgpu")
        tuning.addHandler(handler)
        tuning.setLevel(logging.DEBUG)
    info = machine()
    print(" | ".join(f"{k}: {v}" for k, v in info.items()))
    if args.quick:
        sizes, batch, shapes = [128], 2, RESNET18[:2]
        configs = [gemm.TileConfig(64, 64, 8, 4, 4), gemm.TileConfig(128, 128, 8, 8, 8),
                   gemm.TileConfig(64, 64, 8, 4, 4, splits=2), None]
    else:
        sizes, batch, shapes = [int(s) for s in args.sizes.split(",") if s], args.batch, RESNET18
    if args.layers:
        wanted = args.layers.split(",")
        unknown = set(wanted) - {s[0] for s in RESNET18}
        if unknown:
            ap.error(f"unknown layers {sorted(unknown)}; choose from {[s[0] for s in RESNET18]}")
        shapes = [s for s in shapes if s[0] in wanted]
    if not args.quick:
        # None: each product picks its tile like a training run does (autotuned on hardware)
        configs = SWEEP if args.sweep else None

    def iters_for(n):
        return max(3, min(200, int(2e10 / (2 * n ** 3))))

    result = {"machine": info, "squares": squares(sizes, configs, iters_for)}
    if args.gpt:
        gpt_shapes = GPT if not args.quick else [("tiny", 64, 64, 32, False, True)]
        result["gpt"] = shapes_table(gpt_shapes, 3 if args.quick else 20)
    if not args.no_conv:
        result["convs"] = convs(batch, 3 if args.quick else 20, shapes)
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
