"""Ops that libraries define with torch.library.custom_op (Hugging Face's MoE grouped matmul for compiled code,
for one) on the wgpu device: the library's own Python implementation runs with wgpu tensors (its ops on the
device), forward and backward, instead of a counted CPU fallback; an op made for the CPU only still falls back,
counted; a kernel a user registers for "wgpu" is the one used."""
import pytest
import torch

import navitrain.wgpu as nw


@torch.library.custom_op("navitrain_test::gated_mix", mutates_args=())
def gated_mix(x: torch.Tensor, w: torch.Tensor, k: float) -> torch.Tensor:
    return torch.sigmoid(x @ w) * x.sum(-1, keepdim=True) + k


@gated_mix.register_fake
def _(x, w, k):
    return x.new_empty(x.shape[0], w.shape[1])


def _gated_mix_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[0], inputs[1])


def _gated_mix_backward(ctx, grad):
    x, w = ctx.saved_tensors
    with torch.enable_grad():
        x, w = x.detach().requires_grad_(), w.detach().requires_grad_()
        out = torch.sigmoid(x @ w) * x.sum(-1, keepdim=True)
        gx, gw = torch.autograd.grad(out, (x, w), grad)
    return gx, gw, None


gated_mix.register_autograd(_gated_mix_backward, setup_context=_gated_mix_setup)


@torch.library.custom_op("navitrain_test::doubled_on_cpu", mutates_args=(), device_types="cpu")
def doubled_on_cpu(x: torch.Tensor) -> torch.Tensor:
    return x * 2


def _inputs(seed):
    g = torch.Generator().manual_seed(seed)
    x, w = torch.randn(6, 5, generator=g, dtype=torch.float64), torch.randn(5, 4, generator=g, dtype=torch.float64)
    x[2, 3] = float("nan")
    return x, w


def test_a_device_generic_custom_op_runs_on_the_device_forward_and_backward():
    x64, w64 = _inputs(1)
    want = gated_mix(x64, w64, 0.25)
    xr, wr = x64.clone().requires_grad_(), w64.clone().requires_grad_()
    gated_mix(xr, wr, 0.25)[:, :3].sum().backward()
    nw.reset_fallback_counts()
    x, w = x64.float().to("wgpu").requires_grad_(), w64.float().to("wgpu").requires_grad_()
    out = gated_mix(x, w, 0.25)
    out[:, :3].sum().backward()
    torch.testing.assert_close(out.cpu().double(), want, rtol=1e-5, atol=1e-5, equal_nan=True)
    torch.testing.assert_close(x.grad.cpu().double(), xr.grad, rtol=1e-5, atol=1e-5, equal_nan=True)
    torch.testing.assert_close(w.grad.cpu().double(), wr.grad, rtol=1e-5, atol=1e-5, equal_nan=True)
    assert not nw.fallback_report()["cpu_fallbacks"]


def test_a_cpu_only_custom_op_falls_back_counted_and_a_wgpu_kernel_is_used_once_registered(monkeypatch):
    monkeypatch.setenv("NAVITRAIN_WGPU_STRICT", "0")
    x = torch.randn(7, generator=torch.Generator().manual_seed(2))
    nw.reset_fallback_counts()
    with pytest.warns(UserWarning, match="runs on the CPU"):
        assert doubled_on_cpu(x.to("wgpu")).cpu().equal(x * 2)
    assert nw.fallback_report()["cpu_fallbacks"] == {"navitrain_test.doubled_on_cpu.default": 1}
    calls = []

    @doubled_on_cpu.register_kernel("wgpu")
    def _(t):
        calls.append(t.device.type)
        return t + t

    nw.reset_fallback_counts()
    assert doubled_on_cpu(x.to("wgpu")).cpu().equal(x * 2)
    assert calls == ["wgpu"] and not nw.fallback_report()["cpu_fallbacks"]
