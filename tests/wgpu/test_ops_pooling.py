"""Pooling kernels (max/avg/adaptive, 1-d and 2-d) against PyTorch on the CPU: OpInfo samples, then
what OpInfo misses: channels_last and strided inputs (and the memory format of every result), unbatched
inputs, float16, NaN and ties in max windows, integer dtypes, multi-workgroup sizes, argument errors."""
import pytest
import torch
import torch.nn.functional as F

from tests.wgpu import opinfo

F32, F16 = torch.float32, torch.float16
_TOL = {F32: (1.3e-6, 1e-5), F16: (1e-3, 1e-3), torch.bfloat16: (1.6e-2, 1e-2)}


class Thinned:
    """An OpInfo whose samples are every k-th of the original's (max_pool2d lists all 1440 combinations)."""

    def __init__(self, op, k: int):
        self._op, self._k = op, k

    def __getattr__(self, name):
        return getattr(self._op, name)

    def __call__(self, *args, **kwargs):
        return self._op(*args, **kwargs)

    def sample_inputs(self, *args, **kwargs):
        # set_seed=False: OpInfo otherwise reseeds the global generator before every one of them.
        kwargs.pop("set_seed", None)
        samples = self._op.sample_inputs(*args, set_seed=False, **kwargs)
        return [s for i, s in enumerate(samples) if i % self._k == 0]


def not_5d(sample) -> bool:
    return sample.input.dim() == 5  # 3-d (volumetric) ops are not this family's


# (OpInfo name, variant, dtypes, extra keyword arguments for opinfo.check; "every" thins the samples)
CASES = [
    ("nn.functional.max_pool2d", "", [F32], {"every": 53}),
    ("nn.functional.max_pool2d", "", [F16], {"every": 181}),
    ("nn.functional.max_pool1d", "", [F32], {"every": 47}),
    ("nn.functional.avg_pool2d", "", [F32, F16, torch.int64], {}),
    ("nn.functional.avg_pool1d", "", [F32], {}),
    ("nn.functional.adaptive_avg_pool2d", "", [F32, F16], {}),
    ("nn.functional.adaptive_avg_pool1d", "", [F32], {}),
    ("nn.functional.adaptive_max_pool2d", "", [F32], {}),
    ("nn.functional.adaptive_max_pool1d", "", [F32], {}),
    ("nn.functional.interpolate", "area", [F32], {"skip": not_5d}),
]


@pytest.mark.parametrize("name,variant,dtypes,kw", CASES,
                         ids=[f"{c[0]}{'.' + c[1] if c[1] else ''}-{'-'.join(str(d)[6:] for d in c[2])}"
                              for c in CASES])
def test_op_matches_cpu(name, variant, dtypes, kw):
    op = opinfo.find(name, variant)
    kw = dict(kw)
    if "every" in kw:
        op = Thinned(op, kw.pop("every"))
    for dtype in dtypes:
        checked = opinfo.check(op, dtype, max_samples=40, **kw)
        assert checked > 0, f"{name}: no samples for {dtype}"


# -- shared by the targeted tests (and by test_ops_upsample) --------------------------------------------
def compare_with_cpu(fn, x_cpu, x_dev, *, grad=True, rtol=None, atol=None, strides=True):
    """fn on the CPU and on wgpu: the same values, dtypes and strides, and the same input gradient for
    one random output gradient. Returns the device results."""
    base_rtol, base_atol = _TOL.get(x_cpu.dtype, (0, 0))
    rtol = base_rtol if rtol is None else rtol
    atol = base_atol if atol is None else atol
    grad = grad and x_cpu.dtype.is_floating_point
    if grad:
        x_cpu, x_dev = x_cpu.detach().requires_grad_(), x_dev.detach().requires_grad_()
    ref, got = fn(x_cpu), fn(x_dev)
    refs, gots = (ref, got) if isinstance(ref, tuple) else ((ref,), (got,))
    for r, g in zip(refs, gots):
        assert g.device.type == "wgpu"
        if strides:
            assert g.stride() == r.stride(), f"memory format: strides {g.stride()} != CPU's {r.stride()}"
        torch.testing.assert_close(g.detach().cpu(), r.detach(), rtol=rtol, atol=atol, equal_nan=True)
    if grad:
        out_grad = torch.randn(refs[0].shape, generator=torch.Generator().manual_seed(7)).to(x_cpu.dtype)
        # In the result's layout, as the next layer's backward would hand it over (channels_last stays).
        out_grad = torch.empty_like(refs[0].detach()).copy_(out_grad)
        (ref_g,) = torch.autograd.grad(refs[0], x_cpu, out_grad)
        (got_g,) = torch.autograd.grad(gots[0], x_dev, out_grad.to("wgpu"))
        if strides:
            assert got_g.stride() == ref_g.stride(), f"grad memory format: {got_g.stride()} != {ref_g.stride()}"
        torch.testing.assert_close(got_g.cpu(), ref_g, rtol=rtol * 10, atol=atol * 10, msg=lambda m: f"grad: {m}")
    return gots


def layouts(shape, dtype=F32, seed=0):
    """(name, CPU tensor, device tensor with the same values and strides) for each layout a layer sees."""
    gen = torch.Generator().manual_seed(seed)
    n, c, h, w = shape
    x = torch.randn(shape, generator=gen).to(dtype)
    yield "nchw", x, x.to("wgpu")
    cl = x.contiguous(memory_format=torch.channels_last)
    yield "channels_last", cl, cl.to("wgpu")
    big = torch.randn((n, c, h + 2, 2 * w), generator=gen).to(dtype)
    yield "strided", big[:, :, 1:-1, ::2], big.to("wgpu")[:, :, 1:-1, ::2]
    yield "unbatched", x[0], x[0].to("wgpu")


POOLS = {
    "max 3x3 s2 p1": lambda t: F.max_pool2d(t, 3, 2, 1, return_indices=True),
    "max 2x3 dilated ceil": lambda t: F.max_pool2d(t, (2, 3), (2, 1), (1, 1), (2, 1), ceil_mode=True,
                                                   return_indices=True),
    "avg 3x3 s2 p1": lambda t: F.avg_pool2d(t, 3, 2, 1),
    "avg ceil no-pad-count": lambda t: F.avg_pool2d(t, (3, 2), (2, 3), (1, 1), ceil_mode=True,
                                                    count_include_pad=False),
    "avg divisor": lambda t: F.avg_pool2d(t, (2, 4), (3, 1), (1, 2), ceil_mode=True, divisor_override=3),
    "adaptive avg 4x3": lambda t: F.adaptive_avg_pool2d(t, (4, 3)),
    "adaptive avg up": lambda t: F.adaptive_avg_pool2d(t, (10, 13)),
    "adaptive max 4x3": lambda t: F.adaptive_max_pool2d(t, (4, 3), return_indices=True),
    "adaptive max up": lambda t: F.adaptive_max_pool2d(t, (10, 13), return_indices=True),
}


@pytest.mark.parametrize("pool", list(POOLS), ids=list(POOLS))
def test_layouts_and_memory_format(pool):
    for name, x_cpu, x_dev in layouts((2, 6, 9, 11)):
        try:
            compare_with_cpu(POOLS[pool], x_cpu, x_dev)
        except AssertionError as exc:
            raise AssertionError(f"{pool} on a {name} input: {exc}") from None


@pytest.mark.parametrize("pool", ["max 3x3 s2 p1", "avg ceil no-pad-count", "adaptive avg 4x3", "adaptive max up"])
def test_float16(pool):
    for name, x_cpu, x_dev in list(layouts((2, 5, 9, 11), F16, seed=1))[:2]:
        compare_with_cpu(POOLS[pool], x_cpu, x_dev, rtol=2e-3, atol=2e-3)


def test_max_windows_with_nan_ties_and_infinities():
    x = torch.randn(2, 3, 8, 8)
    x[0, 0, 1, 1] = x[0, 0, 2, 2] = x[1, 2, 7, 0] = float("nan")  # the last NaN of a window wins
    x[0, 1, :4, :4] = 5.0                                          # ties keep the first maximum
    x[1, 0, 4:, 4:] = float("-inf")                                # an all -inf window points at its first tap
    for layout in (torch.contiguous_format, torch.channels_last):
        xl = x.contiguous(memory_format=layout)
        for fn in (lambda t: F.max_pool2d(t, 3, 1, 1, return_indices=True),
                   lambda t: F.max_pool2d(t, 2, 2, 1, return_indices=True),
                   lambda t: F.adaptive_max_pool2d(t, (3, 5), return_indices=True)):
            compare_with_cpu(fn, xl, xl.to("wgpu"), rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8, torch.int8])
def test_max_pool_integers(dtype):
    low = 0 if dtype == torch.uint8 else -100
    x = torch.randint(low, 100, (2, 3, 9, 7), generator=torch.Generator().manual_seed(3)).to(dtype)
    for xl in (x, x.contiguous(memory_format=torch.channels_last)):
        compare_with_cpu(lambda t: F.max_pool2d(t, 3, 2, 1, return_indices=True), xl, xl.to("wgpu"))


def test_avg_pool_int64_truncates_like_the_cpu():
    x = torch.randint(-50, 50, (2, 3, 9, 7), generator=torch.Generator().manual_seed(4))
    compare_with_cpu(lambda t: F.avg_pool2d(t, 3, 2, 1), x, x.to("wgpu"))
    compare_with_cpu(lambda t: F.avg_pool2d(t, 2, divisor_override=-3), x, x.to("wgpu"))


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_global_average_pool(layout):
    """output_size 1: the classifier head of every CNN (a mean over H*W) and its aten op called directly."""
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    x = torch.randn(4, 24, 17, 15).contiguous(memory_format=fmt)
    compare_with_cpu(lambda t: F.adaptive_avg_pool2d(t, 1), x, x.to("wgpu"), rtol=1e-5, atol=1e-6)
    compare_with_cpu(lambda t: torch.ops.aten._adaptive_avg_pool2d(t, [1, 1]), x, x.to("wgpu"), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_resnet_stem_pool_many_workgroups(layout):
    """max_pool2d(3, 2, 1) after a ResNet stem: ~100k outputs and ~400k gradient threads."""
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    x = torch.randn(2, 64, 56, 56, generator=torch.Generator().manual_seed(5)).contiguous(memory_format=fmt)
    compare_with_cpu(POOLS["max 3x3 s2 p1"], x, x.to("wgpu"))
    compare_with_cpu(POOLS["avg 3x3 s2 p1"], x, x.to("wgpu"))


def test_pool1d_unbatched():
    x = torch.randn(6, 29)
    compare_with_cpu(lambda t: F.max_pool1d(t, 4, 3, 2, return_indices=True), x, x.to("wgpu"))
    compare_with_cpu(lambda t: F.avg_pool1d(t, 4, 3, 2, ceil_mode=True), x, x.to("wgpu"))
    compare_with_cpu(lambda t: F.adaptive_max_pool1d(t, 5, return_indices=True), x, x.to("wgpu"))


@pytest.mark.parametrize("call", [
    lambda t: F.max_pool2d(t, 3, 1, 2),                 # padding above half the kernel
    lambda t: F.max_pool2d(t, 0),                       # empty kernel
    lambda t: F.max_pool2d(t, 9),                       # window larger than the input
    lambda t: F.avg_pool2d(t, 3, 1, 2),
    lambda t: F.avg_pool2d(t, 2, divisor_override=0),
    lambda t: F.max_pool2d(t[0, 0], 2),                 # 2-d input
], ids=["pad", "kernel0", "too-small", "avg-pad", "divisor0", "2d-input"])
def test_bad_arguments_raise_like_the_cpu(call):
    x = torch.randn(1, 2, 5, 5)
    with pytest.raises(RuntimeError):
        call(x)
    with pytest.raises(RuntimeError):
        call(x.to("wgpu"))
