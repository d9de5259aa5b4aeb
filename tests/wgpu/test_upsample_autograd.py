"""Bilinear and nearest upsampling keep their own autograd on wgpu (ops/upsample_autograd.py): compiled
graphs call the upsampling backward kernels instead of PyTorch's decomposition into accumulating
`index_put` scatters (a sort each here), and bilinear's forward kernel instead of four `_unsafe_index`
gathers; the values, the gradients and the gradients' own gradients stay the CPU's."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import navitrain.wgpu.compile as wc
from navitrain.bench import models

pytestmark = pytest.mark.usefixtures("fresh_compile_state")

CALLS = {
    "bilinear-scale": lambda t: F.interpolate(t, scale_factor=2, mode="bilinear"),
    "bilinear-size-align": lambda t: F.interpolate(t, size=(11, 6), mode="bilinear", align_corners=True),
    "bilinear-odd-scale": lambda t: F.interpolate(t, scale_factor=(1.7, 0.6), mode="bilinear"),
    "nearest-scale": lambda t: F.interpolate(t, scale_factor=2, mode="nearest"),
    "nearest-size": lambda t: F.interpolate(t, size=(9, 13), mode="nearest"),
}


@pytest.mark.parametrize("call", list(CALLS), ids=list(CALLS))
def test_gradients_and_their_gradients_match_the_cpu(call):
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(2, 3, 5, 7, generator=gen, dtype=torch.float64)
    x[0, 0, 0, 0] = float("nan")   # a NaN travels through the gradients as on the CPU
    x[1, 2, 4, 6] = float("inf")
    results = []
    for device, dtype in (("cpu", torch.float64), ("wgpu", torch.float32)):
        xd = x.detach().to(dtype).to(device).requires_grad_()
        y = CALLS[call](xd)
        weight = torch.linspace(-1.0, 2.0, y.numel(), dtype=dtype).reshape(y.shape).to(device)
        (g,) = torch.autograd.grad((y * y * weight).sum(), xd, create_graph=True)
        (g * g.detach().sign().nan_to_num()).sum().backward()
        results.append((y.detach().cpu().double(), g.detach().cpu().double(), xd.grad.cpu().double()))
    for got, want, what in zip(results[1], results[0], ("output", "gradient", "gradient of the gradient")):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4, equal_nan=True, msg=lambda m: f"{what}: {m}")


class _Decoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 2, 3, padding=1)

    def forward(self, x):
        h = F.interpolate(torch.relu(self.a(x)), scale_factor=2, mode="bilinear")
        return F.interpolate(self.b(h), size=(15, 9), mode="nearest").mean(dim=(1, 2, 3))


def test_compiled_graphs_keep_upsampling_whole_and_train_like_the_cpu(monkeypatch):
    ops = []
    real_init = wc.CapturedGraphModule.__init__

    def noting(self, gm, kind, mutated=None):
        ops.extend(str(n.target) for n in gm.graph.nodes if n.op == "call_function")
        real_init(self, gm, kind, mutated)

    monkeypatch.setattr(wc.CapturedGraphModule, "__init__", noting)
    torch.manual_seed(12)
    base = _Decoder()
    gen = torch.Generator().manual_seed(13)
    batches = [(torch.randn(3, 3, 6, 5, generator=gen), torch.randn(3, generator=gen)) for _ in range(4)]
    losses = {}
    for device in ("cpu", "wgpu"):
        model = copy.deepcopy(base).to(device)
        step = models.train_step(model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), F.mse_loss)
        if device == "wgpu":
            step = torch.compile(step, backend="wgpu")
        losses[device] = [step(x.to(device), y.to(device)).item() for x, y in batches]
    assert losses["wgpu"] == pytest.approx(losses["cpu"], rel=1e-4, abs=1e-6)
    assert "aten.upsample_bilinear2d.default" in ops and "aten.upsample_bilinear2d_backward.default" in ops
    # nearest's forward below autograd still takes PyTorch's decomposition: one gather, no scatter
    assert "aten.upsample_nearest2d_backward.default" in ops
    assert not [op for op in ops if "index_put" in op]
    assert ops.count("aten._unsafe_index.Tensor") <= 1
    assert wc.stats["forward_replays"] >= 2 and wc.stats["backward_replays"] >= 2
