"""Dense linear algebra on the wgpu device (issue 17) against PyTorch on the CPU: OpInfo samples (outputs
and float32 gradients) for every op, then what those small samples do not reach: random batches with
n up to 64 and broadcast batch dims, rectangular LU, pivots as LAPACK picks them, singular and
non-positive-definite inputs (info tensors and the CPU's error messages), NaN / inf inputs (never a silent
finite result), empty shapes, and float64 taking the counted CPU fallback."""
import warnings

import pytest
import torch

import navitrain.wgpu as nw
from tests.wgpu import opinfo

DEV = "wgpu"
F32 = torch.float32

OPINFO_NAMES = [
    "linalg.cholesky", "linalg.cholesky_ex", "cholesky", "cholesky_inverse", "cholesky_solve",
    "linalg.lu_factor", "linalg.lu_factor_ex", "linalg.lu", "lu", "lu_unpack", "linalg.lu_solve", "lu_solve",
    "linalg.solve", "linalg.solve_ex", "linalg.inv", "linalg.inv_ex", "linalg.det", "linalg.slogdet", "logdet",
    "linalg.solve_triangular", "triangular_solve", "linalg.tensorinv", "linalg.tensorsolve",
]


@pytest.mark.filterwarnings("ignore:.*(deprecated|replaced).*")
@pytest.mark.parametrize("name", OPINFO_NAMES)
def test_opinfo_matches_cpu(name):
    assert opinfo.check(opinfo.find(name), F32) > 0


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _well_conditioned(shape, seed):
    """Random matrices with a dominant diagonal: condition numbers stay small at any n."""
    g = _gen(seed)
    n = shape[-1]
    return torch.randn(shape, generator=g) + n * torch.eye(n) * torch.sign(torch.randn(shape[:-1], generator=g)
                                                                            ).unsqueeze(-1)


def _spd(shape, seed):
    a = torch.randn(shape, generator=_gen(seed))
    return a @ a.mT / shape[-1] + torch.eye(shape[-1])


def _close(got, exp, rtol=1e-4, atol=1e-4):
    assert got.device.type == DEV
    torch.testing.assert_close(got.cpu(), exp, rtol=rtol, atol=atol, equal_nan=True)


@pytest.mark.parametrize("n", [1, 2, 7, 33, 64])
def test_lu_factor_random_batches(n):
    a = torch.randn(3, 2, n, n, generator=_gen(n))  # plain Gaussian: pivoting matters
    lu, piv, info = torch.linalg.lu_factor_ex(a)
    lu_d, piv_d, info_d = torch.linalg.lu_factor_ex(a.to(DEV))
    assert torch.equal(piv_d.cpu(), piv) and torch.equal(info_d.cpu(), info)
    _close(lu_d, lu, rtol=1e-3, atol=1e-3)
    p, lower, upper = torch.lu_unpack(lu_d, piv_d)
    _close(p @ lower @ upper, a, atol=1e-4 * n)


@pytest.mark.parametrize("shape", [(6, 3), (3, 6), (2, 40, 17), (1, 5)])
def test_rectangular_lu(shape):
    a = torch.randn(shape, generator=_gen(1))
    for got, exp in zip(torch.linalg.lu(a.to(DEV)), torch.linalg.lu(a)):
        _close(got, exp)
    _, piv = torch.linalg.lu_factor(a.to(DEV))
    assert torch.equal(piv.cpu(), torch.linalg.lu_factor(a)[1])


def test_pivot_ties_and_exact_values_follow_lapack():
    # |-2| == |2|: the first row wins; a zero column stays unscaled and sets info to its (first) index
    a = torch.tensor([[1.0, 0.0, 5.0], [-2.0, 0.0, 1.0], [2.0, 0.0, 3.0]])
    lu, piv, info = torch.linalg.lu_factor_ex(a)
    lu_d, piv_d, info_d = torch.linalg.lu_factor_ex(a.to(DEV))
    assert torch.equal(piv_d.cpu(), piv) and torch.equal(info_d.cpu(), info) and info.item() == 2
    _close(lu_d, lu, rtol=0, atol=0)


@pytest.mark.parametrize("n", [1, 5, 64])
def test_solve_inverse_det_random(n):
    a = _well_conditioned((4, n, n), n)
    b = torch.randn(2, 4, n, 3, generator=_gen(n + 1))  # batch broadcast against a
    ad = a.to(DEV)
    _close(torch.linalg.solve(ad, b.to(DEV)), torch.linalg.solve(a, b))
    _close(torch.linalg.solve(ad, b[0, :, :, 0].to(DEV)), torch.linalg.solve(a, b[0, :, :, 0]))  # vector rhs
    _close(torch.linalg.solve(ad, b[0].mT.to(DEV), left=False), torch.linalg.solve(a, b[0].mT, left=False))
    _close(torch.linalg.inv(ad), torch.linalg.inv(a))
    _close(torch.linalg.inv(ad.mT), torch.linalg.inv(a.mT))  # a non-contiguous input: A itself is factored
    _close(torch.linalg.det(ad), torch.linalg.det(a), rtol=1e-3, atol=1e-5)
    for got, exp in zip(torch.linalg.slogdet(ad), torch.linalg.slogdet(a)):
        _close(got, exp)
    lu, piv = torch.linalg.lu_factor(a)
    for adjoint in (False, True):
        for left in (True, False):
            rhs = b[0] if left else b[0].mT
            _close(torch.linalg.lu_solve(lu.to(DEV), piv.to(DEV), rhs.to(DEV), left=left, adjoint=adjoint),
                   torch.linalg.lu_solve(lu, piv, rhs, left=left, adjoint=adjoint))


@pytest.mark.parametrize("n", [1, 6, 64])
def test_cholesky_family_random(n):
    a = _spd((3, n, n), n)
    ad = a.to(DEV)
    for upper in (False, True):
        factor = torch.linalg.cholesky(a, upper=upper)
        _close(torch.linalg.cholesky(ad, upper=upper), factor)
        b = torch.randn(2, 1, n, 4, generator=_gen(n))
        _close(torch.cholesky_solve(b.to(DEV), factor.to(DEV), upper=upper),
               torch.cholesky_solve(b, factor, upper=upper), rtol=1e-3, atol=1e-4)
        _close(torch.cholesky_inverse(factor[0].to(DEV), upper=upper), torch.cholesky_inverse(factor[0], upper=upper),
               rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("upper,left,unit", [(u, l, t) for u in (False, True) for l in (False, True)
                                             for t in (False, True)])
def test_solve_triangular_flags(upper, left, unit):
    n = 33
    # small off-diagonal entries: well conditioned with the diagonal read or taken as ones (unit)
    a = _well_conditioned((2, 1, n, n), 3) / n
    b = torch.randn(3, n, 5, generator=_gen(4))
    if not left:
        b = b.mT
    exp = torch.linalg.solve_triangular(a.double(), b.double(), upper=upper, left=left, unitriangular=unit).float()
    _close(torch.linalg.solve_triangular(a.to(DEV), b.to(DEV), upper=upper, left=left, unitriangular=unit), exp)
    if left:
        for transpose in (False, True):
            for got, want in zip(torch.triangular_solve(b.to(DEV), a.to(DEV), upper, transpose, unit),
                                 torch.triangular_solve(b.double(), a.double(), upper, transpose, unit)):
                _close(got, want.float())


def _raises_like_cpu(fn, cpu_arg, *rest):
    with pytest.raises(Exception) as cpu_err:
        fn(cpu_arg, *rest)
    with pytest.raises(type(cpu_err.value)) as dev_err:
        fn(cpu_arg.to(DEV), *[r.to(DEV) for r in rest])
    assert str(dev_err.value) == str(cpu_err.value)


def test_singular_inputs():
    a = _well_conditioned((3, 4, 4), 5)
    a[1, :, 2] = 0.0            # an exactly singular matrix in the middle of the batch
    a[2, 3] = 2 * a[2, 0]       # a row twice another: singular in exact arithmetic, maybe not in float32
    lu, piv, info = torch.linalg.lu_factor_ex(a[:2])
    lu_d, piv_d, info_d = torch.linalg.lu_factor_ex(a[:2].to(DEV))
    assert torch.equal(info_d.cpu(), info) and info[1].item() > 0 and torch.equal(piv_d.cpu(), piv)
    _close(lu_d, lu)
    _raises_like_cpu(torch.linalg.inv, a[:2])
    _raises_like_cpu(torch.linalg.solve, a[:2], torch.ones(2, 4, 1))
    _raises_like_cpu(torch.linalg.lu_factor, a[:2])
    _raises_like_cpu(lambda x: torch.linalg.inv_ex(x, check_errors=True), a[:2])
    _raises_like_cpu(torch.linalg.inv, torch.zeros(3, 3))
    assert torch.linalg.det(a[1].to(DEV)).item() == 0.0
    sign, logabs = torch.linalg.slogdet(a[1].to(DEV))
    assert sign.item() == 0.0 and logabs.item() == float("-inf")
    _, info_ex = torch.linalg.inv_ex(a[:2].to(DEV))
    assert torch.equal(info_ex.cpu(), torch.linalg.inv_ex(a[:2])[1])


def test_not_positive_definite():
    a = _spd((4, 5, 5), 6)
    a[1, 3, 3] = -50.0                 # minor of order 4 fails
    a[2] = -a[2]                       # order 1
    a[3, 2, 2] = float("nan")          # NaN is not > 0: order 3
    for upper in (False, True):
        _, info = torch.linalg.cholesky_ex(a, upper=upper)
        factor_d, info_d = torch.linalg.cholesky_ex(a.to(DEV), upper=upper)
        assert torch.equal(info_d.cpu(), info) and info.tolist() == [0, 4, 1, 3]
        _close(factor_d[0], torch.linalg.cholesky(a[0], upper=upper))
    _raises_like_cpu(torch.linalg.cholesky, a)
    _raises_like_cpu(torch.linalg.cholesky, a[2])
    _raises_like_cpu(lambda x: torch.linalg.cholesky_ex(x, check_errors=True), a[1])
    with warnings.catch_warnings():  # torch.cholesky is deprecated (warned once per process)
        warnings.simplefilter("ignore")
        _raises_like_cpu(torch.cholesky, a[1])


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_special_values_are_never_silently_finite(value):
    a = _well_conditioned((3, 6, 6), 7)
    a[0, 2, 4] = value   # off the first pivot column
    a[1, 5, 0] = value   # in it
    a[2, 1, 1] = value
    ad = a.to(DEV)
    b = torch.randn(6, 2, generator=_gen(8))
    results = [
        (torch.linalg.lu_factor_ex(ad)[0], torch.linalg.lu_factor_ex(a)[0]),
        (torch.linalg.solve_ex(ad, b.to(DEV))[0], torch.linalg.solve_ex(a, b)[0]),
        (torch.linalg.inv_ex(ad)[0], torch.linalg.inv_ex(a)[0]),
        (torch.linalg.det(ad), torch.linalg.det(a)),
        (torch.linalg.solve_triangular(ad, b.to(DEV), upper=False),
         torch.linalg.solve_triangular(a, b, upper=False)),
    ]
    for got, exp in results:
        got = got.cpu()
        # where the CPU's result is not finite, ours is not either (its NaN pattern may be wider: a NaN
        # pivot column is pivoted on, not skipped as LAPACK's isamax may skip it)
        assert not (torch.isfinite(got) & ~torch.isfinite(exp)).any(), (got, exp)


def test_empty_and_degenerate_shapes():
    for shape in [(0, 3, 3), (2, 0, 0), (4, 0), (0, 4)]:
        a = torch.zeros(shape)
        for got, exp in zip(torch.linalg.lu_factor_ex(a.to(DEV)), torch.linalg.lu_factor_ex(a)):
            assert got.shape == exp.shape and torch.equal(got.cpu(), exp)
    _close(torch.linalg.det(torch.zeros(2, 0, 0).to(DEV)), torch.ones(2))
    _close(torch.linalg.inv(torch.zeros(0, 2, 2).to(DEV)), torch.zeros(0, 2, 2))
    _close(torch.linalg.cholesky(torch.zeros(3, 0, 0).to(DEV)), torch.zeros(3, 0, 0))
    _close(torch.linalg.solve(torch.eye(3).to(DEV), torch.zeros(3, 0).to(DEV)), torch.zeros(3, 0))


def test_float64_takes_the_counted_cpu_fallback(lenient):
    a = _spd((2, 4, 4), 9).double()
    nw.reset_fallback_counts()
    with pytest.warns(UserWarning):
        got = torch.linalg.cholesky(a.to(DEV))
    assert got.dtype == torch.float64 and torch.equal(got.cpu(), torch.linalg.cholesky(a))
    assert nw.fallback_report()["cpu_fallbacks"].get("aten.linalg_cholesky_ex.default", 0) == 1


def test_float32_runs_without_fallback(strict):
    a = _well_conditioned((2, 5, 5), 10)
    nw.reset_fallback_counts()
    torch.linalg.solve(a.to(DEV), torch.ones(5).to(DEV)).cpu()
    torch.linalg.det(a.to(DEV)).cpu()
    assert nw.fallback_report()["total_fallback_calls"] == 0
