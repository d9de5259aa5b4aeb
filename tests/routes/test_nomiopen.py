"""Route `nomiopen`: registration bookkeeping, exercised on the CPU dispatch key; GPU tests at the end.

On a machine without a GPU the route registers its kernels for "CPU" instead of "CUDA" (enable's
dispatch_key argument), which drives the same torch.library and autograd machinery. What only a GPU
shows (the CUDA key, cuDNN being bypassed, speed) is in the `gpu`-marked tests and in
benchmarks/bench_conv.py and benchmarks/ddp_nomiopen.py.
"""
from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import navitrain.routes.nomiopen as nomiopen
from navitrain.routes import registry

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA/ROCm device")


@pytest.fixture(autouse=True)
def _route_off():
    nomiopen.disable()
    yield
    nomiopen.disable()


def _calls() -> int:
    return sum(nomiopen.stats().values())


def _small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1, groups=2), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.Conv2d(16, 8, 1),
        nn.ConvTranspose2d(8, 4, 2, stride=2), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))


def _training_step(model, x, y):
    model.zero_grad()
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters()]


def test_route_is_registered():
    assert "nomiopen" in registry.names()
    route = registry.get("nomiopen")
    assert route.name == "nomiopen" and "BLAS" in route.summary


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only answer")
def test_without_a_gpu_the_route_is_unavailable_and_prepare_says_why():
    route = registry.get("nomiopen")
    availability = route.availability()
    assert not availability.ok and "CPU-only" in availability.reason
    with pytest.raises(RuntimeError, match="no usable CUDA/ROCm device"):
        route.prepare()
    assert not nomiopen.is_enabled()


def test_enabled_route_runs_convolutions_and_matches_aten_training():
    model = _small_cnn()
    x, y = torch.randn(4, 3, 12, 12), torch.tensor([0, 1, 2, 1])
    ref_loss, ref_grads = _training_step(copy.deepcopy(model), x, y)
    before = _calls()
    with nomiopen.enabled("CPU"):
        loss, grads = _training_step(copy.deepcopy(model), x, y)
    stats = nomiopen.stats()
    assert _calls() > before
    assert any(k.startswith("weight_grad:") for k in stats) and any(k.startswith("input_grad:") for k in stats)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_disable_unregisters_and_restores_cudnn_setting():
    saved = torch.backends.cudnn.enabled
    try:
        torch.backends.cudnn.enabled = True
        nomiopen.enable("CPU")
        assert nomiopen.is_enabled() and torch.backends.cudnn.enabled is False
        nomiopen.disable()
        assert not nomiopen.is_enabled() and torch.backends.cudnn.enabled is True
        before = _calls()
        F.conv2d(torch.randn(1, 2, 5, 5), torch.randn(3, 2, 3, 3))
        assert _calls() == before  # aten's own kernel again
        nomiopen.disable()  # idempotent
    finally:
        torch.backends.cudnn.enabled = saved


def test_enable_is_idempotent_but_refuses_a_second_dispatch_key():
    nomiopen.enable("CPU")
    nomiopen.enable("CPU")
    with pytest.raises(RuntimeError, match="already enabled for CPU"):
        nomiopen.enable("CUDA")
    before = _calls()
    F.conv2d(torch.randn(1, 2, 5, 5), torch.randn(3, 2, 3, 3))
    assert _calls() == before + 1  # registered once, not twice


def test_context_manager_leaves_a_route_that_was_already_on_alone():
    with nomiopen.enabled("CPU"):
        assert nomiopen.is_enabled()
    assert not nomiopen.is_enabled()
    nomiopen.enable("CPU")
    with nomiopen.enabled("CPU"):
        pass
    assert nomiopen.is_enabled()


def test_unbatched_conv2d_goes_through_the_route():
    # F.conv2d batchifies a 3-d input before aten::convolution; the route must see a batch of one.
    x, w = torch.randn(2, 7, 7), torch.randn(4, 2, 3, 3)
    ref = F.conv2d(x, w, padding=1)
    with nomiopen.enabled("CPU"):
        got = F.conv2d(x, w, padding=1)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


def test_importing_the_route_does_not_import_torch():
    code = "import sys, navitrain.routes.nomiopen; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# --------------------------------------------------------------------------------- GPU only
@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.float16, 2e-2)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_gpu_route_matches_cudnn(dtype, tol, channels_last, monkeypatch):
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    model = _small_cnn().cuda().to(dtype).to(memory_format=fmt)
    x = torch.randn(8, 3, 16, 16, device="cuda", dtype=dtype).contiguous(memory_format=fmt)
    y = torch.randint(0, 3, (8,), device="cuda")
    ref_loss, ref_grads = _training_step(copy.deepcopy(model), x, y)
    ref_out = model(x)
    before = _calls()
    route = registry.get("nomiopen")
    device = route.prepare()
    try:
        assert device.type == "cuda" and torch.backends.cudnn.enabled is False
        out = model(x)
        loss, grads = _training_step(copy.deepcopy(model), x, y)
    finally:
        route.release()
    assert _calls() > before
    assert out.is_contiguous(memory_format=fmt) == ref_out.is_contiguous(memory_format=fmt)
    torch.testing.assert_close(out.float(), ref_out.float(), rtol=tol, atol=tol)
    torch.testing.assert_close(loss.float(), ref_loss.float(), rtol=tol, atol=tol)
    for got, want in zip(grads, ref_grads):
        scale = want.float().abs().max().clamp_min(1e-6)
        assert float((got.float() - want.float()).abs().max() / scale) < 10 * tol


@pytest.mark.gpu
@gpu
def test_gpu_availability_names_the_card():
    availability = registry.get("nomiopen").availability()
    assert availability.ok and torch.cuda.get_device_name(0) in availability.reason
