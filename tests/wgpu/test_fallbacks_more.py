"""Ops that fell back to the CPU outside linear algebra (issue 17, T3), against PyTorch on the CPU:
grid_sampler_2d / bicubic / trilinear / margin-loss backwards, frexp, int shifts, logspace, resize_as_,
renorm (float16 / bfloat16 forward, float32 gradient) and linear_cross_entropy's chunked path. OpInfo
samples (outputs and float32 gradients), then fresh random inputs with NaN, +-inf and edge values."""
import itertools

import pytest
import torch
import torch.nn.functional as F

from tests.wgpu import opinfo

F32, F16, BF16, I64 = torch.float32, torch.float16, torch.bfloat16, torch.int64
NAN, INF = float("nan"), float("inf")
DEV = "wgpu"

CASES = [
    ("grid_sampler_2d", "", [F32], {"max_samples": 4}),
    ("nn.functional.grid_sample", "", [F32], {}),
    ("nn.functional.interpolate", "bicubic", [F32], {"max_samples": 4}),
    ("nn.functional.interpolate", "trilinear", [F32], {"max_samples": 4}),
    ("nn.functional.multi_margin_loss", "", [F32], {}),
    ("nn.functional.multilabel_margin_loss", "", [F32], {}),
    ("frexp", "", [F32, F16, BF16], {}),
    ("bitwise_left_shift", "", [I64], {}),
    ("bitwise_right_shift", "", [I64], {}),
    ("resize_as_", "", [F32, F16, BF16, I64, torch.bool], {}),
    ("nextafter", "", [F16, BF16], {}),
    ("renorm", "", [F32, F16, BF16], {}),
    ("nn.functional.linear_cross_entropy", "chunked", [F32, F16, BF16], {}),
    ("nn.functional.linear_cross_entropy", "chunked_none", [F32, F16, BF16], {}),
]


@pytest.mark.parametrize("name,variant,dtype,extra", [(n, v, d, e) for n, v, ds, e in CASES for d in ds],
                         ids=lambda v: str(v) if not isinstance(v, dict) else "")
def test_opinfo(name, variant, dtype, extra):
    assert opinfo.check(opinfo.find(name, variant), dtype, **extra) > 0


@pytest.mark.parametrize("variant", ["", "tensor_overload"])
@pytest.mark.parametrize("dtype", [F32, F16, BF16])
def test_logspace_opinfo(variant, dtype):
    # a factory: OpInfo's samples name the CPU as the device, so the wgpu run swaps it (opinfo.check does not)
    op = opinfo.find("logspace", variant)
    checked = 0
    for sample in itertools.islice(op.sample_inputs("cpu", dtype, requires_grad=False), 8):
        ref = op(sample.input, *sample.args, **sample.kwargs)
        on_device = lambda v: v.to(DEV) if isinstance(v, torch.Tensor) else v  # noqa: E731
        got = op(on_device(sample.input), *[on_device(a) for a in sample.args], **{**sample.kwargs, "device": DEV})
        assert got.device.type == DEV
        opinfo._compare(got, ref, *opinfo._TOL[dtype], f"logspace {sample}")
        checked += 1
    assert checked > 0


def special(shape, seed, scale=3.0):
    """Fresh random values with NaN, +inf and -inf sprinkled in."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g) * scale
    flat = x.view(-1)
    picks = torch.randperm(flat.numel(), generator=g)[:3]
    flat[picks[0]], flat[picks[1]], flat[picks[2]] = NAN, INF, -INF
    return x


def same(got, exp, rtol=1.3e-5, atol=1e-5):
    torch.testing.assert_close(got.cpu(), exp, rtol=rtol, atol=atol, equal_nan=True)


def grads(fn, *inputs, grad_out_seed=7):
    """fn's output and the gradients of every input, on the CPU and on wgpu."""
    results = []
    for device in ("cpu", DEV):
        leaves = [t.detach().to(device).requires_grad_() for t in inputs]
        out = fn(*leaves)
        g = torch.randn(out.shape, generator=torch.Generator().manual_seed(grad_out_seed)).to(device)
        results.append((out, *torch.autograd.grad(out, leaves, g)))
    return results


@pytest.mark.parametrize("mode", ["bilinear", "nearest", "bicubic"])
@pytest.mark.parametrize("padding", ["zeros", "border", "reflection"])
def test_grid_sample_2d_gradients_with_special_values(mode, padding, monkeypatch):
    from navitrain.wgpu import dispatch

    if mode == "bicubic":  # non-finite inputs: the counted CPU fallback (the strict mode of the tests off)
        monkeypatch.setenv("NAVITRAIN_WGPU_STRICT", "0")
    before = dispatch.fallback_counts["aten.grid_sampler_2d_backward.default"]
    x = special((2, 3, 5, 6), 1)
    grid = torch.rand(2, 4, 3, 2, generator=torch.Generator().manual_seed(2)) * 2.4 - 1.2
    for align in (False, True):
        fn = lambda a, b: F.grid_sample(a, b, mode=mode, padding_mode=padding, align_corners=align)  # noqa: E731
        (cpu, *cpu_grads), (dev, *dev_grads) = grads(fn, x, grid)
        same(dev, cpu.detach())
        for d, c in zip(dev_grads, cpu_grads):
            same(d, c, rtol=1e-4, atol=1e-4)
    fell_back = dispatch.fallback_counts["aten.grid_sampler_2d_backward.default"] - before
    assert fell_back == (2 if mode == "bicubic" else 0)


def test_grid_sampler_2d_backward_nan_grid_falls_back(monkeypatch):
    # the backward op itself (the forward, PyTorch's decomposition, is not this handler's): a non-finite
    # grid or output gradient takes the counted CPU fallback
    from navitrain.wgpu import dispatch

    monkeypatch.setenv("NAVITRAIN_WGPU_STRICT", "0")
    before = dispatch.fallback_counts["aten.grid_sampler_2d_backward.default"]
    x = torch.randn(1, 2, 4, 4)
    grid = torch.rand(1, 3, 3, 2) * 2 - 1
    grid[0, 1, 1, 0] = NAN
    grid[0, 2, 0, 1] = INF
    go = special((1, 2, 3, 3), 11)
    for mode in (0, 1):
        for mask in ([True, True], [True, False]):
            args = lambda d: (go.to(d), x.to(d), grid.to(d), mode, 0, False, mask)  # noqa: E731
            for got, exp in zip(torch.ops.aten.grid_sampler_2d_backward(*args(DEV)),
                                torch.ops.aten.grid_sampler_2d_backward(*args("cpu"))):
                assert (got is None) == (exp is None)
                if exp is not None:
                    same(got, exp)
    assert dispatch.fallback_counts["aten.grid_sampler_2d_backward.default"] - before == 4


@pytest.mark.parametrize("mode,shape,size", [("bicubic", (2, 3, 4, 5), (7, 3)), ("bicubic", (1, 2, 6, 6), (6, 6)),
                                              ("trilinear", (2, 3, 3, 4, 5), (5, 7, 2)),
                                              ("trilinear", (1, 2, 4, 4, 4), (4, 4, 4))])
def test_interpolate_gradients_with_special_values(mode, shape, size):
    x = torch.randn(shape)
    for align in (False, True):
        fn = lambda a: F.interpolate(a, size=size, mode=mode, align_corners=align)  # noqa: E731
        (cpu, cpu_g), (dev, dev_g) = grads(fn, x)
        same(dev, cpu.detach())
        same(dev_g, cpu_g, rtol=1e-4, atol=1e-4)
        # NaN / inf in the output gradient reach the inputs the CPU's scatter reaches
        go = special(cpu.shape, 3)
        leaf_c, leaf_d = x.clone().requires_grad_(), x.to(DEV).requires_grad_()
        (gc,) = torch.autograd.grad(fn(leaf_c), leaf_c, go)
        (gd,) = torch.autograd.grad(fn(leaf_d), leaf_d, go.to(DEV))
        same(gd, gc, rtol=1e-4, atol=1e-4)


# The backward ops are called directly: the forwards (PyTorch's decompositions, not these handlers) turn an
# infinite input into NaN where the CPU's kernel gives inf.
@pytest.mark.parametrize("p,weighted,reduction", [(1, False, 1), (2, True, 2), (1, True, 0), (2, False, 0)])
def test_multi_margin_loss_backward_with_special_values(p, weighted, reduction):
    x = special((5, 4), 4)
    target = torch.randint(0, 4, (5,), generator=torch.Generator().manual_seed(5))
    weight = torch.rand(4) + 0.5 if weighted else None
    go = torch.randn(5) if reduction == 0 else torch.tensor(1.7)
    args = lambda d: (go.to(d), x.to(d), target.to(d), p, 0.7, None if weight is None else weight.to(d),  # noqa: E731
                      reduction)
    same(torch.ops.aten.multi_margin_loss_backward(*args(DEV)), torch.ops.aten.multi_margin_loss_backward(*args("cpu")))
    x1, t1 = x[0].nan_to_num(), target[0]  # one unbatched sample
    same(torch.ops.aten.multi_margin_loss_backward(go[:1].sum().to(DEV) if reduction == 0 else go.to(DEV), x1.to(DEV),
                                                  t1.to(DEV), p, 0.7, None, reduction),
         torch.ops.aten.multi_margin_loss_backward(go[:1].sum() if reduction == 0 else go, x1, t1, p, 0.7, None,
                                                  reduction))


@pytest.mark.parametrize("reduction", [0, 1, 2])
def test_multilabel_margin_loss_backward_with_special_values(reduction):
    x = special((4, 5), 6)
    target = torch.tensor([[3, 0, -1, 1, 2], [1, 2, 3, 4, 0], [-1, 1, 2, 3, 4], [4, 4, -1, 0, 0]])
    _, is_target = torch.ops.aten.multilabel_margin_loss_forward(x, target, reduction)
    go = torch.randn(4) if reduction == 0 else torch.tensor(0.6)
    args = lambda d: (go.to(d), x.to(d), target.to(d), reduction, is_target.to(d))  # noqa: E731
    same(torch.ops.aten.multilabel_margin_loss_backward(*args(DEV)),
         torch.ops.aten.multilabel_margin_loss_backward(*args("cpu")))


@pytest.mark.parametrize("dtype", [F32, F16, BF16])
def test_frexp_edge_values(dtype):
    x = torch.cat([torch.tensor([INF, -INF, NAN, 0.0, -0.0, 1e-40, -3e-45, 1.0, -0.75, 3.4e38, 6e-8, 1e-5, 65504.0]),
                   torch.randn(50) * 1e3, torch.randn(20) * 1e-30]).to(dtype)
    m, e = torch.frexp(x.to(DEV))
    mc, ec = torch.frexp(x)
    assert torch.equal(e.cpu(), ec)
    assert torch.equal(m.cpu().nan_to_num(7.0), mc.nan_to_num(7.0))
    finite = ~mc.isnan()  # (a NaN's sign bit is not specified)
    assert torch.equal(torch.signbit(m.cpu())[finite], torch.signbit(mc)[finite])


@pytest.mark.parametrize("dtype", [I64, torch.int32, torch.int16, torch.int8, torch.uint8])
def test_shifts_by_every_count(dtype):
    info = torch.iinfo(dtype)
    g = torch.Generator().manual_seed(8)
    a = torch.cat([torch.tensor([info.min, info.max, 0, 1]), torch.randint(max(info.min, -1000), min(info.max, 1000),
                                                                           (60,), generator=g)]).to(dtype)
    counts = torch.arange(-3 if info.min < 0 else 0, min(info.max, 70)).to(dtype)
    a2, b2 = a[:, None].expand(-1, counts.numel()), counts[None, :].expand(a.numel(), -1)
    for op in (torch.bitwise_left_shift, torch.bitwise_right_shift):
        assert torch.equal(op(a2.to(DEV), b2.to(DEV)).cpu(), op(a2, b2)), op
        assert torch.equal(op(a.to(DEV), 5).cpu(), op(a, 5)), op
        assert torch.equal(op(3, counts.to(DEV)).cpu(), op(3, counts)), op
    x = a.to(DEV)
    x <<= 2
    assert torch.equal(x.cpu(), a << 2)
    x >>= counts[:1].to(DEV)
    assert torch.equal(x.cpu(), (a << 2) >> counts[:1])


def test_shift_of_floats_is_refused_like_the_cpu():
    with pytest.raises(Exception, match="not implemented for 'Float'"):
        torch.bitwise_left_shift(torch.ones(3, device=DEV), 1)


@pytest.mark.parametrize("dtype", [F32, F16, BF16])
def test_logspace_edge_values(dtype):
    tol = opinfo._TOL[dtype]
    for start, end, steps, base in [(0, 2, 5, 10.0), (-3, 3, 11, 2.0), (1.5, -2.25, 7, 10.0), (0, 38, 20, 10.0),
                                    (-40, 40, 9, 10.0), (0, 1, 1, 10.0), (3, 7, 0, 2.0), (0.1, 20.7, 33, 1.7),
                                    (0, 2, 4, 0.5), (-100, 100, 50, 3.0), (50, 60, 4, 10.0), (2, 2, 3, 10.0)]:
        got = torch.logspace(start, end, steps, base=base, dtype=dtype, device=DEV)
        exp = torch.logspace(start, end, steps, base=base, dtype=dtype)
        opinfo._compare(got, exp, *tol, f"logspace({start}, {end}, {steps}, {base}) {dtype}")
    out = torch.empty(2, device=DEV)
    torch.logspace(-1, 1, 6, out=out)
    same(out, torch.logspace(-1, 1, 6))


@pytest.mark.parametrize("p", [1, 2, 3.5, INF])
def test_renorm_with_special_values(p):
    x = special((4, 5, 3), 9, scale=2.0)
    x[2] = torch.randn(5, 3) * 1e-3  # a slice under maxnorm: left alone
    for dim, maxnorm in ((0, 1.0), (1, 0.0), (-1, 2.5)):
        fn = lambda a: torch.renorm(a, p, dim, maxnorm)  # noqa: E731
        (cpu, cpu_g), (dev, dev_g) = grads(fn, x)
        same(dev, cpu.detach())
        same(dev_g, cpu_g)
        finite = torch.randn(4, 5, 3, generator=torch.Generator().manual_seed(10)) * 3
        for dtype in (F16, BF16):
            opinfo._compare(fn(finite.to(dtype).to(DEV)), fn(finite.to(dtype)), *opinfo._TOL[dtype], f"renorm {dtype}")


@pytest.mark.parametrize("dtype", [F16, BF16])
def test_nextafter_narrow_floats_edge_values(dtype):
    info = torch.finfo(dtype)
    values = torch.cat([torch.tensor([0.0, -0.0, 1.0, -1.0, 2.0, -0.5, info.max, -info.max, info.tiny, -info.tiny,
                                      info.tiny / 4, INF, -INF, NAN, 3.3, 1e-3]),
                        torch.randn(30, generator=torch.Generator().manual_seed(12)) * 100]).to(dtype)
    toward = torch.tensor([INF, -INF, 0.0, NAN, 1.0, -1.0], dtype=dtype)
    a, b = values[:, None].expand(-1, toward.numel()), toward[None, :].expand(values.numel(), -1)
    got, exp = torch.nextafter(a.to(DEV), b.to(DEV)).cpu(), torch.nextafter(a, b)
    assert torch.equal(got.isnan(), exp.isnan())
    assert torch.equal(got[~exp.isnan()], exp[~exp.isnan()])


@pytest.mark.parametrize("dtype", [F16, BF16])
@pytest.mark.parametrize("mode", [0, 1])
def test_grid_sampler_3d_narrow_floats_against_float64(dtype, mode):
    # computed in float32, rounded once: compared with exact (float64) arithmetic on the same rounded inputs
    g = torch.Generator().manual_seed(13)
    x = torch.randn(2, 3, 4, 5, 3, generator=g).to(dtype)
    grid = (torch.rand(2, 3, 2, 4, 3, generator=g) * 2.2 - 1.1).to(dtype)
    go = torch.randn(2, 3, 3, 2, 4, generator=g).to(dtype)
    rtol, atol = (2e-3, 2e-3) if dtype == F16 else (1.6e-2, 1.6e-2)
    for padding in (0, 1, 2):
        args = (mode, padding, False)
        exact = torch.grid_sampler_3d(x.double(), grid.double(), *args)
        torch.testing.assert_close(torch.grid_sampler_3d(x.to(DEV), grid.to(DEV), *args).cpu().double(), exact,
                                   rtol=rtol, atol=atol)
        gi, gg = torch.ops.aten.grid_sampler_3d_backward(go.to(DEV), x.to(DEV), grid.to(DEV), *args, [True, True])
        gi64, gg64 = torch.ops.aten.grid_sampler_3d_backward(go.double(), x.double(), grid.double(), *args,
                                                             [True, True])
        assert gi.dtype == dtype and gg.dtype == dtype
        torch.testing.assert_close(gi.cpu().double(), gi64, rtol=rtol, atol=atol)
        torch.testing.assert_close(gg.cpu().double(), gg64, rtol=rtol, atol=atol)
