"""Eigen-, singular value and QR decompositions on the wgpu device (issue 17) against PyTorch on the CPU.

Eigenvector signs are not defined (LAPACK's and Jacobi's differ per column), so eigenvectors are checked
through what is defined: A V = V diag(w), V^T V = I, and |V| where the eigenvalues are distinct (the
OpInfo samples' own output_process_fn_grad, also for the gradients, which are then sign-invariant).
Eigenvalues are compared with float64 on the CPU. Tolerances: Jacobi in float32 is backward stable, so
errors are a small multiple of n * 2^-24 * max|A|; the bounds below are 1e-5 * n * max|A| (about 80x that)."""
import itertools

import pytest
import torch

import navitrain.wgpu as nw
from navitrain.wgpu.kernels import linalg_eigh as eigh_engine
from tests.wgpu import opinfo

DEV = "wgpu"


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _sym(shape, seed):
    a = torch.randn(shape, generator=_gen(seed))
    return a + a.mT


def _check_eigh(a, w, v, uplo="L"):
    """w, v (device) against float64 of the triangle `uplo` of a (CPU)."""
    a64 = (a.tril() + a.tril(-1).mT if uplo == "L" else a.triu() + a.triu(1).mT).double()
    w, v = w.cpu().double(), v.cpu().double()
    n = a.shape[-1]
    scale = max(a64.abs().max().item(), 1e-30)
    tol = 1e-5 * max(n, 1) * scale
    torch.testing.assert_close(w, torch.linalg.eigvalsh(a64), rtol=0, atol=tol)
    assert (w[..., 1:] >= w[..., :-1]).all(), "eigenvalues not ascending"
    assert (a64 @ v - v * w.unsqueeze(-2)).abs().max().item() <= tol
    assert (v.mT @ v - torch.eye(n, dtype=torch.float64)).abs().max().item() <= 1e-5 * max(n, 1)


def _sign_invariant_opinfo(name, max_samples=8):
    """The OpInfo samples of an eigenvector op, outputs and gradients through the samples'
    output_process_fn_grad (|V|); returns how many were compared."""
    op = opinfo.find(name)
    torch.manual_seed(0)
    samples = list(itertools.islice(op.sample_inputs("cpu", torch.float32, requires_grad=True, set_seed=False),
                                    max_samples))
    for i, s in enumerate(samples):
        ref = s.output_process_fn_grad(op(s.input, *s.args, **s.kwargs))
        x = s.input.detach().to(DEV).requires_grad_(True)
        out = s.output_process_fn_grad(op(x, *s.args, **s.kwargs))
        ref, out = torch.utils._pytree.tree_leaves(ref), torch.utils._pytree.tree_leaves(out)
        for r, d in zip(ref, out):
            assert d.device.type == DEV
            torch.testing.assert_close(d.detach().cpu(), r.detach(), rtol=1e-4, atol=1e-4)
        gen = _gen(1234 + i)
        seeds = [torch.randn(r.shape, generator=gen) for r in ref]
        (g_ref,) = torch.autograd.grad(ref, [s.input], seeds)
        (g_dev,) = torch.autograd.grad(out, [x], [g.to(DEV) for g in seeds])
        torch.testing.assert_close(g_dev.cpu(), g_ref, rtol=1e-3, atol=1e-3)
    return len(samples)


def test_eigh_opinfo_sign_invariant():
    assert _sign_invariant_opinfo("linalg.eigh", max_samples=5) > 0


@pytest.mark.parametrize("name,variant", [("linalg.eigvalsh", "")])
def test_opinfo_matches_cpu(name, variant):
    assert opinfo.check(opinfo.find(name, variant), torch.float32, max_samples=6) > 0


@pytest.mark.parametrize("n", [1, 2, 7, 33, 62])
def test_eigh_random_batches(n, strict):
    a = _sym((3, 2, n, n), n)
    for uplo in ("L", "U"):
        w, v = torch.linalg.eigh(a.to(DEV), UPLO=uplo)
        _check_eigh(a, w, v, uplo)
        torch.testing.assert_close(torch.linalg.eigvalsh(a.to(DEV), UPLO=uplo).cpu(), w.cpu(), rtol=0, atol=0)


def test_eigh_only_reads_one_triangle_and_any_layout(strict):
    a = torch.randn(2, 9, 9, generator=_gen(3))  # not symmetric: only the named triangle counts
    a[:, 0, 5] = float("nan")                      # in the upper triangle, which UPLO="L" never reads
    w, v = torch.linalg.eigh(a.to(DEV), UPLO="L")
    _check_eigh(a, w, v, "L")
    b = torch.randn(9, 2, 9, generator=_gen(4)).transpose(0, 1)  # a non-contiguous batch
    b = b + b.mT
    w, v = torch.linalg.eigh(b.to(DEV))
    _check_eigh(b, w, v)
    wb, vb = torch.linalg.eigh(_sym((4, 4), 5).to(DEV).expand(3, 4, 4))  # stride-0 batch
    _check_eigh(_sym((4, 4), 5).expand(3, 4, 4), wb, vb)


def test_eigh_repeated_eigenvalues_and_rank_deficiency(strict):
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=_gen(6), dtype=torch.float64))
    repeated = (q * torch.tensor([1.0, 1.0, 1.0, 2.0, 2.0, 5.0], dtype=torch.float64)) @ q.mT
    low_rank = torch.randn(7, 2, generator=_gen(7))
    cases = [repeated.float(), torch.eye(5), torch.zeros(4, 4), low_rank @ low_rank.mT,
             torch.diag(torch.tensor([3.0, -1.0, 2.0, -1.0])), torch.ones(5, 5)]
    for a in cases:
        w, v = torch.linalg.eigh(a.to(DEV))
        _check_eigh(a, w, v)


@pytest.mark.parametrize("scale", [1e-30, 1e30, 1e37])
def test_eigh_extreme_scales_do_not_overflow(scale, strict):
    a = _sym((2, 6, 6), 8) / 4
    w, v = torch.linalg.eigh((a * scale).to(DEV))
    assert torch.isfinite(w.cpu()).all() and torch.isfinite(v.cpu()).all()
    _check_eigh(a, w.cpu() / scale, v)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_eigh_non_finite_input_gives_nan(value, strict):
    a = _sym((3, 5, 5), 9)
    a[1, 3, 1] = value  # lower triangle, matrix 1 only
    w, v = torch.linalg.eigh(a.to(DEV))
    w, v = w.cpu(), v.cpu()
    assert w[1].isnan().all() and v[1].isnan().all()
    _check_eigh(a[::2], w[::2], v[::2])  # the others are unaffected


def test_eigh_empty_shapes(strict):
    for shape in [(0, 3, 3), (2, 0, 0)]:
        w, v = torch.linalg.eigh(torch.zeros(shape).to(DEV))
        ref = torch.linalg.eigh(torch.zeros(shape))
        assert w.shape == ref[0].shape and v.shape == ref[1].shape


def test_eigh_too_large_or_float64_takes_the_counted_fallback(lenient):
    big = eigh_engine.MAX_N + 1
    a = _sym((big, big), 10)
    nw.reset_fallback_counts()
    with pytest.warns(UserWarning):
        w = torch.linalg.eigvalsh(a.to(DEV)).cpu()
    torch.testing.assert_close(w, torch.linalg.eigvalsh(a))
    torch.linalg.eigvalsh(a[:4, :4].double().to(DEV)).cpu()  # warned once per op already
    assert nw.fallback_report()["cpu_fallbacks"].get("aten._linalg_eigh.default", 0) == 2


# -- SVD -------------------------------------------------------------------------------------------------
def _check_svd(a, u, s, vh, full):
    a64 = a.double()
    u, s, vh = u.cpu().double(), s.cpu().double(), vh.cpu().double()
    m, n = a.shape[-2], a.shape[-1]
    k = min(m, n)
    tol = 1e-5 * max(m, n, 1) * max(a64.abs().max().item(), 1e-30)
    torch.testing.assert_close(s, torch.linalg.svdvals(a64), rtol=0, atol=tol)
    assert (s[..., :-1] >= s[..., 1:]).all(), "singular values not descending"
    assert u.shape[-1] == (m if full else k) and vh.shape[-2] == (n if full else k)
    assert ((u[..., :k] * s.unsqueeze(-2)) @ vh[..., :k, :] - a64).abs().max().item() <= tol
    assert (u.mT @ u - torch.eye(u.shape[-1], dtype=torch.float64)).abs().max().item() <= 1e-5 * max(m, n, 1)
    assert (vh @ vh.mT - torch.eye(vh.shape[-2], dtype=torch.float64)).abs().max().item() <= 1e-5 * max(m, n, 1)


@pytest.mark.parametrize("shape,full", [((1, 1), True), ((3, 3), True), ((6, 4), True), ((4, 6), True),
                                        ((2, 40, 17), False), ((17, 40), True), ((31, 31), False)])
def test_svd_random(shape, full, strict):
    a = torch.randn(shape, generator=_gen(sum(shape)))
    u, s, vh = torch.linalg.svd(a.to(DEV), full_matrices=full)
    _check_svd(a, u, s, vh, full)
    torch.testing.assert_close(torch.linalg.svdvals(a.to(DEV)).cpu(), s.cpu(), rtol=0, atol=0)


def test_svd_largest_sizes_complete_their_bases(strict):
    """The sizes that run longest per thread: llvmpipe silently ends a loop after 65535 iterations (summed
    over the invocation), which once left the last basis columns of these zero."""
    tall = torch.randn(64, 60, generator=_gen(15))
    tall[:, 30:] = tall[:, :30]           # rank 30: 30 zero singular values, 34 columns of U to complete
    for a, full in [(tall, True), (tall.mT, True), (torch.randn(64, 1, generator=_gen(16)), True),
                    (torch.zeros(40, 40), False)]:
        u, s, vh = torch.linalg.svd(a.to(DEV), full_matrices=full)
        _check_svd(a, u, s, vh, full)


def test_svd_rank_deficient_and_repeated(strict):
    b = torch.randn(7, 2, generator=_gen(11))
    cases = [b @ torch.randn(2, 5, generator=_gen(12)), torch.eye(5), torch.zeros(4, 3), torch.ones(5, 5),
             torch.diag(torch.tensor([3.0, -3.0, 0.0, 1.0]))]
    for a in cases:
        u, s, vh = torch.linalg.svd(a.to(DEV), full_matrices=False)
        _check_svd(a, u, s, vh, False)


def test_svd_opinfo_sign_invariant():
    assert _sign_invariant_opinfo("svd", max_samples=4) > 0


@pytest.mark.parametrize("name", ["linalg.svdvals", "linalg.matrix_norm"])
def test_svd_values_opinfo_matches_cpu(name):
    assert opinfo.check(opinfo.find(name), torch.float32, max_samples=4) > 0


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_svd_non_finite_input_gives_nan(value, strict):
    a = torch.randn(3, 5, 4, generator=_gen(13))
    a[1, 2, 3] = value
    u, s, vh = torch.linalg.svd(a.to(DEV), full_matrices=False)
    assert s[1].cpu().isnan().all() and u[1].cpu().isnan().all() and vh[1].cpu().isnan().all()
    _check_svd(a[::2], u[::2], s[::2], vh[::2], False)


def test_svd_fallbacks_are_counted(lenient):
    nw.reset_fallback_counts()
    a = torch.randn(65, 3, generator=_gen(14))  # more rows than one workgroup's matrix holds
    with pytest.warns(UserWarning):
        u, s, vh = torch.linalg.svd(a.to(DEV), full_matrices=False)
    _check_svd(a, u, s, vh, False)
    assert nw.fallback_report()["cpu_fallbacks"].get("aten._linalg_svd.default", 0) == 1


# -- QR -----------------------------------------------------------------------------------------------------
# Householder QR with LAPACK's conventions is unique (R's diagonal signs included), so Q and R are compared
# with the CPU's directly; OpInfo's check covers forward and gradients.
@pytest.mark.filterwarnings("ignore:.*(deprecated|replaced).*")
@pytest.mark.parametrize("name", ["linalg.qr", "qr", "geqrf", "linalg.householder_product", "ormqr"])
def test_qr_opinfo_matches_cpu(name):
    assert opinfo.check(opinfo.find(name), torch.float32, max_samples=3) > 0


@pytest.mark.parametrize("shape", [(7, 7), (2, 40, 17), (17, 40), (128, 96)])
def test_qr_modes_match_cpu(shape, strict):
    a = torch.randn(shape, generator=_gen(sum(shape)))
    tol = 1e-5 * max(shape[-2:])
    for mode in ("reduced", "complete", "r"):
        for got, exp in zip(torch.linalg.qr(a.to(DEV), mode=mode), torch.linalg.qr(a, mode=mode)):
            assert got.shape == exp.shape and got.stride() == exp.stride()
            torch.testing.assert_close(got.cpu(), exp, rtol=0, atol=tol)


def test_qr_rank_deficient_and_zero_columns(strict):
    a = torch.randn(6, 4, generator=_gen(17))
    a[:, 1] = 0.0                 # a zero column: tau = 0, H = I, as LAPACK
    a[:, 3] = 2 * a[:, 2]         # dependent columns
    (got_a, got_tau), (exp_a, exp_tau) = torch.geqrf(a.to(DEV)), torch.geqrf(a)
    # the last reflector is built from rounding noise (any unit vector is right): compared through Q R
    torch.testing.assert_close(got_a.cpu()[:, :3], exp_a[:, :3], rtol=0, atol=1e-5)
    torch.testing.assert_close(got_tau.cpu()[:3], exp_tau[:3], rtol=0, atol=1e-5)
    assert got_tau[1].item() == 0.0
    q, r = torch.linalg.qr(a.to(DEV))
    torch.testing.assert_close((q @ r).cpu(), a, rtol=0, atol=1e-5)
    torch.testing.assert_close((q.mT @ q).cpu(), torch.eye(4), rtol=0, atol=1e-5)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_qr_non_finite_is_never_silently_finite(value, strict):
    a = torch.randn(3, 5, 4, generator=_gen(18))
    a[0, 3, 0] = value    # in the first reflector's tail
    a[1, 0, 2] = value    # in a later column's head
    for got, exp in zip(torch.linalg.qr(a.to(DEV)), torch.linalg.qr(a)):
        got = got.cpu()
        assert not (torch.isfinite(got) & ~torch.isfinite(exp)).any()
        torch.testing.assert_close(got[2], exp[2], rtol=0, atol=1e-5)


def test_qr_too_large_takes_the_counted_fallback(lenient):
    a = torch.randn(130, 3, generator=_gen(19))
    nw.reset_fallback_counts()
    with pytest.warns(UserWarning):
        q, r = torch.linalg.qr(a.to(DEV))
    torch.testing.assert_close(r.cpu(), torch.linalg.qr(a)[1])
    assert nw.fallback_report()["cpu_fallbacks"].get("aten.linalg_qr.default", 0) == 1


# -- pseudo-inverse -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", ["hermitian", "singular"])
def test_pinv_opinfo_matches_cpu(variant):
    assert opinfo.check(opinfo.find("linalg.pinv", variant), torch.float32, max_samples=3) > 0


def test_pinv_tolerances_and_rank_deficiency(lenient):
    """Default tolerances on well-conditioned matrices; explicit ones (far from any singular value, so
    float32 and float64 keep the same ones) on an exactly rank-deficient matrix. Lenient: PyTorch's
    wrapper builds its float64 tolerance tensors on the device (fill_ of float64 falls back); pinv and the
    decompositions themselves must not."""
    nw.reset_fallback_counts()
    full = torch.randn(2, 6, 4, generator=_gen(20))
    deficient = full.clone()
    deficient[..., 3] = deficient[..., 0]
    cases = [(full, False, {}), (full.mT, False, {}), (full[..., :4, :] + full[..., :4, :].mT, True, {})]
    for kwargs in [{"rtol": 1e-3}, {"atol": 1e-2}, {"atol": 1e-2, "rtol": 1e-3},
                   {"rtol": torch.tensor([1e-3, 0.9], dtype=torch.float64)}]:  # one tolerance per matrix
        cases += [(deficient, False, kwargs), (deficient[..., :4, :] + deficient[..., :4, :].mT, True, kwargs)]
    for x, herm, kwargs in cases:
        exp = torch.linalg.pinv(x.double(), hermitian=herm, **kwargs).float()
        dev_kwargs = {k: v.to(DEV) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
        got = torch.linalg.pinv(x.to(DEV), hermitian=herm, **dev_kwargs).cpu()
        torch.testing.assert_close(got, exp, rtol=0, atol=1e-4 * max(exp.abs().max().item(), 1.0))
    fallbacks = nw.fallback_report()["cpu_fallbacks"]
    assert not [op for op in fallbacks if "pinv" in op or "linalg_svd" in op or "linalg_eigh" in op], fallbacks


# -- least squares ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", ["", "grad_oriented"])
def test_lstsq_opinfo_matches_cpu(variant):
    assert opinfo.check(opinfo.find("linalg.lstsq", variant), torch.float32, max_samples=3) > 0


@pytest.mark.parametrize("driver", [None, "gels", "gelsd", "gelss"])
def test_lstsq_drivers_shapes_and_rank(driver, strict):
    a = torch.randn(2, 7, 4, generator=_gen(21))
    b = torch.randn(1, 7, 3, generator=_gen(22))          # broadcast batch
    deficient = a.clone()
    deficient[1, :, 3] = deficient[1, :, 0]                # rank 3 in the second matrix
    cases = [(a, b), (a, b[0, :, :2].mT), (a.mT[..., :3], b[..., :4, :])]   # tall, vector rhs, wide
    if driver != "gels":
        cases.append((deficient, b))
    for x, y in cases:
        got, exp = torch.linalg.lstsq(x.to(DEV), y.to(DEV), driver=driver), torch.linalg.lstsq(x, y, driver=driver)
        for g, e in zip(got, exp):
            assert g.shape == e.shape and g.dtype == e.dtype and g.device.type == DEV
            torch.testing.assert_close(g.cpu(), e, rtol=1e-4, atol=1e-4)


def test_lstsq_non_finite_is_never_silently_finite(strict):
    a = torch.randn(2, 6, 3, generator=_gen(23))
    a[0, 2, 1] = float("nan")
    got = torch.linalg.lstsq(a.to(DEV), torch.randn(6, 2, generator=_gen(24)).to(DEV)).solution.cpu()
    assert got[0].isnan().all() and torch.isfinite(got[1]).all()


# -- matrix exponential ---------------------------------------------------------------------------------------
def test_matrix_exp_opinfo_matches_cpu():
    # rtol 1e-4: on the sample with |A|_1 ~ 30 the CPU's float32 result and ours are both within 1.6e-6 of
    # float64 relative to the largest entry, but differ from each other by 2e-5 on single entries (squarings
    # amplify rounding); the float64 comparison below bounds ours on its own
    assert opinfo.check(opinfo.find("matrix_exp"), torch.float32, max_samples=4, rtol=1e-4, atol=1e-4) > 0


@pytest.mark.parametrize("scale", [1e-3, 1.0, 10.0])
def test_matrix_exp_against_float64(scale, strict):
    a = torch.randn(3, 9, 9, generator=_gen(25)) * scale
    a[1] *= 0.01                                   # matrices of one batch scaled by different powers of two
    exp = torch.linalg.matrix_exp(a.double())
    got = torch.linalg.matrix_exp(a.to(DEV)).cpu().double()
    # float32 rounding grows with the squarings (about log2 |A| of them) and the condition of exp(A)
    assert ((got - exp).abs().amax((-2, -1)) / exp.abs().amax((-2, -1))).max().item() < 1e-5 * max(scale, 1.0)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_matrix_exp_non_finite_is_never_silently_finite(value, strict):
    a = torch.randn(2, 4, 4, generator=_gen(26))
    a[0, 1, 2] = value
    got, exp = torch.linalg.matrix_exp(a.to(DEV)).cpu(), torch.linalg.matrix_exp(a)
    assert not (torch.isfinite(got) & ~torch.isfinite(exp)).any()
    torch.testing.assert_close(got[1], exp[1], rtol=1e-5, atol=1e-5)
