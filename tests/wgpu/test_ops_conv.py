"""Convolution (implicit GEMM) against the CPU: OpInfo samples for conv1d/conv2d/conv_transpose2d, and
targeted float64-referenced cases for strides, padding, dilation, groups, depthwise, transposed with
output padding, channels_last, 'same' padding and split-K weight gradients."""
import pytest
import torch
import torch.nn.functional as F

from tests.wgpu import opinfo


@pytest.mark.parametrize("name", ["nn.functional.conv1d", "nn.functional.conv2d", "nn.functional.conv_transpose2d"])
def test_conv_opinfo(name):
    op = opinfo.find(name)
    assert opinfo.check(op, torch.float32, max_samples=10, rtol=1e-4, atol=1e-4) > 0


CASES = [  # N, C, H, W, OC, k, stride, pad, dil, groups, channels_last, transposed, output_padding
    (1, 3, 32, 32, 16, 3, 1, 0, 1, 1, False, False, 0),
    (2, 8, 9, 7, 12, 3, 2, 1, 1, 1, False, False, 0),
    (2, 8, 9, 7, 12, 3, 1, 2, 2, 1, False, False, 0),
    (2, 8, 10, 10, 12, 3, 1, 1, 1, 4, False, False, 0),
    (2, 8, 10, 10, 8, 3, 1, 1, 1, 8, False, False, 0),     # depthwise
    (2, 16, 10, 10, 32, 1, 1, 0, 1, 1, False, False, 0),   # 1x1
    (3, 5, 11, 13, 7, 5, 2, 2, 1, 1, False, False, 0),
    (8, 32, 16, 16, 32, 3, 1, 1, 1, 1, False, False, 0),   # grad-weight split over K
    (2, 8, 9, 7, 12, 3, 2, 1, 1, 1, True, False, 0),
    (8, 32, 16, 16, 32, 3, 1, 1, 1, 1, True, False, 0),
    (2, 8, 10, 10, 12, 3, 1, 1, 1, 4, True, False, 0),
    (2, 8, 9, 7, 12, 3, 2, 1, 1, 1, False, True, 1),
    (2, 8, 9, 7, 12, 4, 2, 1, 1, 1, False, True, 0),
    (2, 8, 9, 7, 12, 3, 1, 1, 1, 4, False, True, 0),
    # 1x1 layers run as plain products (conv1x1.py): strided shortcuts, odd sizes, both layouts
    (3, 12, 9, 7, 20, 1, 2, 0, 1, 1, False, False, 0),
    (3, 12, 9, 7, 20, 1, 2, 0, 1, 1, True, False, 0),
    (2, 16, 8, 8, 32, 1, 1, 0, 1, 1, True, False, 0),
    (2, 7, 5, 6, 5, 1, 3, 0, 1, 1, False, False, 0),
    # strided grad-input by output phase: phases no tap reaches (k < s), groups, channels_last
    (2, 6, 10, 11, 4, 2, 3, 0, 1, 1, False, False, 0),
    (2, 8, 9, 7, 12, 3, 2, 1, 1, 4, False, False, 0),
    (2, 8, 9, 7, 12, 3, 2, 1, 1, 4, True, False, 0),
    (2, 6, 12, 12, 8, 3, 2, 1, 1, 1, True, False, 0),
]


@pytest.mark.parametrize("case", CASES, ids=[str(i) for i in range(len(CASES))])
def test_conv2d_forward_and_both_gradients(case):
    N, C, H, W, OC, k, s, p, d, g, cl, tr, op = case
    gen = torch.Generator().manual_seed(hash(case) % 1000)
    x = torch.randn(N, C, H, W, generator=gen, dtype=torch.float64)
    w = torch.randn(*((C, OC // g) if tr else (OC, C // g)), k, k, generator=gen, dtype=torch.float64)
    b = torch.randn(OC, generator=gen, dtype=torch.float64)
    xs, ws, bs = (t.clone().requires_grad_() for t in (x, w, b))
    if tr:
        ref = F.conv_transpose2d(xs, ws, bs, s, p, op, g, d)
    else:
        ref = F.conv2d(xs, ws, bs, s, p, d, g)
    gy = torch.randn(ref.shape, generator=gen, dtype=torch.float64)
    ref.backward(gy)
    xd = x.float()
    if cl:
        xd = xd.contiguous(memory_format=torch.channels_last)
    xd = xd.to("wgpu").requires_grad_()
    wd, bd = w.float().to("wgpu").requires_grad_(), b.float().to("wgpu").requires_grad_()
    y = F.conv_transpose2d(xd, wd, bd, s, p, op, g, d) if tr else F.conv2d(xd, wd, bd, s, p, d, g)
    if cl and not tr:
        assert y.is_contiguous(memory_format=torch.channels_last), "channels_last in, channels_last out"
    y.backward(gy.float().to("wgpu"))
    for got, want, what in ((y, ref, "output"), (xd.grad, xs.grad, "grad_input"), (wd.grad, ws.grad, "grad_weight"),
                            (bd.grad, bs.grad, "grad_bias")):
        err = (got.detach().cpu().double() - want).abs().max().item() / (want.abs().max().item() + 1e-12)
        assert err < 2e-5, f"{what}: relative error {err:.2e}"


def test_conv_padding_same_and_conv1d_module():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(4, 6, 5, padding="same", dilation=2)
    x = torch.randn(2, 4, 9, 9)
    with torch.no_grad():  # a live CPU graph would keep the parameters from moving in place
        want = conv(x)
    torch.testing.assert_close(conv.to("wgpu")(x.to("wgpu")).cpu(), want, rtol=1e-4, atol=1e-5)
    conv1 = torch.nn.Conv1d(3, 5, 4, stride=2, padding=1)
    x1 = torch.randn(2, 3, 17)
    with torch.no_grad():
        want1 = conv1(x1)
    torch.testing.assert_close(conv1.to("wgpu")(x1.to("wgpu")).cpu(), want1, rtol=1e-4, atol=1e-5)


def test_mixed_devices_get_a_clear_error():
    conv = torch.nn.Conv2d(2, 2, 3).to("wgpu")
    with pytest.raises(RuntimeError, match="same device"):
        conv(torch.randn(1, 2, 5, 5))


@pytest.mark.parametrize("case", [(2, 8, 9, 7, 12, 1, False), (4, 16, 8, 8, 16, 1, True), (1, 3, 10, 10, 4, 0, False),
                                  (2, 5, 6, 11, 7, 2, False)])
def test_winograd_forward_and_grad_input(case, monkeypatch):
    """F(2x2,3x3) for stride-1 3x3 layers (forced; 'auto' picks it only where it is faster)."""
    monkeypatch.setenv("NAVITRAIN_WGPU_CONV", "winograd")
    N, C, H, W, OC, p, cl = case
    gen = torch.Generator().manual_seed(sum(case[:5]))
    x = torch.randn(N, C, H, W, generator=gen, dtype=torch.float64, requires_grad=True)
    w = torch.randn(OC, C, 3, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    b = torch.randn(OC, generator=gen, dtype=torch.float64, requires_grad=True)
    ref = F.conv2d(x, w, b, 1, p)
    gy = torch.randn(ref.shape, generator=gen, dtype=torch.float64)
    ref.backward(gy)
    xd = x.detach().float()
    xd = (xd.contiguous(memory_format=torch.channels_last) if cl else xd).to("wgpu").requires_grad_()
    wd, bd = w.detach().float().to("wgpu").requires_grad_(), b.detach().float().to("wgpu").requires_grad_()
    y = F.conv2d(xd, wd, bd, 1, p)
    y.backward(gy.float().to("wgpu"))
    for got, want, what in ((y, ref, "output"), (xd.grad, x.grad, "grad_input"), (wd.grad, w.grad, "grad_weight")):
        err = (got.detach().cpu().double() - want).abs().max().item() / want.abs().max().item()
        assert err < 2e-5, f"{what}: relative error {err:.2e}"
