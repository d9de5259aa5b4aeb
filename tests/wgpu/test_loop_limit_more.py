"""llvmpipe's loop limit (issue 17), the rest of the audit: each engine here gave silently wrong values at
these shapes on lavapipe before its fix (kernels/loop_budget.py has the rule; test_loop_limit.py the
probe). Shapes are long in the looped dim and small overall. Where no real layer reaches the limit the
engine sends the launch to the counted CPU fallback on a software adapter (`lenient`: strict mode would
refuse that fallback); on real GPUs the same tests just run the kernels."""
from __future__ import annotations

import torch
import torch.nn.functional as F

NAN, INF = float("nan"), float("inf")


def _close(got, want, **tol):
    torch.testing.assert_close(got.cpu(), want.float(), equal_nan=True, **tol)


def test_layer_norm_of_long_strided_rows_matches_the_cpu():
    # a transposed view is normalized in place, one thread per row before: 3 x 70,000 loop passes
    x = torch.randn(70_000, 3) * 3 + 1
    x[123, 0], x[69_999, 2] = NAN, INF   # rows 0 and 2 are NaN, row 1 is finite
    w, b = torch.randn(70_000), torch.randn(70_000)
    got = F.layer_norm(x.to("wgpu").t(), [70_000], w.to("wgpu"), b.to("wgpu"))
    _close(got, F.layer_norm(x.double().t(), [70_000], w.double(), b.double()), rtol=1e-4, atol=1e-4)

    x = torch.randn(70_000, 2)
    g = torch.randn(2, 70_000)
    leaves = [t.requires_grad_() for t in (x.to("wgpu"), w.to("wgpu"), b.to("wgpu"))]
    F.layer_norm(leaves[0].t(), [70_000], leaves[1], leaves[2]).backward(g.to("wgpu"))
    ref = [t.double().requires_grad_() for t in (x, w, b)]
    F.layer_norm(ref[0].t(), [70_000], ref[1], ref[2]).backward(g.double())
    for got, want in zip(leaves, ref):
        _close(got.grad, want.grad, rtol=1e-4, atol=1e-4)


def test_a_normalized_row_past_256_lanes_budget_matches_the_cpu(lenient):
    # 6M elements: 3 x 23,438 passes for each of 256 lanes; llvmpipe takes the CPU
    x = torch.randn(1, 6_000_000) * 2
    x[0, 17] = -INF
    _close(F.layer_norm(x.to("wgpu"), [6_000_000]), F.layer_norm(x.double(), [6_000_000]))
    y = torch.randn(1, 6_000_000)
    _close(F.group_norm(y.to("wgpu"), 1), F.group_norm(y.double(), 1), rtol=1e-4, atol=1e-4)


def test_group_norm_backward_with_long_groups_or_many_samples_matches_the_cpu(lenient):
    # a thread walked the 70,000 channels of a group (input gradient) or the 70,000 samples (weight gradient)
    for shape in ((2, 70_000), (70_000, 8)):
        x, g = torch.randn(shape), torch.randn(shape)
        w, b = torch.rand(shape[1]) + 0.5, torch.randn(shape[1])
        leaves = [t.requires_grad_() for t in (x.to("wgpu"), w.to("wgpu"), b.to("wgpu"))]
        F.group_norm(leaves[0], 1, leaves[1], leaves[2]).backward(g.to("wgpu"))
        ref = [t.double().requires_grad_() for t in (x, w, b)]
        F.group_norm(ref[0], 1, ref[1], ref[2]).backward(g.double())
        for got, want in zip(leaves, ref):
            _close(got.grad, want.grad, rtol=1e-3, atol=1e-3)  # 8-element groups: ill-conditioned in float32


def test_global_average_pool_of_large_planes_matches_the_cpu():
    # channels-last: one thread walked a 90,000-position plane; NCHW: 16 lanes a 1,048,576-position one
    x = torch.randn(1, 3, 300, 300) + 0.5
    x[0, 1, 7, 8], x[0, 2, 299, 299] = NAN, INF
    x = x.to(memory_format=torch.channels_last)
    _close(F.adaptive_avg_pool2d(x.to("wgpu"), 1), F.adaptive_avg_pool2d(x.double(), 1), rtol=1e-5, atol=1e-6)
    y = torch.rand(1, 2, 1024, 1024)
    y[0, 1, 1000, 3] = -INF
    _close(F.adaptive_avg_pool2d(y.to("wgpu"), 1), F.adaptive_avg_pool2d(y.double(), 1), rtol=1e-5, atol=1e-6)


def test_convolution_over_more_taps_than_the_loop_budget_matches_the_cpu(lenient):
    # K = C*KH*KW = 540,000 is 67,500 BK steps for one thread of the implicit GEMM (forward), and the same
    # K = OC*KH*KW for the input gradient; llvmpipe takes the CPU
    x, w = torch.randn(1, 60_000, 3, 3), torch.randn(1, 60_000, 3, 3)
    _close(F.conv2d(x.to("wgpu"), w.to("wgpu")), F.conv2d(x.double(), w.double()), rtol=1e-4, atol=1e-2)
    x, w, g = torch.randn(1, 1, 3, 3), torch.randn(60_000, 1, 3, 3), torch.randn(1, 60_000, 1, 1)
    xw = x.to("wgpu").requires_grad_()
    F.conv2d(xw, w.to("wgpu")).backward(g.to("wgpu"))
    xr = x.double().requires_grad_()
    F.conv2d(xr, w.double()).backward(g.double())
    _close(xw.grad, xr.grad, rtol=1e-4, atol=1e-2)


def test_chebyshev_recurrences_near_one_run_to_their_order():
    # |x| just above 1 recurs until overflow: ~185,000 steps of T at 1 + 2^-23, cut at 65,535 before (a value
    # 1e7 too small). float32 recurrences this long are only good to a factor, so: the order of magnitude
    x = torch.tensor([1.0000001, -1.0000001, 1.0000002, 1.5, NAN])
    n = torch.tensor([100_000.0, 99_999.0, 70_000.0, 70_000.0, 100_000.0])
    for op in (torch.special.chebyshev_polynomial_t, torch.special.chebyshev_polynomial_u):
        got = op(x.to("wgpu"), n.to("wgpu")).cpu()
        want = op(x.double(), n.double()).float()
        assert torch.equal(got.isnan(), want.isnan()) and torch.equal(got.sign(), want.sign())
        finite = want.isfinite()
        ratio = (got[finite].double() / want[finite].double()).abs().log10()
        assert (ratio.abs() < 1).all(), (got, want)
    # shorter recurrences (the same steps, now eight a loop pass) match the CPU's float32 ones, overflow
    # to NaN included
    x = torch.cat([torch.rand(60) * 0.01 + 1.0, torch.tensor([1.5, -1.5, 1.0001, -3.0])])
    n = torch.cat([torch.randint(0, 300, (60,)).float(), torch.tensor([400.0, 401.0, 3.0, 1000.0])])
    for op in (torch.special.chebyshev_polynomial_t, torch.special.chebyshev_polynomial_w):
        _close(op(x.to("wgpu"), n.to("wgpu")), op(x, n), rtol=1e-4, atol=1e-5)


def test_svd_of_62_by_62_matrices_matches_the_cpu():
    # Jacobi sweeps of ~2,260 passes each, and rounding noise keeps some matrices rotating until the 30th:
    # their loops were cut (U, S and V garbage). About one Gaussian 62 x 62 matrix in ten does that; the
    # 8th of this seeded batch is one. On llvmpipe the sweeps are now capped at what fits (26, or 17
    # beside the basis completion).
    a = torch.randn(8, 62, 62, generator=torch.Generator().manual_seed(0))
    # values only (svdvals itself asks for the vectors)
    s = torch.ops.aten._linalg_svd(a.to("wgpu"), False, False)[1].cpu()
    _close(s, torch.linalg.svdvals(a.double()), rtol=1e-4, atol=1e-4)
    u, s, vh = (t.cpu() for t in torch.linalg.svd(a.to("wgpu")))
    _close(u @ torch.diag_embed(s) @ vh, a.double(), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(u.mT @ u, torch.eye(62).expand(8, 62, 62), atol=1e-5, rtol=0)
