"""sin, cos and tan over the whole float32 range against float64 on the CPU (kernels/wgsl_trig.py).

A driver's sin/cos is only bounded to 2^-11 absolute on [-pi, pi]: the H100's was 1.2e-3 off at |x| ~ 5e3
and garbage past 1e6, while lavapipe is accurate, so these tests check the values navitrain computes
itself (no driver sin/cos/tan is called) and would catch a reduction that loses accuracy anywhere.

Error measure (`ulps`): |got - ref| / u, ref the float64 result (the CPU's libm, correctly reduced for
every double), u the spacing of float32 numbers in the binade of ref rounded to float32 (2^-149 at 0);
a correctly rounded float32 result is within 0.5. Every value is asserted within 2 (lavapipe: <= 0.77 for
sin/cos, <= 1.11 for tan). No absolute slack near the zeros: the reduction keeps r's relative accuracy.
"""
from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch

F32_MAX = float(np.finfo(np.float32).max)
FUNCTIONS = {"sin": torch.sin, "cos": torch.cos, "tan": torch.tan}


def ulps(got: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """|got - ref| in float32 ulps of the float64 reference (see the module docstring)."""
    r32 = ref.float().double().abs()
    spacing = torch.pow(2.0, torch.floor(torch.log2(r32.clamp(min=2.0 ** -126))) - 23).clamp(min=2.0 ** -149)
    diff = (got.cpu().double() - ref).abs()
    return torch.where(torch.isnan(diff), torch.inf, diff) / spacing


def _check_all(x: torch.Tensor, limit: float = 2.0):
    xd = x.to("wgpu")
    for name, fn in FUNCTIONS.items():
        err = ulps(fn(xd), fn(x.double()))
        worst = int(err.argmax())
        assert err.max() <= limit, (name, x[worst].item(), err.max().item())


def _pi_bits(bits: int) -> Fraction:
    """pi to 2^-bits (Machin's formula in integers)."""
    def arctan_inv(n: int) -> int:  # arctan(1/n) * 2^(bits + 20)
        total, term, k = 0, (1 << (bits + 20)) // n, 0
        while term:
            total += term // (2 * k + 1) * (1 if k % 2 == 0 else -1)
            term //= n * n
            k += 1
        return total
    return Fraction(4 * (4 * arctan_inv(5) - arctan_inv(239)) >> 20, 1 << bits)


PI = _pi_bits(400)


def test_random_values_in_every_decade_up_to_float32_max():
    g = torch.Generator().manual_seed(0)
    decades = torch.arange(-3, 39, dtype=torch.float64).repeat_interleave(1500)
    x = torch.pow(10.0, decades + torch.rand(len(decades), generator=g, dtype=torch.float64))
    x = x.clamp(max=F32_MAX).float() * (torch.randint(0, 2, x.shape, generator=g) * 2 - 1)
    _check_all(x)


def test_floats_nearest_multiples_of_half_pi():
    """The zeros of sin and cos (and tan's zeros and poles): float32(k pi/2) and its neighbours, k up to 1e6
    and huge k; each result must keep its relative accuracy although it is tiny."""
    g = torch.Generator().manual_seed(1)
    k = torch.cat([torch.arange(1, 400), torch.randint(400, 1_000_000, (1500,), generator=g)]).double()
    huge = torch.pow(2.0, torch.rand(600, generator=g, dtype=torch.float64) * 100 + 20).floor()
    x = (torch.cat([k, huge]) * (math.pi / 2)).float()
    x = torch.cat([x, torch.nextafter(x, torch.full_like(x, math.inf)), torch.nextafter(x, torch.zeros_like(x))])
    _check_all(torch.cat([x, -x]))


def _closest_to_half_pi_multiples() -> list[tuple[float, int, Fraction]]:
    """Per binary exponent e, the float32 x = q 2^e (q < 2^24) closest to a multiple of pi/2: q is the
    largest continued-fraction denominator of frac(2^e 2/pi) below 2^24 (best approximations), so these
    are the hardest inputs for the reduction. Returns (x, n, r) with x = n pi/2 + r exactly (to 2^-300)."""
    two_over_pi = 2 / PI
    found = []
    for e in range(-24, 105):
        beta = (two_over_pi * Fraction(2) ** e) % 1
        q_prev, q, rest = 0, 1, beta
        while rest:
            rest = 1 / rest
            a = math.floor(rest)
            rest -= a
            if a * q + q_prev >= 1 << 24:
                break
            q_prev, q = q, a * q + q_prev
        x = Fraction(q) * Fraction(2) ** e
        n = round(x * two_over_pi)
        found.append((float(x), n, x - n * PI / 2))
    return found


def test_the_hardest_cases_of_the_reduction():
    """The float32 nearest a multiple of pi/2 over the whole range is 16367173 * 2^72 (1.6e-9 away); each
    exponent's nearest is checked against the exact remainder r (sin(x) = +-r for even n, ...), and
    against float64 (which must agree: glibc reduces doubles exactly)."""
    cases = _closest_to_half_pi_multiples()
    worst = min(cases, key=lambda c: abs(c[2]))
    assert worst[0] == 16367173 * 2.0 ** 72 and 1.6e-9 < abs(float(worst[2])) < 1.7e-9
    x = torch.tensor([c[0] for c in cases], dtype=torch.float32)
    n = torch.tensor([c[1] % 4 for c in cases])
    r = torch.tensor([float(c[2]) for c in cases], dtype=torch.float64)
    small = r.abs() < 1e-6  # sin(r) = r, cos(r) = 1 to far below float32's resolution
    xd = torch.cat([x, -x]).to("wgpu")
    got = {name: fn(xd).cpu()[: len(x)] for name, fn in FUNCTIONS.items()}
    sign = torch.where(n >= 2, -1.0, 1.0).double()
    exact_sin = torch.where(n % 2 == 0, sign * r, sign).double()  # n odd: +-cos(r) = +-1
    exact_cos = torch.where(n % 2 == 0, sign, -sign * r).double()
    for name, exact in (("sin", exact_sin), ("cos", exact_cos)):
        assert torch.equal(exact[small].float(), FUNCTIONS[name](x.double())[small].float()), name
        assert ulps(got[name][small], exact[small]).max() <= 2, name
    _check_all(torch.cat([x, -x]))


def test_special_values_signed_zeros_and_subnormals():
    x = torch.tensor([math.nan, math.inf, -math.inf, 0.0, -0.0, 1e-45, -1e-45, 1e-40, -3e-39, 1.1754944e-38,
                      1e-30, -1e-20, F32_MAX, -F32_MAX])
    xd = x.to("wgpu")
    for name, fn in FUNCTIONS.items():
        got, ref = fn(xd).cpu(), fn(x)
        assert torch.equal(torch.isnan(got), torch.isnan(ref)), name
        fin = ~torch.isnan(ref)
        assert torch.equal(got[fin], ref[fin]), (name, got, ref)
        assert torch.equal(torch.signbit(got[fin]), torch.signbit(ref[fin])), name  # sin(-0) = -0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_goes_through_float32(dtype):
    g = torch.Generator().manual_seed(2)
    x = (torch.rand(4000, generator=g) * 2 - 1) * float(torch.finfo(dtype).max) ** torch.rand(4000, generator=g)
    x = x.to(dtype)
    for name, fn in FUNCTIONS.items():
        got = fn(x.to("wgpu")).cpu()
        ref = fn(x.float()).to(dtype)  # the CPU computes in float32 and rounds once
        assert got.dtype == dtype
        torch.testing.assert_close(got, ref, rtol=0, atol=0, equal_nan=True, msg=name)


def test_foreach_sin_cos_and_the_sin_backward_use_the_full_range_reduction():
    g = torch.Generator().manual_seed(3)
    xs = [torch.exp(torch.rand(n, generator=g, dtype=torch.float64) * 80).float() * (1 - 2 * (n % 2))
          for n in (257, 1000)]
    for op, fn in ((torch._foreach_sin, torch.sin), (torch._foreach_cos, torch.cos)):
        for got, x in zip(op([x.to("wgpu") for x in xs]), xs):
            assert ulps(got, fn(x.double())).max() <= 2, op
    x = xs[1].to("wgpu").requires_grad_()
    torch.sin(x).backward(torch.full_like(x, 1.0))  # sin' = cos, through the cos handler
    assert ulps(x.grad, torch.cos(xs[1].double())).max() <= 2
    y = xs[0].to("wgpu").requires_grad_()
    torch.cos(y).backward(torch.full_like(y, 1.0))
    assert ulps(y.grad, -torch.sin(xs[0].double())).max() <= 2


@pytest.mark.usefixtures("fresh_compile_state")
def test_compiled_pointwise_chain_with_sin():
    """fusion_ops.py has no rule for sin/cos: a compiled chain keeps them as their own (accurate) kernels."""
    g = torch.Generator().manual_seed(4)
    x = torch.rand(3000, generator=g) * 2e4 - 1e4

    def chain(t):
        return torch.sin(t * 3.0) + torch.cos(t) * 0.5

    got = torch.compile(chain, backend="wgpu")(x.to("wgpu")).cpu()
    ref = torch.sin((x * 3.0).double()) + torch.cos(x.double()) * 0.5
    assert (got.double() - ref).abs().max() <= 4e-7  # each term within 2 ulp of values <= 1, then one add
