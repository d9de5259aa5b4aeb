"""Half conv_transpose2d and 3-D convolutions (forward and gradients) round once, as the CPU does: the bias and
the depth taps are summed in float32. Summed in the half dtype they rounded twice or more and were up to a unit
in the last place off -- hundreds of units relative to a result that cancels to near 0 (issue 17)."""
import pytest
import torch
import torch.nn.functional as F


def _assert_rounded_once(got: torch.Tensor, exact: torch.Tensor, magnitude: torch.Tensor, what: str) -> None:
    """got (a half dtype) is exact (float64) correctly rounded, but for float32's own summing error: at most
    half a unit in got's last place plus a few float32 epsilons of magnitude (the sum of the terms' sizes)."""
    eps = torch.finfo(got.dtype).eps
    _, exponent = torch.frexp(exact)
    ulp = torch.ldexp(torch.full_like(exact, eps), exponent - 1).clamp_min(torch.finfo(got.dtype).tiny * eps)
    excess = ((got.double() - exact).abs() - ulp / 2 - 8 * torch.finfo(torch.float32).eps * magnitude) / ulp
    assert got.dtype == exact.to(got.dtype).dtype and excess.max().item() <= 0, \
        f"{what}: {(excess > 0).sum().item()} of {excess.numel()} elements more than half an ulp off " \
        f"(up to {excess.max().item() + 0.5:.2f} ulp)"


CASES = {  # conv, input shape, weight shape, keyword arguments
    "2d strided": (F.conv_transpose2d, (2, 4, 5, 6), (4, 3, 3, 3), {"stride": 2, "padding": 1}),
    "2d groups dilated": (F.conv_transpose2d, (2, 4, 4, 4), (4, 2, 4, 5),
                          {"stride": (3, 2), "padding": (1, 2), "output_padding": (2, 3), "groups": 2,
                           "dilation": (4, 4)}),
    "3d transposed": (F.conv_transpose3d, (1, 3, 4, 4, 4), (3, 3, 3, 3, 3),
                      {"stride": 2, "padding": 2, "output_padding": 1}),
    "3d": (F.conv3d, (2, 3, 5, 6, 5), (4, 3, 3, 2, 3), {"stride": (1, 2, 1), "padding": 1}),
}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", list(CASES))
def test_half_conv_transpose_is_rounded_once(case, dtype):
    conv, x_shape, w_shape, kwargs = CASES[case]
    gen = torch.Generator().manual_seed(17)
    x = (4 * torch.randn(x_shape, generator=gen)).to(dtype)
    w = (2 * torch.randn(w_shape, generator=gen)).to(dtype)
    out_channels = w_shape[1] * kwargs.get("groups", 1) if "transpose" in conv.__name__ else w_shape[0]
    bias = (8 * torch.randn(out_channels, generator=gen)).to(dtype)   # large: cancels against the sums
    exact = conv(x.double(), w.double(), bias.double(), **kwargs)
    magnitude = conv(x.double().abs(), w.double().abs(), bias.double().abs(), **kwargs)
    got = conv(x.to("wgpu"), w.to("wgpu"), bias.to("wgpu"), **kwargs).cpu()
    assert got.dtype == dtype and got.shape == exact.shape
    _assert_rounded_once(got, exact, magnitude, case)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", ["3d transposed", "3d"])
def test_half_3d_gradients_are_rounded_once(case, dtype):
    conv, x_shape, w_shape, kwargs = CASES[case]
    gen = torch.Generator().manual_seed(18)
    x, w = (4 * torch.randn(x_shape, generator=gen)).to(dtype), (2 * torch.randn(w_shape, generator=gen)).to(dtype)
    x64, w64 = x.double().requires_grad_(), w.double().requires_grad_()
    out64 = conv(x64, w64, **kwargs)
    seed = torch.randn(out64.shape, generator=gen).to(dtype)
    exact = torch.autograd.grad(out64, (x64, w64), seed.double())
    xa, wa = x64.detach().abs().requires_grad_(), w64.detach().abs().requires_grad_()
    magnitudes = torch.autograd.grad(conv(xa, wa, **kwargs), (xa, wa), seed.double().abs())
    xd, wd = x.to("wgpu").requires_grad_(), w.to("wgpu").requires_grad_()
    got = torch.autograd.grad(conv(xd, wd, **kwargs), (xd, wd), seed.to("wgpu"))
    for name, g, e, m in zip(("x", "weight"), got, exact, magnitudes):
        assert g.dtype == dtype
        _assert_rounded_once(g.cpu(), e, m, f"{case} grad {name}")


def test_half_conv_transpose_keeps_nan_and_inf():
    x = torch.randn(1, 2, 3, 3).half()
    x[0, 0, 1, 1], x[0, 1, 0, 0] = float("nan"), float("inf")
    w, bias = torch.randn(2, 2, 2, 2).half(), torch.randn(2).half()
    exact = F.conv_transpose2d(x.double(), w.double(), bias.double(), stride=2).half()
    got = F.conv_transpose2d(x.to("wgpu"), w.to("wgpu"), bias.to("wgpu"), stride=2).cpu()
    torch.testing.assert_close(got, exact, rtol=1e-3, atol=1e-3, equal_nan=True)
