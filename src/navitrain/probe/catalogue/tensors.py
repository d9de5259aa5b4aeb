"""Allocation, host/device copies, views, dtype casts, indexing and the device's random numbers."""
from __future__ import annotations

from navitrain.probe.cases import case
from navitrain.probe.inputs import randint, randn, torch


@case("alloc-fill", dtype="float32", group="tensors")
def alloc_fill(device, dtype):
    """Allocate on the device with factory functions and fill in place."""
    a = torch.full((3, 5), 2.5, device=device, dtype=dtype)
    b = torch.ones(4, 4, device=device, dtype=dtype)
    c = torch.arange(12, device=device, dtype=dtype).reshape(3, 4)
    d = torch.empty(6, 7, device=device, dtype=dtype)
    d.fill_(-1.25)
    e = torch.zeros(2, 3, device=device, dtype=dtype).add_(randn(2, 3, device=device, dtype=dtype))
    f = torch.eye(5, device=device, dtype=dtype)
    return a, b, c, d, e, f


@case("copy-roundtrip", dtype="float32", essential=True, group="tensors")
def copy_roundtrip(device, dtype):
    """Host to device and back, contiguous and strided, large enough to cross allocator size classes."""
    x = randn(257, 129, dtype=dtype)
    big = randn(1 << 18, dtype=dtype)
    on_device = x.to(device)
    strided = x.t().to(device)              # non-contiguous source
    sliced = on_device[3:200:7, 1::2].cpu() # strided read back
    ints = randint(1000, 64).to(device)
    return on_device.cpu(), strided.cpu(), sliced, big.to(device).cpu(), ints.cpu()


@case("copy-on-device", dtype="float32", group="tensors")
def copy_on_device(device, dtype):
    """Device-to-device copies: clone, copy_, cat, stack, contiguous of a permuted view."""
    x = randn(4, 6, 8, device=device, dtype=dtype)
    y = randn(4, 6, 8, device=device, dtype=dtype)
    dst = torch.empty_like(x)
    dst.copy_(y)
    return (x.clone(), dst, torch.cat([x, y], dim=1), torch.stack([x, y]),
            x.permute(2, 0, 1).contiguous(), x[:, ::2, 1:5].contiguous())


@case("views-reshape", dtype="float32", group="tensors")
def views_reshape(device, dtype):
    """view, reshape, transpose, expand, narrow, unsqueeze, flip, roll."""
    x = randn(2, 3, 4, 5, device=device, dtype=dtype)
    return (x.view(6, 20), x.transpose(1, 3).reshape(-1, 3), x[:, :1].expand(2, 3, 4, 5) * 1,
            x.narrow(2, 1, 2) + 0, x.unsqueeze(0).squeeze(0) + 0, x.flip(1), torch.roll(x, 2, dims=3))


@case("dtype-casts", dtype="float32", group="tensors")
def dtype_casts(device, dtype):
    """Casts between float32, float16, bfloat16, int32, int64 and bool on the device."""
    x = randn(64, 33, device=device, dtype=torch.float32) * 40
    return (x.to(torch.float16).to(torch.float32), x.to(torch.bfloat16).to(torch.float32),
            x.to(torch.int32), x.to(torch.int64), (x > 0), (x > 0).to(torch.float32))


@case("index-gather-scatter", dtype="float32", group="tensors")
def index_gather_scatter(device, dtype):
    """index_select, gather, scatter_add, index_add, masked_fill, boolean masks (used by embedding
    backward, cross-entropy and optimisers)."""
    x = randn(10, 16, device=device, dtype=dtype)
    idx = randint(10, 7, device=device)
    g_idx = randint(16, 10, 4, device=device)
    src = randn(10, 4, device=device, dtype=dtype)
    scattered = torch.zeros(10, 16, device=device, dtype=dtype).scatter_add(1, g_idx, src)
    added = torch.zeros(10, 16, device=device, dtype=dtype).index_add(0, idx, randn(7, 16, device=device, dtype=dtype))
    mask = x > 0.3
    return (x.index_select(0, idx), torch.gather(x, 1, g_idx), scattered, added,
            x.masked_fill(mask, -2.0), x[mask].sum().reshape(1), x[idx, 3])


@case("random-on-device", dtype="float32", rtol=0.0, atol=0.05, group="tensors")
def random_on_device(device, dtype):
    """The device's own generators: statistics of randn, rand, randint and randperm (their values
    differ from the CPU's by design, so only statistics are compared, within 0.05)."""
    n = 1 << 16
    normal = torch.randn(n, device=device, dtype=dtype).cpu().double()
    uniform = torch.rand(n, device=device, dtype=dtype).cpu().double()
    ints = torch.randint(0, 10, (n,), device=device).cpu()
    perm = torch.randperm(1000, device=device).cpu()
    stats = torch.stack([normal.mean(), normal.std(), uniform.mean(), ints.double().mean() / 10,
                         ints.double().std() / 10])
    in_range = torch.stack([uniform.min() >= 0, uniform.max() < 1, ints.min() == 0, ints.max() == 9])
    return {"statistics": stats, "values in range": in_range, "randperm is a permutation": perm.sort().values}
