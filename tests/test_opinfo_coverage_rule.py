"""benchmarks/opinfo_coverage.py's float64 rule for float16/bfloat16 (benchmarks/_coverage_precision.py): a result
that differs from the CPU's passes only within the dtype's tolerance of float64 and no further from it than the
CPU's -- planted wrong values stay mismatches -- and the Markdown lists such passes apart."""
import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import _coverage_precision as precision  # noqa: E402
from _coverage_report import headline, write_markdown  # noqa: E402

TOL = {torch.float16: (1e-3, 1e-3), torch.bfloat16: (1.6e-2, 1e-2)}
DTYPES = pytest.mark.parametrize("dtype", list(TOL), ids=str)


def _exact(n=64, seed=0):
    """Random float64 results, away from 0 and from the dtypes' ends."""
    gen = torch.Generator().manual_seed(seed)
    return 10 * torch.randn(n, generator=gen, dtype=torch.float64)


def _one_ulp_up(v: torch.Tensor) -> torch.Tensor:
    _, exponent = torch.frexp(v.double())
    return (v.double() + torch.ldexp(torch.tensor(torch.finfo(v.dtype).eps, dtype=torch.float64), exponent - 1)).to(
        v.dtype)


def _judge(got, cpu, exact, dtype):
    return precision.judge(got, cpu, exact, dtype, *TOL[dtype])


@DTYPES
def test_a_result_closer_to_float64_than_the_cpu_passes(dtype):
    exact = _exact()
    cpu = exact.to(dtype).clone()
    cpu[3] = math.inf                       # soft_margin_loss's half exp overflowed on the CPU
    cpu[7] += 4 * cpu[7].abs() * torch.finfo(dtype).eps
    ok, wgpu_err, cpu_err = _judge(exact.to(dtype), cpu, exact, dtype)
    assert ok and wgpu_err == 0 and cpu_err == math.inf


@DTYPES
def test_a_planted_wrong_value_stays_a_mismatch_even_when_the_cpu_is_worse(dtype):
    exact = _exact(seed=1)
    cpu = exact.to(dtype).clone()
    cpu[0] = math.inf
    got = exact.to(dtype).clone()
    got[5] += 1 + got[5].abs() / 10        # far beyond the tolerance of float64
    ok, wgpu_err, cpu_err = _judge(got, cpu, exact, dtype)
    assert not ok and wgpu_err >= 1 and cpu_err == math.inf


@DTYPES
def test_within_tolerance_but_further_than_the_cpu_fails(dtype):
    exact = _exact(seed=2)
    cpu = exact.to(dtype)                   # the CPU is exact here
    got = cpu.clone()
    got[2] = _one_ulp_up(got[2])
    torch.testing.assert_close(got, cpu, rtol=TOL[dtype][0], atol=TOL[dtype][1])  # within the tolerance
    ok, wgpu_err, cpu_err = _judge(got, cpu, exact, dtype)
    assert not ok and wgpu_err > 0 and cpu_err == 0


@DTYPES
def test_nan_must_sit_where_float64_has_nan(dtype):
    exact = _exact(seed=3)
    exact[4] = math.nan
    cpu = exact.to(dtype).clone()
    cpu[9] = -cpu[9]                        # the CPU is wrong elsewhere
    assert _judge(exact.to(dtype), cpu, exact, dtype)[0]
    got = exact.to(dtype).clone()
    got[6] = math.nan
    ok, wgpu_err, _ = _judge(got, cpu, exact, dtype)
    assert not ok and wgpu_err == math.inf


def test_only_half_dtypes_and_matching_shapes_are_judged():
    exact = _exact()
    assert not precision.judge(exact.float(), exact.float(), exact, torch.float32, 1e-4, 1e-4)[0]
    half = exact.half()
    assert not precision.judge(half[:-1], half[:-1], exact, torch.float16, *TOL[torch.float16])[0]


def test_upcast_is_exact_and_keeps_leaves_shared():
    x = torch.randn(3, dtype=torch.float16, requires_grad=True)
    index = torch.tensor([0, 2])
    other = torch.randn(2, dtype=torch.float32)
    up_x, (up_again, up_index, up_other), kwargs = precision.upcast((x, (x, index, other), {"dtype": torch.float16}),
                                                                     torch.float16)
    assert up_x.dtype == torch.float64 and up_x.is_leaf and up_x.requires_grad
    assert up_again is up_x and torch.equal(up_x.half(), x.detach())
    assert up_index is index and up_other is other and kwargs == {"dtype": torch.float64}


def test_markdown_lists_float64_passes_apart(tmp_path):
    results = [
        {"op": "addbmm", "dtype": "bfloat16", "mode": "forward", "status": "pass", "samples": 3, "fallbacks": {},
         "detail": "closer to float64 than the CPU: wgpu err 0, CPU err 2",
         "float64_rule": {"wgpu_err": 0.0, "cpu_err": 2.0}},
        {"op": "add", "dtype": "bfloat16", "mode": "forward", "status": "pass", "samples": 3, "fallbacks": {},
         "detail": ""},
        {"op": "cross", "dtype": "bfloat16", "mode": "forward", "status": "mismatch",
         "detail": "sample 0 output 0: vs float64 wgpu err 0.5, CPU err 0; vs CPU [...]"},
        {"op": "soft_margin_loss", "dtype": "float16", "mode": "forward", "status": "pass", "samples": 3,
         "fallbacks": {}, "detail": "closer to float64 than the CPU: wgpu err 0, CPU err inf",
         "float64_rule": {"wgpu_err": 0.0, "cpu_err": "inf"}},
    ]
    summary = headline(results)
    assert summary["forward bfloat16"]["pass"] == 2 and summary["forward bfloat16"]["float64_rule"] == 1
    report = {"date": "today", "adapter": {}, "samples": 3, "summary": summary, "results": results}
    path = tmp_path / "coverage.md"
    write_markdown(path, report)
    text = path.read_text()
    rule_table = text.split("## Passed by the float64 rule")[1].split("## Per op")[0]
    assert "| addbmm | forward bfloat16 | pass | 0 | 2 |" in rule_table and "| add |" not in rule_table
    assert "| cross | forward bfloat16 | mismatch | sample 0 output 0: vs float64 wgpu err 0.5" in text
    assert "| soft_margin_loss | forward float16 | pass | 0 | inf |" in rule_table
    assert "| addbmm | pass (float64 rule) |" in text
    assert "| forward bfloat16 | 2 | 0 | 1 | 0 | 0 | 3 | 66.7% | 1 |" in text


def test_eigenvectors_are_compared_up_to_column_signs_only():
    """linalg.eigh's eigenvectors: a column times -1 is the same eigenvector; any other change is not."""
    import _coverage_child as child

    gen = torch.Generator().manual_seed(7)
    ref = torch.linalg.qr(torch.randn(2, 5, 5, generator=gen))[0]
    flipped = ref * torch.tensor([1.0, -1.0, 1.0, -1.0, -1.0])
    assert child._equal_up_to_column_signs(flipped, ref, torch.float32)
    wrong = flipped.clone()
    wrong[1, 3, 2] += 1e-2
    assert not child._equal_up_to_column_signs(wrong, ref, torch.float32)
    assert not child._equal_up_to_column_signs(ref[..., :4], ref, torch.float32)
