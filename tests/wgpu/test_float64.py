"""float64 on an adapter with shader-f64 (lavapipe has it), issue 17: conversions and fills run on the GPU
and are exact; what has no exact f64 kernel takes the counted CPU fallback; an adapter without the
feature warns once."""
import warnings

import pytest
import torch

import navitrain.wgpu as nw
from navitrain.wgpu import dtypes

DEV = "wgpu"
OTHER_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.int16, torch.int8,
                torch.uint8, torch.bool)


@pytest.fixture(scope="module", autouse=True)
def needs_shader_f64():
    if "shader-f64" not in nw.adapter_info()["features"]:
        pytest.skip("the adapter's shaders have no 64-bit floats")


def _edge_doubles() -> torch.Tensor:
    """Values float32 cannot hold (1/3, 1 + 2^-52, 1e300, double subnormals), NaN, +-inf, -0.0, and
    fresh random ones over a wide exponent range."""
    special = torch.tensor([1 / 3, 1.0 + 2.0**-52, 1e300, -1e-310, 5e-324, float("nan"), float("inf"),
                            -float("inf"), -0.0, 0.0, 3.4028235677973366e38, 7e-46, 65504.5, -2.5, 0.5],
                           dtype=torch.float64)
    g = torch.Generator().manual_seed(torch.seed() % 2**31)
    random = torch.randn(200, dtype=torch.float64, generator=g) * torch.pow(
        10.0, torch.randint(-40, 40, (200,), generator=g).double())
    return torch.cat([special, random])


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit-exact, -0.0 included; any NaN equals any NaN (payloads are not promised)."""
    assert a.dtype == b.dtype and a.shape == b.shape
    if not a.dtype.is_floating_point:
        return torch.equal(a, b)
    nan = torch.isnan(a.float())
    if not torch.equal(nan, torch.isnan(b.float())):
        return False
    width = {8: torch.int64, 4: torch.int32, 2: torch.int16}[a.element_size()]
    return torch.equal(a[~nan].view(width), b[~nan].view(width))


def test_float64_round_trips_the_device_bit_exact(strict):
    x = _edge_doubles()
    assert _same_bits(x.to(DEV).cpu(), x)
    assert _same_bits(x.to(DEV).clone().cpu(), x)  # a GPU copy kernel, f64 -> f64


@pytest.mark.parametrize("dtype", OTHER_DTYPES)
def test_float64_converts_to_every_dtype_as_the_cpu(dtype, strict):
    x = _edge_doubles()
    if not (dtype.is_floating_point or dtype == torch.bool):
        # float -> int of NaN, inf or out of range is undefined in C++ as in WGSL: in-range values only
        info = torch.iinfo(dtype)
        x = x[torch.isfinite(x)].clamp(info.min, info.max)
        x = torch.where(x.abs() < 2**31 - 128, x, 0.0)
    assert _same_bits(x.to(DEV).to(dtype).cpu(), x.to(dtype))


@pytest.mark.parametrize("dtype", OTHER_DTYPES)
def test_every_dtype_converts_to_float64_exactly(dtype, strict):
    x = _edge_doubles()
    if dtype.is_floating_point:
        src = x.to(dtype)
    elif dtype == torch.bool:
        src = x > 0
    else:
        info = torch.iinfo(dtype)
        src = torch.randint(info.min, info.max, (300,), dtype=dtype)
        if dtype == torch.int64:
            src[:3] = torch.tensor([2**53 + 1, -(2**62) - 3, 2**31])  # rounded to the nearest double
    assert _same_bits(src.to(DEV).double().cpu(), src.double())


def test_strided_and_broadcast_copies(strict):
    x = _edge_doubles()[:210].reshape(14, 15)
    d = x.to(DEV)
    assert _same_bits(d.t().contiguous().cpu(), x.t().contiguous())
    assert _same_bits(d[::2, 1::3].float().cpu(), x[::2, 1::3].float())
    out = torch.empty(3, 14, 15, dtype=torch.float64, device=DEV)
    out.copy_(d.float())
    assert _same_bits(out.cpu(), x.float().double().expand(3, 14, 15))
    back = torch.empty(15, 14, dtype=torch.float32, device=DEV)
    back.copy_(d.t())
    assert _same_bits(back.cpu(), x.t().float())


@pytest.mark.parametrize("value", [0.1, -0.0, 1e-310, 5e-324, 1e300, -1.7976931348623157e308, float("inf"),
                                   -float("inf"), float("nan"), 1 / 3, 7])
def test_fill_and_factories_hold_the_double_exactly(value, strict):
    expect = torch.full((5, 3), value, dtype=torch.float64)
    assert _same_bits(torch.full((5, 3), value, dtype=torch.float64, device=DEV).cpu(), expect)
    t = torch.empty(5, 6, dtype=torch.float64, device=DEV)[:, ::2]
    t.fill_(value)
    assert _same_bits(t.cpu(), expect)
    assert _same_bits(torch.zeros(4, dtype=torch.float64, device=DEV).cpu(), torch.zeros(4, dtype=torch.float64))
    assert _same_bits(torch.ones(4, dtype=torch.float64, device=DEV).cpu(), torch.ones(4, dtype=torch.float64))


def test_float64_math_without_an_exact_kernel_takes_the_counted_fallback(lenient):
    x = _edge_doubles()
    before = nw.fallback_report()["total_fallback_calls"]
    got = torch.exp(x.to(DEV)).cpu()
    assert nw.fallback_report()["total_fallback_calls"] > before  # never an f32 approximation on the GPU
    assert got.dtype == torch.float64
    assert _same_bits(got, torch.exp(x))


def test_an_adapter_without_shader_f64_warns_once(monkeypatch):
    monkeypatch.setattr(dtypes, "_warned_no_f64", False)
    table = dtypes.build_table(True, True, has_f64=False)
    assert table[torch.float64].wgsl == "f64raw" and not table[torch.float64].has_kernels
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        table.get(torch.float32)
        table.get(torch.float64)
        table.get(torch.float64)
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1, messages
    assert "no 64-bit floats" in messages[0] and "on the CPU" in messages[0] and ".float()" in messages[0]
    with_f64 = dtypes.build_table(True, True, has_f64=True)
    assert with_f64[torch.float64].wgsl == "f64" and type(with_f64) is dict  # no per-lookup hook there
