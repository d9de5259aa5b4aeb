"""Upsampling kernels (nearest, nearest-exact, bilinear, linear) against PyTorch on the CPU: OpInfo
samples, then channels_last and strided inputs (and the memory format of results and gradients), scale
factors whose float32 rounding decides the source pixel, large ratios both ways, float16 and uint8,
multi-workgroup sizes and bad sizes."""
import pytest
import torch
import torch.nn.functional as F

from tests.wgpu import opinfo
from tests.wgpu.test_ops_pooling import compare_with_cpu, layouts

F32, F16 = torch.float32, torch.float16
pytestmark = pytest.mark.filterwarnings("ignore:.*is deprecated. Use `nn.functional.interpolate`")


def not_5d(sample) -> bool:
    return sample.input.dim() == 5  # trilinear / nearest3d are not this family's


CASES = [
    ("nn.functional.interpolate", "nearest", [F32, F16, torch.uint8], {"skip": not_5d}),
    ("nn.functional.interpolate", "nearest-exact", [F32], {"skip": not_5d}),
    ("nn.functional.interpolate", "bilinear", [F32], {"rtol": 1e-5, "atol": 1e-5}),
    ("nn.functional.interpolate", "bilinear", [F16], {}),
    ("nn.functional.interpolate", "linear", [F32], {"rtol": 1e-5, "atol": 1e-5}),
    ("nn.functional.upsample_nearest", "", [F32], {"skip": not_5d}),
    ("nn.functional.upsample_bilinear", "", [F32], {"rtol": 1e-5, "atol": 1e-5}),
]


@pytest.mark.parametrize("name,variant,dtypes,kw", CASES,
                         ids=[f"{c[0]}{'.' + c[1] if c[1] else ''}-{'-'.join(str(d)[6:] for d in c[2])}"
                              for c in CASES])
def test_op_matches_cpu(name, variant, dtypes, kw):
    op = opinfo.find(name, variant)
    for dtype in dtypes:
        checked = opinfo.check(op, dtype, max_samples=24, **kw)
        assert checked > 0, f"{name}: no samples for {dtype}"


MODES = {
    "nearest": dict(mode="nearest"),
    "nearest-exact": dict(mode="nearest-exact"),
    "bilinear": dict(mode="bilinear", align_corners=False),
    "bilinear-align": dict(mode="bilinear", align_corners=True),
}
LINEAR_TOL = dict(rtol=1e-5, atol=1e-5)


def _tol(mode):
    return LINEAR_TOL if mode.startswith("bilinear") else dict(rtol=0, atol=0)  # nearest copies exactly


@pytest.mark.parametrize("mode", list(MODES))
def test_layouts_and_memory_format(mode):
    calls = [lambda t: F.interpolate(t, scale_factor=2, **MODES[mode]),
             lambda t: F.interpolate(t, size=(13, 5), **MODES[mode])]
    for name, x_cpu, x_dev in list(layouts((2, 6, 7, 9)))[:3]:
        for call in calls:
            try:
                compare_with_cpu(call, x_cpu, x_dev, **_tol(mode))
            except AssertionError as exc:
                raise AssertionError(f"{mode} on a {name} input: {exc}") from None


@pytest.mark.parametrize("mode", list(MODES))
def test_scale_factors_and_ratios(mode):
    """Sizes and scale factors where float32 rounding of o * scale picks the source pixel, a given scale
    that is not out/in (recompute_scale_factor=False), and big ratios up and down (long gather runs)."""
    gen = torch.Generator().manual_seed(2)
    x, tiny = torch.randn(2, 3, 37, 10, generator=gen), torch.randn(2, 3, 2, 1, generator=gen)
    calls = [
        (x, lambda t: F.interpolate(t, size=(100, 30), **MODES[mode])),
        (x, lambda t: F.interpolate(t, size=(11, 3), **MODES[mode])),
        (x, lambda t: F.interpolate(t, scale_factor=(1.7, 1 / 3), **MODES[mode])),
        (x, lambda t: F.interpolate(t, scale_factor=(2.9, 0.45), recompute_scale_factor=True, **MODES[mode])),
        (x, lambda t: F.interpolate(t, size=(1, 1), **MODES[mode])),
        (tiny, lambda t: F.interpolate(t, size=(23, 17), **MODES[mode])),
    ]
    for inp, call in calls:
        compare_with_cpu(call, inp, inp.to("wgpu"), **_tol(mode))


@pytest.mark.parametrize("mode", ["nearest", "nearest-exact", "linear", "linear-align"])
def test_one_dimensional(mode):
    kw = {"mode": mode.split("-")[0] if mode.startswith("linear") else mode}
    if mode.startswith("linear"):
        kw["align_corners"] = mode.endswith("align")
    x = torch.randn(3, 4, 19)
    for call in (lambda t: F.interpolate(t, scale_factor=2, **kw), lambda t: F.interpolate(t, size=50, **kw),
                 lambda t: F.interpolate(t, scale_factor=0.37, **kw)):
        compare_with_cpu(call, x, x.to("wgpu"), **(LINEAR_TOL if mode.startswith("linear") else {}))


@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
def test_float16(mode):
    for name, x_cpu, x_dev in list(layouts((2, 5, 9, 11), F16, seed=1))[:2]:
        compare_with_cpu(lambda t: F.interpolate(t, scale_factor=2, **MODES[mode]), x_cpu, x_dev, rtol=2e-3, atol=2e-3)


def test_nearest_uint8_images():
    x = torch.randint(0, 256, (2, 3, 17, 23), dtype=torch.uint8)
    for xl in (x, x.contiguous(memory_format=torch.channels_last)):
        compare_with_cpu(lambda t: F.interpolate(t, size=(40, 31)), xl, xl.to("wgpu"))


@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
def test_unet_decoder_sizes_many_workgroups(mode):
    """2x upsampling of a U-Net decoder feature map: ~260k outputs, ~65k gradient threads."""
    x = torch.randn(2, 32, 32, 32, generator=torch.Generator().manual_seed(6))
    for xl in (x, x.contiguous(memory_format=torch.channels_last)):
        compare_with_cpu(lambda t: F.interpolate(t, scale_factor=2, **MODES[mode]), xl, xl.to("wgpu"),
                         **_tol(mode))


@pytest.mark.parametrize("call", [
    lambda t: torch.ops.aten.upsample_nearest2d(t, [0, 4]),
    lambda t: torch.ops.aten.upsample_bilinear2d(t, [4, 0], False),
    lambda t: torch.ops.aten.upsample_nearest2d(t[0], [4, 4]),
], ids=["nearest-size0", "bilinear-size0", "3d-input"])
def test_bad_sizes_raise_like_the_cpu(call):
    x = torch.randn(1, 2, 5, 5)
    with pytest.raises(RuntimeError):
        call(x)
    with pytest.raises(RuntimeError):
        call(x.to("wgpu"))


def test_more_than_65535_workgroups():
    """16.8M outputs need a 2-d grid of workgroups (at most 65535 per dimension); float16 keeps it small."""
    x = torch.randn(1, 1, 2048, 2049, generator=torch.Generator().manual_seed(8)).half()
    out = F.interpolate(x.to("wgpu"), size=(4096, 4097))
    assert out.numel() > 65535 * 256
    assert torch.equal(out.cpu(), F.interpolate(x, size=(4096, 4097)))
