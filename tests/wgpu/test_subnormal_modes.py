"""navitrain.float_modes (does the adapter flush float32 subnormals?) and tests/wgpu/subnormals.py's
cpu_like_adapter, the CPU reference for adapters that do. On lavapipe nothing flushes; the helper's
flushing branch is exercised with the adapter's answer faked."""
from __future__ import annotations

import platform

import pytest
import torch

import navitrain.wgpu as nw
from tests.wgpu.subnormals import SMALLEST_NORMAL, cpu_flushes_subnormals, cpu_like_adapter

SUBNORMALS = [1e-40, -3e-42, 1e-45, 5e-39, -SMALLEST_NORMAL / 4]
X86 = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")


def test_the_probe_agrees_with_arithmetic_on_the_device():
    """adapter_info()'s answer against what x * 1, x * 2^30 and 1e-30 * 1e-10 really give on this adapter."""
    info = nw.adapter_info()
    assert isinstance(info["flushes_subnormals"], bool)
    x = torch.tensor(SUBNORMALS)
    dx = x.to("wgpu")
    times_one, scaled = (dx * 1.0).cpu(), (dx * 2.0 ** 30).cpu()
    product = (torch.tensor([1e-30]).to("wgpu") * torch.tensor([1e-10]).to("wgpu")).cpu()
    if info["flushes_subnormals"]:
        assert torch.equal(times_one, torch.zeros(len(SUBNORMALS))), times_one
        assert float(product) == 0.0
    else:
        assert torch.equal(times_one, x) and torch.equal(scaled, x * 2.0 ** 30), (times_one, scaled)
        assert float(product) == float(torch.tensor([1e-30]) * torch.tensor([1e-10]))
    if "llvmpipe" in info["name"].lower():
        assert info["flushes_subnormals"] is False  # Mesa's CPU driver keeps them (CI runs on it)
    assert nw.adapter_info()["flushes_subnormals"] is info["flushes_subnormals"]  # cached, same answer


def test_cpu_like_adapter_changes_nothing_where_the_adapter_keeps_subnormals():
    x = torch.tensor(SUBNORMALS)
    with cpu_like_adapter(flushes=False) as flushing:
        assert flushing is False
        assert torch.equal(x * 1.0, x)
    assert not cpu_flushes_subnormals()


@pytest.mark.skipif(not X86, reason="torch.set_flush_denormal works on x86 only (the helper skips there)")
def test_cpu_like_adapter_flushes_inside_and_restores_after():
    x = torch.tensor(SUBNORMALS)
    # big enough for PyTorch's intra-op threads: started before the flag is set (as here), they keep
    # subnormals, and half of this product came back subnormal before the helper ran the op on one thread
    big = torch.full((1 << 16,), 3e-39)
    assert float((big * 1.0).min()) == big[0]
    threads = torch.get_num_threads()
    with cpu_like_adapter(flushes=True) as flushing:
        assert flushing is True and cpu_flushes_subnormals()
        assert torch.equal(x * 1.0, torch.zeros(len(SUBNORMALS)))
        assert float((torch.tensor([1e-30]) * torch.tensor([1e-10]))) == 0.0
        assert torch.isinf(1.0 / torch.tensor([5e-39])).all()  # as the H100 divides
        assert float((big * 1.0).abs().max()) == 0.0
    assert torch.get_num_threads() == threads
    assert not cpu_flushes_subnormals()
    assert torch.equal(x * 1.0, x) and float((big * 1.0).min()) == big[0]


@pytest.mark.skipif(not X86, reason="torch.set_flush_denormal works on x86 only (the helper skips there)")
def test_cpu_like_adapter_keeps_a_flushing_cpu_flushing():
    assert torch.set_flush_denormal(True)
    try:
        with cpu_like_adapter(flushes=True):
            pass
        assert cpu_flushes_subnormals()
    finally:
        torch.set_flush_denormal(False)
    assert not cpu_flushes_subnormals()


def test_cpu_like_adapter_skips_where_the_cpu_cannot_flush(monkeypatch):
    monkeypatch.setattr(torch, "set_flush_denormal", lambda mode: False)
    with pytest.raises(pytest.skip.Exception, match="set_flush_denormal"):
        with cpu_like_adapter(flushes=True):
            raise AssertionError("the body must not run")
