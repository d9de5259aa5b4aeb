"""Batch norms' counter increments in a compiled graph as one kernel (navitrain.wgpu.fusion_counters,
issue 19): counters and running statistics after several steps equal eager's; a counter the graph reads
keeps its own add; NAVITRAIN_WGPU_FUSION=0."""
import copy

import pytest
import torch
from torch import nn

import navitrain.wgpu.compile as wc
from navitrain.wgpu import fusion, fusion_counters
from navitrain.wgpu.runtime import runtime

pytestmark = pytest.mark.usefixtures("fresh_compile_state")


class ReadsCounter(nn.Module):
    """A batch norm whose output is scaled by its own (new) counter: the graph reads it."""

    def __init__(self, c):
        super().__init__()
        self.bn = nn.BatchNorm2d(c)

    def forward(self, x):
        return self.bn(x) * (1 + 0.01 * self.bn.num_batches_tracked)


def _model():
    torch.manual_seed(2)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.Conv2d(4, 5, 1), ReadsCounter(5),
                         nn.Conv2d(5, 5, 1), nn.BatchNorm2d(5))


def _train(model, device, compiled, fuse=True, steps=4):
    fusion.ENABLED = fuse
    net = copy.deepcopy(model).to(device)
    run = torch.compile(net, backend="wgpu") if compiled else net
    g = torch.Generator().manual_seed(5)
    for _ in range(steps):
        x = (torch.randn(2, 3, 4, 4, generator=g) * 2 + 0.3).to(device)
        if device == "wgpu":
            runtime().synchronize()
            before = runtime().dispatch_count
        run(x).square().mean().backward()
        if device == "wgpu":
            dispatches = runtime().dispatch_count - before
    fusion.ENABLED = True
    return {k: v.detach().cpu() for k, v in net.state_dict().items()}, dispatches if device == "wgpu" else 0


def test_counters_in_one_kernel_equal_eager_and_cpu():
    model = _model()
    state_cpu, _ = _train(model, "cpu", compiled=False)
    state_eager, _ = _train(model, "wgpu", compiled=False)
    state, batched_dispatches = _train(model, "wgpu", compiled=True)
    assert wc.stats["counters_batched"] == 3 and wc.stats["forward_replays"] >= 1   # not the one the graph reads
    torch._dynamo.reset()
    wc.reset_stats()
    _, unfused_dispatches = _train(model, "wgpu", compiled=True, fuse=False)
    assert wc.stats["counters_batched"] == 0
    assert batched_dispatches < unfused_dispatches
    for name in state:
        if name.endswith("num_batches_tracked"):
            assert int(state[name]) == int(state_eager[name]) == int(state_cpu[name]) == 4, name
        torch.testing.assert_close(state[name], state_eager[name], rtol=1e-5, atol=1e-6, msg=name)
        torch.testing.assert_close(state[name], state_cpu[name], rtol=1e-4, atol=1e-5, msg=name)


def test_counter_increments_module_adds_one_in_each_integer_dtype():
    counters = [torch.tensor(v, dtype=d).to("wgpu") for v, d in
                ((0, torch.int64), (41, torch.int64), (2**31 - 2, torch.int64), (-3, torch.int32), (7, torch.int32))]
    fusion_counters.CounterIncrements()(*counters)
    assert [int(c.cpu()) for c in counters] == [1, 42, 2**31 - 1, -2, 8]
    assert [c.dtype for c in counters] == [torch.int64] * 3 + [torch.int32] * 2
