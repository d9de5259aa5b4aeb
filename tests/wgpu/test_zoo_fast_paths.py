"""What the torchvision zoo does around convolutions (issue 23), on wgpu against PyTorch on the CPU in
float64: ConvNeXt's LayerNorm over the channels of a permuted NCHW activation (read in place), the
squeeze-excitation global average pool as one autograd node, the activations of MobileNetV3 and
EfficientNet at NaN/+-inf, and DenseNet's growing torch.cat. Shapes are small zoo layers (batch 2)."""
import pytest
import torch
import torch.nn.functional as F

import navitrain.wgpu as nw

DEV = "wgpu"
NAN, INF = float("nan"), float("inf")


def _dev(t, grad=False):
    d = t.detach().to(DEV)
    return d.requires_grad_(grad)


def _ref(t, grad=False):
    return t.detach().double().requires_grad_(grad)


def _close(dev, ref, rtol=1e-4, atol=1e-5):
    torch.testing.assert_close(dev.cpu().double(), ref.detach().double(), rtol=rtol, atol=atol, equal_nan=True)


def _kernels(fn):
    """Names of the kernels `fn` dispatches, with their counts."""
    with nw.profile() as table:
        fn()
    return {name: v[0] for name, v in table.items()}


# -- LayerNorm over channels of NCHW (ConvNeXt's LayerNorm2d and CNBlock norm) --------------------------
def _layer_norm_2d(x, w, b):
    return F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), w, b, 1e-6).permute(0, 3, 1, 2)


@pytest.mark.parametrize("affine", [True, False])
def test_channel_layer_norm_reads_permuted_rows_in_place(affine):
    torch.manual_seed(1)
    N, C, H, W = 2, 24, 5, 7
    x = torch.randn(N, C, H, W) * 3 + 1
    w, b = (torch.randn(C), torch.randn(C)) if affine else (None, None)
    g = torch.randn(N, C, H, W)
    xd = _dev(x, True)
    wd, bd = (_dev(w, True), _dev(b, True)) if affine else (None, None)
    y = _layer_norm_2d(xd, wd, bd)
    y.backward(g.to(DEV))
    xr = _ref(x, True)
    wr, br = (_ref(w, True), _ref(b, True)) if affine else (None, None)
    yr = _layer_norm_2d(xr, wr, br)
    yr.backward(g.double())
    _close(y, yr)
    _close(xd.grad, xr.grad, atol=1e-4)
    if affine:
        _close(wd.grad, wr.grad, atol=1e-4)
        _close(bd.grad, br.grad, atol=1e-4)


def test_channel_layer_norm_makes_no_copies():
    torch.manual_seed(2)
    x = _dev(torch.randn(2, 16, 6, 6), True)
    ln = torch.nn.LayerNorm(16).to(DEV)
    g = torch.randn(2, 16, 6, 6, device=DEV)
    _layer_norm_2d(x, ln.weight, ln.bias).backward(g)  # compile first
    kernels = _kernels(lambda: _layer_norm_2d(x, ln.weight, ln.bias).backward(g))
    assert not any("copy" in k for k in kernels), kernels
    assert kernels["row_normalize"] == 1 and kernels["layer_norm_backward"] == 1, kernels


@pytest.mark.parametrize("make", [lambda t: t.permute(0, 2, 3, 1), lambda t: t.flatten()[::3],
                                  lambda t: t.reshape(2, 2, 3, 4, 5).permute(0, 2, 1, 3, 4)[:, :, :, 1:],
                                  lambda t: t.transpose(1, 3)],
                         ids=["nhwc_view", "1d_step", "5d_permuted", "transposed"])
def test_layer_norm_of_other_views(make):
    torch.manual_seed(11)
    x = torch.randn(2, 6, 4, 5)
    xd, xr = make(_dev(x)).requires_grad_(), make(x.double()).requires_grad_()
    n = xr.shape[-1]
    w, b = torch.randn(n), torch.randn(n)
    wd, bd, wr, br = _dev(w, True), _dev(b, True), _ref(w, True), _ref(b, True)
    g = torch.randn(xr.shape)
    y = F.layer_norm(xd, (n,), wd, bd)
    y.backward(g.to(DEV))
    yr = F.layer_norm(xr, (n,), wr, br)
    yr.backward(g.double())
    _close(y, yr)
    for dev, ref in ((xd.grad, xr.grad), (wd.grad, wr.grad), (bd.grad, br.grad)):
        _close(dev, ref, atol=1e-4)


def test_strided_layer_norm_special_values_and_mixed_layouts():
    # inf and NaN in some rows poison those rows only (NaN statistics, as the CPU's float32 Welford gives
    # when the inf is not a row's last element); the gradient arrives contiguous while x is permuted.
    torch.manual_seed(3)
    x = torch.randn(2, 8, 3, 4)
    x[0, 2, 1, 1] = NAN
    x[1, 5, 2, 3] = INF
    x[1, 0, 0, 0] = -INF
    xp, xr = _dev(x).permute(0, 2, 3, 1), x.permute(0, 2, 3, 1)
    w, b = torch.randn(8), torch.randn(8)
    y, mean, rstd = torch.ops.aten.native_layer_norm(xp, [8], w.to(DEV), b.to(DEV), 1e-5)
    yr, meanr, rstdr = torch.ops.aten.native_layer_norm(xr, [8], w, b, 1e-5)
    for dev, ref in ((y, yr), (mean, meanr), (rstd, rstdr)):
        _close(dev, ref)
    g = torch.randn(2, 3, 4, 8)
    out = torch.ops.aten.native_layer_norm_backward(g.to(DEV), xp, [8], mean, rstd, w.to(DEV), b.to(DEV),
                                                    [True, True, True])
    ref = torch.ops.aten.native_layer_norm_backward(g, xr, [8], meanr, rstdr, w, b,
                                                    [True, True, True])
    for dev, r in zip(out, ref):
        _close(dev, r, atol=1e-4)


# -- squeeze-excitation: global average pool as one node, the gate, their gradients ------------------------
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("gate", [torch.sigmoid, F.hardsigmoid])
def test_squeeze_excitation_block(channels_last, gate):
    torch.manual_seed(4)
    N, C, H, W = 2, 12, 9, 7
    x = torch.randn(N, C, H, W)
    fc1, fc2 = torch.randn(4, C, 1, 1) / 3, torch.randn(C, 4, 1, 1) / 2
    g = torch.randn(N, C, H, W)
    fmt = torch.channels_last if channels_last else torch.contiguous_format

    def se(x, fc1, fc2):
        s = F.adaptive_avg_pool2d(x, 1)
        return x * gate(F.conv2d(F.relu(F.conv2d(s, fc1)), fc2))

    xd = _dev(x).contiguous(memory_format=fmt).requires_grad_()
    fd1, fd2 = _dev(fc1, True), _dev(fc2, True)
    y = se(xd, fd1, fd2)
    y.backward(g.to(DEV))
    xr, fr1, fr2 = _ref(x, True), _ref(fc1, True), _ref(fc2, True)
    se(xr, fr1, fr2).backward(g.double())
    _close(y, se(xr, fr1, fr2))
    for dev, ref in ((xd.grad, xr.grad), (fd1.grad, fr1.grad), (fd2.grad, fr2.grad)):
        _close(dev, ref, atol=1e-4)


@pytest.mark.parametrize("shape,channels_last", [((2, 5, 4, 6), False), ((2, 5, 4, 6), True), ((3, 2, 3), False),
                                                 ((2, 3, 40, 40), False)])
def test_global_average_pool_layouts_and_special_values(shape, channels_last):
    torch.manual_seed(5)
    x = torch.randn(shape)
    x.view(-1)[3] = NAN
    x.view(-1)[-2] = INF
    x.view(-1)[x.numel() // 2] = -INF
    xd = _dev(x)
    if channels_last:
        xd = xd.contiguous(memory_format=torch.channels_last)
    kernels = _kernels(lambda: F.adaptive_avg_pool2d(xd, 1))
    assert kernels == {"global_avg_pool": 1}, kernels
    out = F.adaptive_avg_pool2d(xd, 1)
    ref = F.adaptive_avg_pool2d(x.double(), 1)
    _close(out, ref)
    assert out.stride() == F.adaptive_avg_pool2d(x.contiguous(memory_format=torch.channels_last)
                                                 if channels_last else x, 1).stride()
    # A strided (sliced) input is read in place, and the backward hands back the mean's gradient.
    xs = _dev(torch.randn(2, 6, 8, 10))[:, ::2, 1:, ::3].requires_grad_()
    xr = xs.detach().cpu().double().requires_grad_()
    gy = torch.randn(2, 3, 1, 1)
    F.adaptive_avg_pool2d(xs, (1, 1)).backward(gy.to(DEV))
    F.adaptive_avg_pool2d(xr, (1, 1)).backward(gy.double())
    _close(xs.grad, xr.grad)


def test_other_adaptive_sizes_and_double_backward_still_work():
    torch.manual_seed(6)
    x = torch.randn(2, 3, 7, 5)
    _close(F.adaptive_avg_pool2d(_dev(x), (2, 3)), F.adaptive_avg_pool2d(x.double(), (2, 3)))
    xd, xr = _dev(x, True), _ref(x, True)
    for t in (xd, xr):
        (g,) = torch.autograd.grad((F.adaptive_avg_pool2d(t, 1) ** 2).sum(), t, create_graph=True)
        (g * g).sum().backward()
    _close(xd.grad, xr.grad)


# -- activations of MobileNetV3 / EfficientNet / ConvNeXt: one kernel each way, NaN and inf as the CPU -----
_ACTIVATIONS = [F.hardswish, F.hardsigmoid, F.silu, F.gelu, lambda t: F.gelu(t, approximate="tanh"), F.relu6]


@pytest.mark.parametrize("act", _ACTIVATIONS, ids=["hardswish", "hardsigmoid", "silu", "gelu", "gelu_tanh", "relu6"])
def test_activation_forward_backward_special_values(act):
    torch.manual_seed(7)
    edges = torch.tensor([NAN, INF, -INF, -3.0, 3.0, -2.999, 2.999, 0.0, -0.0, 1e30, -1e30, 88.0, -88.0, 6.0])
    # 512 elements: the CPU takes its vectorized kernels (which define NaN's gradient where they and the
    # scalar ones disagree, e.g. hardswish_backward), as for real activations.
    x = torch.cat([edges, torch.randn(512 - len(edges)) * 4])[torch.randperm(512)]
    g = torch.randn(512)
    xd, xc = _dev(x, True), x.clone().requires_grad_()
    yd = act(xd)
    yd.backward(g.to(DEV))
    yc = act(xc)
    yc.backward(g)
    # gelu's tanh form near its cancellation (x < -5) differs by a few 1e-6 from the CPU's.
    _close(yd, yc, atol=1e-5)
    _close(xd.grad, xc.grad, atol=1e-5)
    xd2 = _dev(x, True)
    kernels = _kernels(lambda: act(xd2).backward(g.to(DEV)))
    assert sum(kernels.values()) == 2, kernels  # one forward, one backward pass


@pytest.mark.parametrize("name", ["hardswish", "silu", "relu6", "hardsigmoid"])
def test_inplace_activations(name):
    x = torch.randn(64) * 5
    x[3], x[9] = NAN, -INF
    yd = getattr(F, name)(_dev(x), inplace=True)
    _close(yd, getattr(F, name)(x.clone(), inplace=True))


# -- DenseNet's growing concatenation ------------------------------------------------------------------
@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last])
def test_dense_block_concatenation(fmt):
    torch.manual_seed(8)
    feats = [torch.randn(2, 6, 5, 7)] + [torch.randn(2, 3, 5, 7) for _ in range(8)]
    feats[2][0, 1, 2, 3] = NAN
    feats[5][1, 0, 0, 0] = INF
    dev = [_dev(f).contiguous(memory_format=fmt).requires_grad_() for f in feats]
    kernels = _kernels(lambda: torch.cat(dev, 1))
    assert sum(kernels.values()) == 2, kernels  # nine pieces: a launch of six and one of three
    out = torch.cat(dev, 1)
    _close(out, torch.cat(feats, 1), rtol=0, atol=0)
    assert out.is_contiguous(memory_format=fmt)
    g = torch.randn(out.shape)
    out.backward(g.to(DEV))
    for k, t in enumerate(dev):
        _close(t.grad, g[:, 6 + 3 * (k - 1):6 + 3 * k] if k else g[:, :6], rtol=0, atol=0)


def test_cat_strided_mixed_dtypes_and_dims():
    torch.manual_seed(9)
    a, b = torch.randn(3, 7)[:, ::2], torch.randn(5, 3).t()
    _close(torch.cat([_dev(a), _dev(b)], 1), torch.cat([a, b], 1), rtol=0, atol=0)
    _close(torch.cat([_dev(a).t(), _dev(b.t()).t().t()], 0), torch.cat([a.t(), b.t()], 0), rtol=0, atol=0)
    ints = [torch.randint(-9, 9, (2, k, 3)) for k in (1, 4, 2)]
    assert torch.equal(torch.cat([_dev(t) for t in ints], 1).cpu(), torch.cat(ints, 1))
    ints = [t.transpose(1, 2) for t in ints]
    assert torch.equal(torch.cat([_dev(t) for t in ints], -1).cpu(), torch.cat(ints, -1))
    mixed = [torch.randn(2, 3), torch.randn(1, 3).half(), torch.randn(0, 3)]
    _close(torch.cat([_dev(t) for t in mixed]), torch.cat(mixed), rtol=0, atol=0)
    five = [torch.randn(1, 2, 3, 2, k) for k in (2, 3)]
    _close(torch.cat([_dev(t) for t in five], 4), torch.cat(five, 4), rtol=0, atol=0)


def test_silu_double_backward_keeps_the_graph():
    torch.manual_seed(10)
    x = torch.randn(32) * 3
    xd, xr = _dev(x, True), _ref(x, True)
    for t in (xd, xr):
        (g,) = torch.autograd.grad(F.silu(t).sum(), t, create_graph=True)
        (g ** 2).sum().backward()
    _close(xd.grad, xr.grad)


def test_cat_of_long_rows():
    # Rows longer than a workgroup's stride (NCHW planes of 30x30), several workgroups per piece.
    torch.manual_seed(12)
    feats = [torch.randn(2, c, 30, 30) for c in (5, 3, 7)]
    _close(torch.cat([_dev(f) for f in feats], 1), torch.cat(feats, 1), rtol=0, atol=0)
