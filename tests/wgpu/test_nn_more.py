"""nn ops that used to fall back to the CPU (issue 17), against PyTorch on the CPU: avg_pool3d (divisor
override, int64), pdist, bilinear (_trilinear), rrelu, fractional max pooling 2-d/3-d,
_upsample_bilinear2d_aa. OpInfo samples (outputs and float32 gradients) where they are deterministic,
then NaN / inf inputs and what OpInfo misses (random samples passed in, strided inputs, training noise)."""
import pytest
import torch
import torch.nn.functional as F

from tests.wgpu import opinfo

F32, F16, BF16, I64 = torch.float32, torch.float16, torch.bfloat16, torch.int64
NAN, INF = float("nan"), float("inf")
DEV = "wgpu"


def not_training(sample) -> bool:
    # rrelu's training samples draw slopes from each device's own generator: compared separately below.
    return bool(sample.kwargs.get("training", False))


CASES = [
    ("nn.functional.avg_pool3d", [F32, I64], {}),
    ("nn.functional.pdist", [F32], {}),
    ("nn.functional.bilinear", [F32, F16, I64], {}),
    ("nn.functional.rrelu", [F32, BF16], {"skip": not_training}),
    ("_upsample_bilinear2d_aa", [F32], {}),
]


@pytest.mark.parametrize("name,dtype,extra", [(n, d, e) for n, ds, e in CASES for d in ds],
                         ids=lambda v: str(v) if not isinstance(v, dict) else "")
def test_opinfo(name, dtype, extra):
    assert opinfo.check(opinfo.find(name), dtype, **extra) > 0


def special(shape, seed, dtype=F32):
    """Fresh random values with NaN, +inf and -inf sprinkled in."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g) * 3
    flat = x.view(-1)
    for value in (NAN, INF, -INF):
        flat[torch.randint(flat.numel(), (max(1, flat.numel() // 17),), generator=g)] = value
    return x.to(dtype)


def same(got, ref, rtol=1.3e-6, atol=1e-5):
    assert got.device.type == DEV
    torch.testing.assert_close(got.cpu(), ref, rtol=rtol, atol=atol, equal_nan=True)


@pytest.mark.parametrize("kwargs", [{"divisor_override": 3}, {"divisor_override": -2, "count_include_pad": False},
                                    {"padding": 1, "ceil_mode": True, "count_include_pad": False}])
def test_avg_pool3d_special_values_and_gradients(kwargs):
    x = special((2, 3, 5, 6, 7), 1)
    same(F.avg_pool3d(x.to(DEV), 3, 2, **kwargs), F.avg_pool3d(x, 3, 2, **kwargs))
    xc = torch.randn(2, 3, 5, 6, 7, requires_grad=True)
    xd = xc.detach().to(DEV).requires_grad_()
    g = torch.randn(F.avg_pool3d(xc, 3, 2, **kwargs).shape)
    F.avg_pool3d(xc, 3, 2, **kwargs).backward(g)
    F.avg_pool3d(xd, 3, 2, **kwargs).backward(g.to(DEV))
    same(xd.grad, xc.grad)


@pytest.mark.parametrize("kwargs", [{}, {"divisor_override": 4}, {"padding": 1, "count_include_pad": False}])
def test_avg_pool3d_int64_truncates_like_the_cpu(kwargs):
    x = torch.randint(-50, 50, (2, 2, 4, 5, 6))
    got = F.avg_pool3d(x.to(DEV), 2, **kwargs)
    assert torch.equal(got.cpu(), F.avg_pool3d(x, 2, **kwargs))


@pytest.mark.parametrize("p", [0.0, 1.0, 2.0, 3.5, INF])
def test_pdist_special_values(p):
    x = special((7, 5), 2)
    same(F.pdist(x.to(DEV), p), F.pdist(x, p))
    # gradients at inf / nan rows: pairs without them stay finite, as on the CPU
    xc = special((6, 4), 3).requires_grad_()
    xd = xc.detach().to(DEV).requires_grad_()
    g = torch.randn(15)
    F.pdist(xc, p).backward(g)
    F.pdist(xd, p).backward(g.to(DEV))
    same(xd.grad, xc.grad, rtol=1e-5, atol=1e-5)


def test_bilinear_special_values_and_strided():
    x1, x2 = special((6, 4), 4), special((6, 3), 5).t().contiguous().t()  # x2 strided
    w, b = torch.randn(5, 4, 3), torch.randn(5)
    same(F.bilinear(x1.to(DEV), x2.to(DEV), w.to(DEV), b.to(DEV)), F.bilinear(x1, x2, w, b), rtol=1e-5, atol=1e-4)


def test_rrelu_eval_special_values():
    x = special((40,), 6)
    for lower, upper in ((0.1, 0.3), (0.2, 0.2)):
        same(F.rrelu(x.to(DEV), lower, upper), F.rrelu(x, lower, upper))
        same(F.rrelu(x.to(DEV), lower, upper, training=True) if lower == upper else F.rrelu(x.to(DEV), lower, upper),
             F.rrelu(x, lower, upper))


def test_rrelu_training_draws_slopes_in_range_and_backward_uses_them():
    x = special((4000,), 7)
    x[:3] = torch.tensor([0.0, -0.0, NAN])
    xd = x.to(DEV).requires_grad_()
    torch.manual_seed(5)
    y = F.rrelu(xd, 0.1, 0.3, training=True)
    y.backward(torch.ones_like(y))
    y, grad = y.detach().cpu(), xd.grad.cpu()
    negative = x <= 0  # NaN <= 0 is false: NaN passes through with slope 1, like the CPU
    positive = ~negative
    assert torch.equal(y[positive].nan_to_num(), x[positive].nan_to_num()) and torch.isnan(y[2])
    assert torch.equal(grad[positive], torch.ones(int(positive.sum())))
    slopes = grad[negative]
    assert (slopes >= 0.1).all() and (slopes < 0.3).all() and slopes.std() > 0.03  # fresh, spread out
    finite = negative & torch.isfinite(x) & (x != 0)
    torch.testing.assert_close(y[finite], x[finite] * grad[finite])
    assert torch.equal(y[x == -INF], torch.full((int((x == -INF).sum()),), -INF))


FRACTIONAL = [  # (dims, input shape, kernel, output size); unbatched, windows overlapping, several outputs
    (2, (2, 3, 9, 9), 3, (4, 5)),
    (2, (3, 9, 8), (2, 3), (5, 3)),
    (2, (1, 2, 11, 13), 2, (10, 12)),
    (3, (2, 3, 7, 6, 5), (2, 2, 2), (3, 4, 2)),
    (3, (2, 6, 5, 7), 2, (4, 1, 3)),
]


@pytest.mark.parametrize("dims,shape,kernel,out", FRACTIONAL)
@pytest.mark.parametrize("dtype", [F32, F16, BF16])
def test_fractional_max_pool(dims, shape, kernel, out, dtype):
    pool = F.fractional_max_pool2d if dims == 2 else F.fractional_max_pool3d
    batched = len(shape) == dims + 2
    samples = torch.rand(shape[0] if batched else 1, shape[1] if batched else shape[0], dims).to(dtype)
    x = special(shape, 8, dtype)
    ref = pool(x, kernel, output_size=out, return_indices=True, _random_samples=samples)
    got = pool(x.to(DEV), kernel, output_size=out, return_indices=True, _random_samples=samples.to(DEV))
    assert torch.equal(got[1].cpu(), ref[1])  # the same windows, the same first max / last NaN
    same(got[0], ref[0])
    if dtype == F32:  # gradients, from a strided (transposed) input
        xc = torch.randn(*shape[:-2], shape[-1], shape[-2]).transpose(-1, -2).requires_grad_()
        xd = xc.detach().to(DEV).transpose(-1, -2).contiguous().transpose(-1, -2).requires_grad_()
        g = torch.randn(ref[0].shape)
        pool(xc, kernel, output_size=out, _random_samples=samples).backward(g)
        pool(xd, kernel, output_size=out, _random_samples=samples.to(DEV)).backward(g.to(DEV))
        same(xd.grad, xc.grad)


@pytest.mark.parametrize("size,align,scales", [((3, 5), False, None), ((17, 23), False, None), ((4, 30), True, None),
                                                ((7, 9), False, (0.7, 1.5))])
def test_upsample_bilinear_aa_geometries_and_special_values(size, align, scales):
    kwargs = {"size": None, "scale_factor": scales} if scales else {"size": size}
    x = special((2, 3, 10, 20), 9)
    ref = F.interpolate(x, mode="bilinear", antialias=True, align_corners=align, **kwargs)
    same(F.interpolate(x.to(DEV), mode="bilinear", antialias=True, align_corners=align, **kwargs), ref)
    xc = torch.randn(2, 3, 10, 20, requires_grad=True)
    xd = xc.detach().to(DEV).requires_grad_()
    y = F.interpolate(xc, mode="bilinear", antialias=True, align_corners=align, **kwargs)
    g = special(y.shape, 10)  # NaN / inf gradients spread over the same windows as on the CPU
    y.backward(g)
    F.interpolate(xd, mode="bilinear", antialias=True, align_corners=align, **kwargs).backward(g.to(DEV))
    same(xd.grad, xc.grad)


def small_input(sample) -> bool:
    return sample.input.numel() > 50_000  # the OpInfo's 2.5M-element volumes take minutes on lavapipe


def test_grid_sampler_3d_opinfo():
    assert opinfo.check(opinfo.find("grid_sampler_3d"), F32, max_samples=30, skip=small_input) > 0


@pytest.mark.parametrize("mode", [0, 1])
@pytest.mark.parametrize("padding", [0, 1, 2])
@pytest.mark.parametrize("align", [False, True])
def test_grid_sampler_3d_modes_special_values_and_gradients(mode, padding, align):
    x = special((2, 3, 4, 5, 6), 11)
    grid = torch.rand(2, 3, 4, 5, 3, generator=torch.Generator().manual_seed(12)) * 2.6 - 1.3  # outside too
    grid[0, 0, 0, 0] = torch.tensor([-1.0, 1.0, 0.0])  # the edges exactly
    grid[0, 0, 0, 1] = torch.tensor([INF, 0.2, -0.3])  # an infinite coordinate
    args = (mode, padding, align)
    same(torch.grid_sampler_3d(x.to(DEV), grid.to(DEV), *args), torch.grid_sampler_3d(x, grid, *args))
    xc = torch.randn(2, 3, 4, 5, 6, requires_grad=True)
    gc = (grid.clamp(-1.3, 1.3)).requires_grad_()
    xd, gd = (t.detach().to(DEV).requires_grad_() for t in (xc, gc))
    g = torch.randn(2, 3, 3, 4, 5)
    torch.grid_sampler_3d(xc, gc, *args).backward(g)
    torch.grid_sampler_3d(xd, gd, *args).backward(g.to(DEV))
    same(xd.grad, xc.grad, rtol=1e-5, atol=1e-4)
    same(gd.grad, gc.grad, rtol=1e-5, atol=1e-4)


def test_ctc_loss_opinfo():
    assert opinfo.check(opinfo.find("nn.functional.ctc_loss"), F32) > 0


@pytest.mark.parametrize("zero_infinity", [False, True])
def test_ctc_loss_impossible_paths_nan_and_concatenated_targets(zero_infinity):
    g = torch.Generator().manual_seed(13)
    T, N, C = 12, 4, 6
    logits = torch.randn(T, N, C, generator=g)
    logits[:, 1, 2] = -INF  # item 1 can never emit label 2: its loss is inf (0 with zero_infinity)
    logits[3, 2, 0] = NAN   # item 2 sees a NaN
    lp = logits.log_softmax(-1).requires_grad_()
    targets = torch.tensor([1, 3, 3, 2, 2, 5, 4, 1, 1, 1, 2])  # 1-d, concatenated
    il, tl = [12, 9, 12, 5], [3, 2, 4, 2]
    lp_d = lp.detach().to(DEV).requires_grad_()
    ref = F.ctc_loss(lp, targets, il, tl, reduction="none", zero_infinity=zero_infinity)
    got = F.ctc_loss(lp_d, targets.to(DEV), il, tl, reduction="none", zero_infinity=zero_infinity)
    same(got, ref, rtol=1e-5, atol=1e-5)
    grad = torch.randn(N, generator=g)
    ref.backward(grad)
    got.backward(grad.to(DEV))
    same(lp_d.grad, lp.grad, rtol=1e-4, atol=1e-5)
