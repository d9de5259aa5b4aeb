"""torch.special's Bessel, Airy, error-function, zeta, incomplete gamma and orthogonal polynomial ops on
the GPU (ops/special_functions.py, issue 17): PyTorch's OpInfo samples against the CPU (outputs, and
float32 gradients where PyTorch has them), wide random ranges against a float64 CPU reference, and
NaN, +-inf, +-0, negative and huge arguments against the CPU's own special cases."""
from __future__ import annotations

import pytest
import torch

import navitrain.wgpu as nw
from tests.wgpu import opinfo

DEV = "wgpu"
RTOL, ATOL = 1.3e-5, 1e-5  # PyTorch's float32 tolerances (tests/wgpu/opinfo.py)

UNARY = {
    "special.bessel_j0": torch.special.bessel_j0, "special.bessel_j1": torch.special.bessel_j1,
    "special.bessel_y0": torch.special.bessel_y0, "special.bessel_y1": torch.special.bessel_y1,
    "special.modified_bessel_i0": torch.special.modified_bessel_i0,
    "special.modified_bessel_i1": torch.special.modified_bessel_i1,
    "special.modified_bessel_k0": torch.special.modified_bessel_k0,
    "special.modified_bessel_k1": torch.special.modified_bessel_k1,
    "special.scaled_modified_bessel_k0": torch.special.scaled_modified_bessel_k0,
    "special.scaled_modified_bessel_k1": torch.special.scaled_modified_bessel_k1,
    "i0": torch.i0, "special.i0e": torch.special.i0e, "special.i1": torch.special.i1, "special.i1e": torch.special.i1e,
    "special.spherical_bessel_j0": torch.special.spherical_bessel_j0, "special.airy_ai": torch.special.airy_ai,
    "special.erfcx": torch.special.erfcx, "special.log_ndtr": torch.special.log_ndtr,
}
POLYNOMIALS = {
    f"special.{kind}": getattr(torch.special, kind) for kind in (
        "chebyshev_polynomial_t", "chebyshev_polynomial_u", "chebyshev_polynomial_v", "chebyshev_polynomial_w",
        "shifted_chebyshev_polynomial_t", "shifted_chebyshev_polynomial_u", "shifted_chebyshev_polynomial_v",
        "shifted_chebyshev_polynomial_w", "hermite_polynomial_h", "hermite_polynomial_he",
        "laguerre_polynomial_l", "legendre_polynomial_p")
}
OPINFO_NAMES = [*UNARY, "special.ndtri", "special.zeta", "igamma", "igammac", *POLYNOMIALS]
SPECIAL_VALUES = [0.0, -0.0, 1e-30, -1e-30, 1e-6, -1e-6, 1.0, -1.0, 1e5, -1e5, 1e30, 3e38, float("inf"),
                  -float("inf"), float("nan")]


def _on_gpu(fn, *args):
    nw.reset_fallback_counts()
    out = fn(*(a.to(DEV) if isinstance(a, torch.Tensor) else a for a in args))
    assert nw.fallback_report()["total_fallback_calls"] == 0, nw.fallback_report()
    assert out.device.type == DEV
    return out.cpu()


def _wide(n: int, seed: int, lo: float = -6.0, hi: float = 2.0) -> torch.Tensor:
    """Magnitudes from 10^lo to 10^hi, both signs, plus a dense uniform stretch where functions oscillate."""
    g = torch.Generator().manual_seed(seed)
    mags = 10.0 ** (lo + (hi - lo) * torch.rand(n, generator=g, dtype=torch.float64))
    signs = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0).double()
    dense = (torch.rand(n, generator=g, dtype=torch.float64) - 0.5) * 80
    return torch.cat([mags * signs, dense]).float()


# -- PyTorch's OpInfo samples ------------------------------------------------------------------------
@pytest.mark.parametrize("name", OPINFO_NAMES)
def test_opinfo_samples_float32(name):
    # outputs on contiguous and non-contiguous samples; gradients of float32 where PyTorch defines them
    # (i0, i0e, i1, i1e through prims.bessel_i1/i1e; erfcx, log_ndtr, ndtri)
    assert opinfo.check(opinfo.find(name), torch.float32, max_samples=3) > 0


@pytest.mark.parametrize("name", ["i0", "special.i0e", "special.i1", "special.i1e", "igamma", "igammac"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_opinfo_samples_reduced_precision(name, dtype):
    assert opinfo.check(opinfo.find(name), dtype, max_samples=2, noncontiguous=False) > 0


@pytest.mark.parametrize("name", ["special.bessel_y0", "special.erfcx", "special.chebyshev_polynomial_t"])
@pytest.mark.parametrize("dtype", [torch.int64, torch.bool])
def test_integer_and_bool_inputs_give_float32(name, dtype):
    # the result is float32 (compared with float32's tolerances: int inputs have none of their own)
    assert opinfo.check(opinfo.find(name), dtype, max_samples=2, rtol=RTOL, atol=ATOL, noncontiguous=False) > 0


# -- wide ranges against float64 -------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(UNARY) + ["special.ndtri"])
def test_unary_wide_range_against_float64(name):
    fn = UNARY.get(name, torch.special.ndtri)
    if name == "special.ndtri":
        g = torch.Generator().manual_seed(7)
        x = torch.cat([torch.rand(4000, generator=g), 10.0 ** (-37 * torch.rand(2000, generator=g)),
                       1 - 10.0 ** (-7 * torch.rand(500, generator=g))]).float()
    else:
        x = _wide(3000, seed=len(name))
    got = _on_gpu(fn, x)
    ref = fn(x.double()).float()  # float64 rounded: overflow is inf as float32 has it
    torch.testing.assert_close(got, ref, rtol=RTOL, atol=ATOL, equal_nan=True)


@pytest.mark.parametrize("name", list(UNARY) + ["special.ndtri"])
def test_unary_special_values_match_the_cpu(name):
    fn = UNARY.get(name, torch.special.ndtri)
    x = torch.tensor(SPECIAL_VALUES + ([0.5, 0.05, 0.95, 1.1, -0.1] if name == "special.ndtri" else []))
    got = _on_gpu(fn, x)
    # float64 where it is finite (the CPU's float32 Airy and Bessel functions lose the phase at 1e5)
    ref32, ref64 = fn(x), fn(x.double()).float()
    torch.testing.assert_close(got, torch.where(ref64.isfinite(), ref64, ref32), rtol=RTOL, atol=ATOL, equal_nan=True)


def test_ndtri_subnormal_probabilities():
    # drivers may flush subnormal operands of log: the tail reads p's bits instead
    x = torch.tensor([1.4e-45, 1e-40, 1e-39, 1.1754942e-38])
    torch.testing.assert_close(_on_gpu(torch.special.ndtri, x), torch.special.ndtri(x.double()).float(),
                               rtol=RTOL, atol=ATOL)


def test_zeta_wide_range_and_special_cases():
    g = torch.Generator().manual_seed(3)
    s = torch.cat([1 + 10.0 ** (-3 + 4 * torch.rand(2000, generator=g)),
                   torch.randint(2, 12, (500,), generator=g).double()])
    q = torch.cat([10.0 ** (-2 + 4 * torch.rand(2000, generator=g)), -20 * torch.rand(500, generator=g)])
    s, q = s.float(), q.float()
    got = _on_gpu(torch.special.zeta, s, q)
    torch.testing.assert_close(got, torch.special.zeta(s.double(), q.double()).float(), rtol=RTOL, atol=ATOL,
                               equal_nan=True)
    inf, nan = float("inf"), float("nan")
    edge = torch.tensor([1.0, 0.5, 2.0, 2.5, 3.0, inf, inf, inf, nan, 2.0, 2.0, 4.0, 2.0])
    q_edge = torch.tensor([2.0, 2.0, 0.0, -1.5, -1.5, 0.5, 1.0, 2.0, 1.0, inf, nan, -3.0, -inf])
    torch.testing.assert_close(_on_gpu(torch.special.zeta, edge, q_edge), torch.special.zeta(edge, q_edge),
                               equal_nan=True)
    # Python scalars on either side (the self_scalar / other_scalar overloads)
    torch.testing.assert_close(_on_gpu(torch.special.zeta, 3.0, q[:50]),
                               torch.special.zeta(3.0, q[:50].double()).float(), rtol=RTOL, atol=ATOL, equal_nan=True)
    torch.testing.assert_close(_on_gpu(torch.special.zeta, s[:50], 2.0),
                               torch.special.zeta(s[:50].double(), 2.0).float(), rtol=RTOL, atol=ATOL, equal_nan=True)


@pytest.mark.parametrize("fn", [torch.special.gammainc, torch.special.gammaincc])
def test_incomplete_gamma_wide_range_and_special_cases(fn):
    g = torch.Generator().manual_seed(5)
    a = (10.0 ** (-3 + 6 * torch.rand(3000, generator=g))).float()
    x = (a.double() * 10.0 ** (-1.5 + 3 * torch.rand(3000, generator=g))).float()  # around a, where it is hard
    got = _on_gpu(fn, a, x)
    torch.testing.assert_close(got, fn(a.double(), x.double()).float(), rtol=RTOL, atol=ATOL, equal_nan=True)
    inf, nan = float("inf"), float("nan")
    ea = torch.tensor([0.0, 0.0, 1.0, inf, inf, 1.0, -1.0, 1.0, nan, 2.0])
    ex = torch.tensor([1.0, 0.0, 0.0, 1.0, inf, inf, 1.0, -1.0, 1.0, nan])
    torch.testing.assert_close(_on_gpu(fn, ea, ex), fn(ea, ex), equal_nan=True)


def _as_close_as_the_cpu(got, ref32, ref64):
    """Recurrences near a root cancel: the float32 result may be off float64 by more than the tolerance
    on the CPU too. The GPU must be within the tolerance of float64, or no further off than 4x the CPU's
    float32 error; non-finite values must be the CPU's."""
    finite = ref32.isfinite()
    torch.testing.assert_close(got[~finite], ref32[~finite], equal_nan=True)
    g, c, r = got[finite].double(), ref32[finite].double(), ref64[finite]
    bad = (g - r).abs() > 4 * (c - r).abs() + ATOL + RTOL * r.abs()
    assert not bad.any(), f"got {g[bad][:5].tolist()}, CPU float32 {c[bad][:5].tolist()}, float64 {r[bad][:5].tolist()}"


@pytest.mark.parametrize("name", list(POLYNOMIALS))
def test_polynomials_against_the_cpu(name):
    # PyTorch's definitions branch on |x| = 1, x = 0 and the order: compared with its float32 results
    fn = POLYNOMIALS[name]
    g = torch.Generator().manual_seed(11)
    x = torch.cat([(torch.rand(600, generator=g) - 0.5) * 3, torch.tensor([1.0, -1.0, 0.0, 0.5, 1e-9, float("nan"),
                                                                        float("inf"), -float("inf")])]).float()
    n = torch.randint(-2, 14, x.shape, generator=g)
    _as_close_as_the_cpu(_on_gpu(fn, x, n), fn(x, n), fn(x.double(), n))
    # a float order with NaN/inf (the CPU casts it to int64: negative, so 0), and scalar x or n
    nf = torch.tensor([2.0, float("nan"), float("inf"), -float("inf"), 3.7, 9.0]).float()
    xs = torch.full_like(nf, 0.3)
    torch.testing.assert_close(_on_gpu(fn, xs, nf), fn(xs, nf), rtol=RTOL, atol=ATOL, equal_nan=True)
    torch.testing.assert_close(_on_gpu(fn, x[:40], 5), fn(x[:40], 5), rtol=RTOL, atol=ATOL, equal_nan=True)
    torch.testing.assert_close(_on_gpu(fn, 0.25, n[:40]), fn(0.25, n[:40]), rtol=RTOL, atol=ATOL, equal_nan=True)


def test_out_variants_and_inplace():
    x = torch.rand(5, 3) * 4
    out = torch.empty(0, device=DEV)
    torch.special.bessel_j0(x.to(DEV), out=out)
    torch.testing.assert_close(out.cpu(), torch.special.bessel_j0(x), rtol=RTOL, atol=ATOL)
    y = x.to(DEV)
    y.i0_()
    torch.testing.assert_close(y.cpu(), torch.i0(x), rtol=RTOL, atol=ATOL)
    with pytest.raises(RuntimeError, match="can't be cast"):
        torch.arange(3, device=DEV).i0_()
    a, b = torch.rand(4) + 0.5, torch.rand(4) * 3
    y = a.to(DEV)
    y.igamma_(b.to(DEV))
    torch.testing.assert_close(y.cpu(), torch.igamma(a, b), rtol=RTOL, atol=ATOL)
    out = torch.empty(5, 3, device=DEV)
    torch.special.chebyshev_polynomial_t(x.to(DEV), 3, out=out)
    torch.testing.assert_close(out.cpu(), torch.special.chebyshev_polynomial_t(x, 3), rtol=RTOL, atol=ATOL)


def test_float64_and_huge_orders_take_the_counted_fallback(lenient):
    x = torch.rand(8, dtype=torch.float64) * 3
    nw.reset_fallback_counts()
    got = torch.special.bessel_j0(x.to(DEV)).cpu()
    assert nw.fallback_report()["total_fallback_calls"] >= 1
    torch.testing.assert_close(got, torch.special.bessel_j0(x))
    # Legendre recurs n times: orders past the GPU's limit run on the CPU rather than in one thread
    xf = torch.rand(4) * 0.5
    n = torch.tensor([3, 70000, 2, 1])
    nw.reset_fallback_counts()
    got = torch.special.legendre_polynomial_p(xf.to(DEV), n.to(DEV)).cpu()
    assert nw.fallback_report()["total_fallback_calls"] >= 1
    torch.testing.assert_close(got, torch.special.legendre_polynomial_p(xf, n), rtol=RTOL, atol=ATOL)
