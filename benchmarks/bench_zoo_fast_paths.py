"""What the zoo does around its convolutions (issue 23), one zoo-sized layer at a time on the wgpu device:
kernels dispatched, GPU time (navitrain.wgpu.profile(), best of --reps) and wall time per call.

    python benchmarks/bench_zoo_fast_paths.py [--batch 2] [--reps 5] [--only se,ln2d,...]

Cases: the squeeze-excitation block of MobileNetV3 (pool, two 1x1 convolutions, hardsigmoid gate),
ConvNeXt's LayerNorm2d (permute, layer_norm over C, permute back), hardswish/SiLU/GELU forward and
backward, and torch.cat of DenseNet-161's first dense block at its 6th layer (7 inputs). To compare
two trees, run it once with PYTHONPATH pointing at each tree's src/, on the same machine."""
from __future__ import annotations

import argparse
import time


def _cases(batch: int):
    import torch
    import torch.nn.functional as F

    dev = "wgpu"
    torch.manual_seed(0)
    cases = {}

    # MobileNetV3-large's SE at 28x28 (expanded 120 channels, squeeze 32).
    x = torch.randn(batch, 120, 28, 28, device=dev, requires_grad=True)
    fc1 = torch.nn.Conv2d(120, 32, 1).to(dev)
    fc2 = torch.nn.Conv2d(32, 120, 1).to(dev)
    g = torch.randn(batch, 120, 28, 28, device=dev)

    def se():
        s = F.adaptive_avg_pool2d(x, 1)
        return x * F.hardsigmoid(fc2(F.relu(fc1(s))))

    cases["se forward"] = se
    cases["se forward+backward"] = lambda: se().backward(g)
    cases["global pool forward"] = lambda: F.adaptive_avg_pool2d(x, 1)

    # ConvNeXt-small stage 1: 96 channels at 56x56.
    y = torch.randn(batch, 96, 56, 56, device=dev, requires_grad=True)
    ln = torch.nn.LayerNorm(96, eps=1e-6).to(dev)
    gy = torch.randn(batch, 96, 56, 56, device=dev)

    def ln2d():
        return ln(y.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    cases["ln2d forward"] = ln2d
    cases["ln2d forward+backward"] = lambda: ln2d().backward(gy)

    # Activations on an expanded MobileNet/EfficientNet tensor.
    a = torch.randn(batch, 96, 56, 56, device=dev, requires_grad=True)
    ga = torch.randn(batch, 96, 56, 56, device=dev)
    for name, fn in (("hardswish", F.hardswish), ("hardsigmoid", F.hardsigmoid), ("silu", F.silu),
                     ("gelu", F.gelu)):
        cases[f"{name} forward+backward"] = lambda fn=fn: fn(a).backward(ga)

    # DenseNet-161 block 1, layer 6: the stem's 96 channels and five 48-channel outputs, at 56x56.
    feats = [torch.randn(batch, 96, 56, 56, device=dev)] + [torch.randn(batch, 48, 56, 56, device=dev)
                                                           for _ in range(6)]
    cases["densenet cat (7 inputs)"] = lambda: torch.cat(feats, 1)
    return cases


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--only", default="", help="comma-separated substrings of case names")
    args = ap.parse_args(argv)

    import navitrain
    import navitrain.wgpu as nw

    print(f"# navitrain from {navitrain.__file__}; adapter: {nw.adapter_info()['name']}; batch {args.batch}")
    print(f"{'case':28} {'dispatches':>10} {'GPU ms':>9} {'wall ms':>9}  kernels")
    wanted = [w for w in args.only.split(",") if w]
    for name, fn in _cases(args.batch).items():
        if wanted and not any(w in name for w in wanted):
            continue
        fn()
        nw.synchronize()
        best_gpu, kernels = float("inf"), {}
        for _ in range(args.reps):
            with nw.profile() as table:
                fn()
            gpu = sum(v[1] for v in table.values())
            if gpu < best_gpu:
                best_gpu, kernels = gpu, {k: v[0] for k, v in table.items()}
        best_wall = float("inf")
        for _ in range(args.reps):
            nw.synchronize()
            t0 = time.perf_counter()
            fn()
            nw.synchronize()
            best_wall = min(best_wall, time.perf_counter() - t0)
        listed = ", ".join(f"{k.split('@')[0]} x{n}" if n > 1 else k.split("@")[0] for k, n in kernels.items())
        print(f"{name:28} {sum(kernels.values()):>10} {best_gpu * 1e3:>9.2f} {best_wall * 1e3:>9.2f}  {listed}")


if __name__ == "__main__":
    main()
