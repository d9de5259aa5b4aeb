"""torch.autocast('wgpu'): products and convolutions in half precision, sensitive ops in fp32, training
with and without GradScaler."""
import pytest
import torch
import torch.nn.functional as F

import navitrain.wgpu as nw


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_autocast_casts_like_cuda_does(dtype):
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(8, 16, generator=g), torch.randn(16, 4, generator=g)
    img, k = torch.randn(2, 3, 8, 8, generator=g), torch.randn(4, 3, 3, 3, generator=g)
    with torch.autocast("wgpu", dtype=dtype):
        y = x.to("wgpu") @ w.to("wgpu")
        c = F.conv2d(img.to("wgpu"), k.to("wgpu"))
        s = torch.softmax(y, -1)
        ln = F.layer_norm(y, (4,))
    assert y.dtype == dtype and c.dtype == dtype
    assert s.dtype == torch.float32 and ln.dtype == torch.float32
    tol = 2e-2 if dtype == torch.bfloat16 else 2e-3
    torch.testing.assert_close(y.float().cpu(), x @ w, rtol=tol, atol=tol * 4)
    torch.testing.assert_close(c.float().cpu(), F.conv2d(img, k), rtol=tol, atol=tol * 8)


def test_bf16_autocast_training_step_has_no_fallbacks():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                                torch.nn.Flatten(), torch.nn.Linear(8 * 8 * 8, 5)).to("wgpu")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(16, 3, 8, 8, generator=g).to("wgpu"), torch.randint(0, 5, (16,), generator=g).to("wgpu")
    nw.reset_fallback_counts()
    losses = []
    for _ in range(5):
        with torch.autocast("wgpu", dtype=torch.bfloat16):
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert nw.fallback_report()["total_fallback_calls"] == 0
    assert losses[-1] < losses[0]


def test_fp16_with_grad_scaler_trains(lenient):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4)).to("wgpu")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("wgpu")
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(32, 16, generator=g).to("wgpu"), torch.randint(0, 4, (32,), generator=g).to("wgpu")
    nw.reset_fallback_counts()
    losses = []
    for _ in range(8):
        with torch.autocast("wgpu", dtype=torch.float16):
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    # GradScaler computes its inverse scale in float64, which has no kernels: those scalar ops (and only
    # those) run on the CPU, counted.
    assert set(nw.fallback_report()["cpu_fallbacks"]) <= {"aten._to_copy.default", "aten.reciprocal.default"}
