"""NVIDIA Vulkan: accuracy of sin/cos/tan by argument range, and whether the adapter flushes subnormals."""
import torch
import navitrain.wgpu  # noqa: F401

torch.manual_seed(0)
for lo, hi in [(0, 3.2), (3.2, 100), (100, 1e3), (1e3, 1e4), (1e4, 1e5), (1e5, 1e6), (1e6, 1e8), (1e8, 1e30)]:
    x = torch.rand(200000, dtype=torch.float64) * (hi - lo) + lo
    x = torch.cat([x, -x]).float()
    for name in ("sin", "cos", "tan"):
        ref = getattr(torch, name)(x.double())
        got = getattr(torch, name)(x.to("wgpu")).cpu().double()
        err = (got - ref).abs()
        keep = ref.abs() < 10
        rel = (err / ref.abs().clamp_min(1e-30))[keep & (ref.abs() > 1e-3)]
        print(f"{name} [{lo:g},{hi:g}): max abs {err[keep].max().item():.3g}, max rel (|f|>1e-3) "
              f"{rel.max().item():.3g}, median rel {rel.median().item():.3g}")
sub = torch.tensor([1e-40, -3e-42, 1e-45, 5e-39], dtype=torch.float32)
w = sub.to("wgpu")
print("copy keeps subnormals:", torch.equal(w.cpu(), sub))
print("x * 1:", (w * 1.0).cpu().tolist(), "x * 2^30:", (w * 2.0 ** 30).cpu().tolist(), "CPU:", (sub * 2.0 ** 30).tolist())
print("x + 0:", (w + 0.0).cpu().tolist())
print("1 / x:", (1.0 / w).cpu().tolist(), "CPU:", (1.0 / sub).tolist())
print("1e-30 * 1e-10:", (torch.tensor([1e-30]).to("wgpu") * 1e-10).cpu().tolist(), "CPU:", (torch.tensor([1e-30]) * 1e-10).tolist())
