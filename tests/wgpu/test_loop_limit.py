"""llvmpipe's loop limit (issue 17): one counter of 65535 loop passes per group of 8 lanes, shared by every
loop of a kernel, after which loops silently exit (kernels/loop_budget.py has the whole rule).

The probe pins the rule down on llvmpipe, so a Mesa that lifts or changes it fails here and the budget in
kernels/loop_budget.py can be revisited; on other adapters it checks that long loops simply run. The other
tests run each engine that splits its work because of the limit at a size past it, against the CPU."""
from __future__ import annotations

import pytest
import torch

from navitrain.wgpu.kernels import codegen, loop_budget
from navitrain.wgpu.runtime import runtime

_PROBE = codegen.ParamBlock("n", "m", "out_off", "lane")
# Each body counts the iterations it ran into c; every thread writes its own count.
_BODIES = {
    "one": "for (var i = 0u; i < n; i++) { c += 1u; }",
    "two": "for (var i = 0u; i < n; i++) { c += 1u; } for (var j = 0u; j < m; j++) { c += 1u; }",
    "nested": "for (var i = 0u; i < n; i++) { for (var j = 0u; j < m; j++) { c += 1u; } }",
    # lane 0 spends the counter in a long loop; lane `lane` alone runs a second long loop
    "lanes": "var na = 10u; if (lid == 0u) { na = n; } for (var i = 0u; i < na; i++) { c += 1u; } "
             "if (lid == lane) { for (var j = 0u; j < m; j++) { c += 1u; } }",
}


def _counts(body: str, n: int, m: int = 0, lane: int = 0) -> torch.Tensor:
    rt = runtime()
    source = codegen.module(["u32"], _PROBE.wgsl() + f"  var c = 0u;\n  {_BODIES[body]}\n  b0[out_off + gi] = c;", 64)
    kernel = rt.kernel(("test_loop_limit", body), "test_loop_limit", 1, lambda: source)
    out = torch.full((64,), -1, dtype=torch.int32).to("wgpu")
    rt.dispatch(kernel, (out._ws.heap,), _PROBE.pack(n=n, m=m, out_off=out.elem_offset, lane=lane), (1, 1, 1))
    return out.cpu()


def test_the_loop_limit_is_the_one_the_engines_plan_for():
    limit = loop_budget.LLVMPIPE_LOOP_PASSES
    is_llvmpipe = "llvmpipe" in runtime().info.name.lower()
    if not is_llvmpipe:  # real GPUs: no limit at all
        assert (_counts("one", 200_000) == 200_000).all()
        assert (_counts("nested", 1000, 100) == 100_000).all()
        return
    # If one of these fails, Mesa changed the rule: re-measure and update kernels/loop_budget.py
    # (and the section in docs/wgpu-internals.md) before touching the numbers here.
    assert (_counts("one", limit) == limit).all()
    assert (_counts("one", limit + 1) == limit).all(), "a single loop is no longer cut after 65535 passes"
    # Sequential loops share the counter: the first costs its trips plus its exit test, the second gets
    # what is left (its exit test never comes), and at least one pass.
    assert (_counts("two", 40_000, 40_000) == 40_000 + limit - 40_001).all()
    assert (_counts("two", limit, 40_000) == limit + 1).all()
    # Nesting does not help: each inner run costs its trips + 1, each outer pass 1 more.
    assert (_counts("nested", 30_000, 3) == (limit // 5) * 3).all()
    # The counter belongs to groups of 8 consecutive lanes (256-bit vectors; 16 with 512-bit ones).
    width = 16 if "512 bits" in runtime().info.name else 8
    assert int(_counts("lanes", 60_000, 60_000, lane=width - 1)[width - 1]) == 10 + limit - 60_001
    assert int(_counts("lanes", 60_000, 60_000, lane=width)[width]) == 60_010


def test_spans_stay_within_the_budget():
    cost = lambda k: 1000 - k  # noqa: E731
    ranges = loop_budget.spans(1000, cost, budget=5000, fixed=3)
    assert ranges[0][0] == 0 and ranges[-1][1] == 1000
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    assert all(3 + sum(cost(k) for k in range(b, e)) <= 5000 for b, e in ranges)
    assert loop_budget.spans(10, cost, budget=10**6) == [(0, 10)]


N = 420  # LU of 420 x 420 needed ~96,000 passes in one thread, and gave errors of 40 before the ranges


def test_lu_past_the_limit_matches_the_cpu():
    a = torch.randn(N, N)
    a[:, 350] = 0.0  # a zero pivot in a later column range: info carried across dispatches
    a[:, 380] = 0.0
    lu, piv, info = torch.linalg.lu_factor_ex(a.to("wgpu"))
    lu_cpu, piv_cpu, info_cpu = torch.linalg.lu_factor_ex(a)
    assert int(info.cpu()) == int(info_cpu) == 351
    assert torch.equal(piv.cpu(), piv_cpu)
    torch.testing.assert_close(lu.cpu(), lu_cpu, atol=2e-3, rtol=1e-3)


def test_cholesky_past_the_limit_matches_the_cpu():
    x = torch.randn(N, N)
    spd = x @ x.T / N + torch.eye(N)
    got = torch.linalg.cholesky(spd.to("wgpu")).cpu()
    torch.testing.assert_close(got, torch.linalg.cholesky(spd.double()).float(), atol=1e-4, rtol=1e-4)
    bad = spd.clone()
    bad[400, 400] = -1.0  # a failure in the last range: earlier ranges factor, info names it
    assert int(torch.linalg.cholesky_ex(bad.to("wgpu")).info.cpu()) == int(torch.linalg.cholesky_ex(bad).info)
    bad[5, 5] = float("nan")  # a failure in the first range stops every later one
    factor, info = torch.linalg.cholesky_ex(bad.to("wgpu"))
    assert int(info.cpu()) == 6
    assert (torch.triu(factor.cpu(), 1) == 0).all()


@pytest.mark.parametrize("upper", [False, True])
def test_triangular_solve_past_the_limit_matches_the_cpu(upper):
    t = torch.randn(N, N) / N + 2 * torch.eye(N)
    t = t.triu() if upper else t.tril()
    b = torch.randn(N, 3)
    b[7, 1] = float("inf")
    got = torch.linalg.solve_triangular(t.to("wgpu"), b.to("wgpu"), upper=upper).cpu()
    want = torch.linalg.solve_triangular(t.double(), b.double(), upper=upper).float()
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4, equal_nan=True)


def test_segment_runs_past_the_limit_match_the_cpu():
    n = 150_000  # one key repeated 150,000 times: three windows
    index = torch.randint(0, 3, (n,))
    index[: 100_000] = 1
    src = torch.randn(n)
    got = torch.zeros(3).to("wgpu").index_add(0, index.to("wgpu"), src.to("wgpu")).cpu()
    assert torch.equal(got, torch.zeros(3).index_add(0, index, src))  # same order, same bits
    src[123_456 % 100_000] = float("nan")
    for reduce in ("mean", "amax"):
        base = torch.randn(3)
        got = base.to("wgpu").scatter_reduce(0, index.to("wgpu"), src.to("wgpu"), reduce, include_self=False)
        want = base.scatter_reduce(0, index, src, reduce, include_self=False)
        torch.testing.assert_close(got.cpu(), want, rtol=1e-5, atol=1e-6, equal_nan=True)


def test_softmax_along_a_long_strided_dim_matches_the_cpu():
    x = torch.randn(30_000, 3) * 4  # dim 0 with inner 3: 3 loops over 30,000 elements in one thread before
    x[17, 0], x[29_999, 1], x[5, 2] = float("inf"), -float("inf"), float("nan")
    # float64 references: 30,000-term float32 sums differ in the last bits with the summation order
    torch.testing.assert_close(torch.softmax(x.to("wgpu"), 0).cpu(), torch.softmax(x.double(), 0).float(),
                               rtol=1e-4, atol=1e-7, equal_nan=True)
    y = torch.randn(30_000, 2)
    torch.testing.assert_close(torch.log_softmax(y.to("wgpu"), 0).cpu(), torch.log_softmax(y.double(), 0).float(),
                               rtol=1e-5, atol=1e-5)


def test_matmul_with_a_long_k_matches_the_cpu():
    k = 2_000_000  # 250,000 steps of BK = 8 in one thread before K was split for the limit
    a, b = torch.rand(2, k), torch.rand(k, 3)
    want = (a.double() @ b.double()).float()
    torch.testing.assert_close((a.to("wgpu") @ b.to("wgpu")).cpu(), want, rtol=1e-4, atol=1e-2)
