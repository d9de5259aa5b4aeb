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


# -- pointwise math in f64 ------------------------------------------------------------------------
def _operands():
    x = _edge_doubles()
    g = torch.Generator().manual_seed(torch.seed() % 2**31)
    y = torch.randn(x.numel(), dtype=torch.float64, generator=g) * 3
    y[:6] = torch.tensor([0.0, -0.0, float("nan"), float("inf"), 1e-310, 1e300])
    return x, y


EXACT_OPS = {  # one correctly rounded IEEE operation (or none) per element: bit-exact against the CPU
    "add": lambda x, y: x + y, "add_scalar": lambda x, y: x + 0.1, "sub": lambda x, y: x - y,
    "mul": lambda x, y: x * y, "mul_scalar": lambda x, y: x * (1 / 3), "div": lambda x, y: x / y,
    "div_scalar": lambda x, y: x / 3.0, "rdiv": lambda x, y: 2.0 / y, "reciprocal": lambda x, y: y.reciprocal(),
    "neg": lambda x, y: -x, "abs": lambda x, y: x.abs(),
    "floor": lambda x, y: (x * 0.001).floor(), "ceil": lambda x, y: (x * 0.001).ceil(),
    "round": lambda x, y: (x * 0.001).round(), "trunc": lambda x, y: (x * 0.001).trunc(),
    "square": lambda x, y: x.square(), "lt": lambda x, y: x < y, "ge": lambda x, y: x >= y,
    "eq_scalar": lambda x, y: x == 0.1, "ne": lambda x, y: x != y, "where": lambda x, y: torch.where(x > 0, x, y),
    "clamp": lambda x, y: x.clamp(-0.5, 1e-310), "f32_plus_f64": lambda x, y: x.float() + y,
    "strided": lambda x, y: x[:200].view(20, 10).t() * y[:10].view(10, 1),
    "inplace": lambda x, y: x.clone().div_(y), "to_bool": lambda x, y: x.bool(),
}


@pytest.mark.parametrize("name", sorted(EXACT_OPS))
def test_exact_pointwise_ops_match_the_cpu_bit_for_bit(name, strict):
    x, y = _operands()
    op = EXACT_OPS[name]
    assert _same_bits(op(x.to(DEV), y.to(DEV)).cpu(), op(x, y))


def test_sqrt_within_one_ulp(strict):
    # Vulkan does not promise a correctly rounded f64 sqrt, and lavapipe's is not (sqrt(2) is 1 ulp high):
    # 1 ulp, NaN for negatives, -0.0, subnormals and inf as on the CPU
    x, _ = _operands()
    x = torch.cat([x, torch.tensor([2.0, 3.0, 1e-320, 5e-324])])
    got, want = x.to(DEV).sqrt().cpu(), x.sqrt()
    assert torch.equal(torch.isnan(got), torch.isnan(want))
    ok = ~torch.isnan(want)
    assert (got[ok].view(torch.int64) - want[ok].view(torch.int64)).abs().max() <= 1
    assert _same_bits(got[ok & ((want == 0) | want.isinf())], want[ok & ((want == 0) | want.isinf())])


def test_maximum_and_minimum_keep_nan(strict):
    x, y = _operands()
    for op in (torch.maximum, torch.minimum):
        got, want = op(x.to(DEV), y.to(DEV)).cpu(), op(x, y)
        # values and NaNs as the CPU; max(-0.0, 0.0) may be either zero (WGSL leaves it to the driver, as for f32)
        assert torch.equal(torch.isnan(got), torch.isnan(want)) and torch.equal(got.nan_to_num(7), want.nan_to_num(7))


def test_compound_expressions_within_their_rounding_bound(strict):
    # a + v*b*c is three roundings; a driver may contract it into an fma (lavapipe does), so the result is
    # compared with a bound of 4 ulp of the terms' magnitude, not bit for bit
    x, y = _operands()
    x, y = x[torch.isfinite(x) & (x.abs() < 1e100)], y[: 1]
    b = torch.randn(x.numel(), dtype=torch.float64)
    got = torch.addcmul(x.to(DEV), b.to(DEV), x.to(DEV), value=0.5).cpu()
    want = torch.addcmul(x, b, x, value=0.5)
    bound = 4 * 2.0**-52 * (x.abs() + (0.5 * b * x * x).abs())
    assert ((got - want).abs() <= bound).all()


def test_grad_scaler_inverse_scale_runs_on_the_gpu(strict):
    # torch.amp.GradScaler: self._scale.double().reciprocal().float() on every step
    nw.reset_fallback_counts()
    scale = torch.full((1,), 65536.0 * 3, device=DEV)
    inv = scale.double().reciprocal().float()
    assert nw.fallback_report()["total_fallback_calls"] == 0
    assert _same_bits(inv.cpu(), torch.full((1,), 65536.0 * 3).double().reciprocal().float())


@pytest.mark.parametrize("op", [torch.exp, torch.log, torch.sin, torch.tanh, torch.rsqrt, torch.sign])
def test_transcendentals_on_float64_fall_back_with_exact_values(op, lenient):
    x, _ = _operands()
    before = nw.fallback_report()["total_fallback_calls"]
    got = op(x.to(DEV)).cpu()
    assert nw.fallback_report()["total_fallback_calls"] == before + 1  # never an f32 approximation on the GPU
    assert _same_bits(got, op(x))


# -- reductions in f64 --------------------------------------------------------------------------------
def _matrix():
    g = torch.Generator().manual_seed(torch.seed() % 2**31)
    x = torch.randn(37, 300, dtype=torch.float64, generator=g) * 1e3
    x[3, 5], x[4, 7], x[5, 9], x[6, 11] = float("nan"), float("inf"), -float("inf"), 1e-310
    return x


@pytest.mark.parametrize("dim", [None, 0, 1])
def test_sum_mean_and_prod_in_double(dim, strict):
    # summation order differs from the CPU's: |error| <= n * 2^-52 * sum|x| (the textbook bound)
    x = _matrix()
    d = x.to(DEV)
    n = x.numel() if dim is None else x.shape[dim]
    for op, scale in ((torch.sum, 1.0), (torch.mean, 1.0 / n)):
        got = (op(d) if dim is None else op(d, dim)).cpu()
        want = op(x) if dim is None else op(x, dim)
        bound = n * 2.0**-52 * ((x.abs().sum() if dim is None else x.abs().sum(dim)) * scale)
        assert got.dtype == torch.float64 and torch.equal(torch.isnan(got), torch.isnan(want))
        finite = torch.isfinite(want)
        assert torch.equal(got[~finite].nan_to_num(), want[~finite].nan_to_num())
        assert ((got - want).abs()[finite] <= bound.expand_as(want)[finite]).all()
    small = x[:, :20] * 1e-3
    got = small.to(DEV).prod(1).cpu()
    want = small.prod(1)
    # 20 roundings in another order; the row holding a subnormal has lost relative precision: absolute there
    assert torch.allclose(got, want, rtol=20 * 2.0**-52, atol=1e-305, equal_nan=True)


def test_extremes_and_their_indices_match_exactly(strict):
    x = _matrix()
    d = x.to(DEV)
    for dim in (0, 1):
        assert _same_bits(d.amax(dim).cpu(), x.amax(dim))
        assert _same_bits(d.amin(dim).cpu(), x.amin(dim))
        assert torch.equal(d.argmax(dim).cpu(), x.argmax(dim))
        assert torch.equal(d.argmin(dim).cpu(), x.argmin(dim))
    f32 = x.float()  # sum(dtype=float64) adds in double, as the CPU does
    got, want = f32.to(DEV).sum(1, dtype=torch.float64).cpu(), f32.sum(1, dtype=torch.float64)
    assert torch.allclose(got, want, rtol=300 * 2.0**-52, atol=1e-9, equal_nan=True)


def test_float64_into_a_narrower_intermediate_falls_back(lenient):
    # var builds its squares in a float32 intermediate (for float16 inputs): for doubles that would lose
    # precision silently, so it runs on the CPU, counted
    x = _matrix()[6:]
    before = nw.fallback_report()["total_fallback_calls"]
    got = x.to(DEV).var(1).cpu()
    assert nw.fallback_report()["total_fallback_calls"] > before
    assert _same_bits(got, x.var(1))
