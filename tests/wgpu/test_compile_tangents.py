"""A compiled backward whose incoming gradient has another layout than the traced output (ConvNeXt's
LayerNorm2d returns a permuted view): AOTAutograd restrides it, and the copy must still look plain to it
(navitrain.wgpu.compile_tangents). Before the fix: "expected SubclassCreationMeta, got PlainTensorMeta"."""
import copy

import torch
from torch import nn

import navitrain.wgpu  # noqa: F401  (registers the device and the backend)
from navitrain.wgpu.compile_tangents import patch_tangent_restride


class LayerNorm2d(nn.LayerNorm):
    """torchvision's ConvNeXt LayerNorm2d: normalise over channels of an NCHW tensor through permutes."""

    def forward(self, x):
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def test_compiled_permuted_output_backward_matches_eager_and_the_cpu():
    torch._dynamo.reset()  # (the backend installs the patch when torch.compile loads it)
    g = torch.Generator().manual_seed(3)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), LayerNorm2d(8))
    x = torch.randn(2, 3, 9, 9, generator=g)
    weights = torch.randn(2, 8, 7, 7, generator=g)  # a loss whose gradient does not cancel in the norm
    x[0, 1, 2, 3] = float("nan")  # one poisoned sample: NaN must reach the same places as on the CPU

    def grads(m, device, compiled):
        m = copy.deepcopy(m).to(device)
        f = torch.compile(m, backend="wgpu") if compiled else m
        out = f(x.to(device))
        (out * weights.to(device)).nan_to_num(0.0).sum().backward()
        return [p.grad.cpu() for p in m.parameters()]

    ref = grads(model, "cpu", False)
    eager = grads(model, "wgpu", False)
    for _ in range(2):  # the second call replays the captured graphs
        compiled = grads(model, "wgpu", True)
        for r, e, c in zip(ref, eager, compiled):
            torch.testing.assert_close(c, e, rtol=1e-5, atol=1e-5, equal_nan=True)
            torch.testing.assert_close(c, r, rtol=1e-4, atol=1e-4, equal_nan=True)
    torch._dynamo.reset()


def test_the_patch_is_installed_once_and_keeps_torchs_function():
    from torch._functorch._aot_autograd import runtime_wrappers

    patch_tangent_restride()
    wrapped = runtime_wrappers.coerce_to_expected_memory_format
    assert patch_tangent_restride() is False
    assert runtime_wrappers.coerce_to_expected_memory_format is wrapped
    assert wrapped.__wrapped__.__module__ == runtime_wrappers.__name__
