"""benchmarks/_coverage_child.py's run_item applies the float64 rule end to end: a float16 op whose CPU result
drifts (a running sum rounded at every step) passes on wgpu by the rule, and the same op with one planted wrong
value on wgpu stays a mismatch whose detail gives both errors against float64."""
import importlib
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch


@pytest.fixture(scope="module")
def child():
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    before = os.environ.get("NAVITRAIN_WGPU_STRICT")
    try:
        return importlib.import_module("_coverage_child")
    finally:  # (the module turns strict mode off only in its main(), the child process; kept as a guard)
        if before is None:
            os.environ.pop("NAVITRAIN_WGPU_STRICT", None)
        else:
            os.environ["NAVITRAIN_WGPU_STRICT"] = before


class RunningSum:
    """cumsum as the CPU's half kernels tend to compute: every partial sum rounded to the dtype."""

    name, variant_test_name = "running_sum", ""

    def __init__(self, planted: bool):
        self.planted = planted

    def sample_inputs(self, device, dtype, requires_grad=False, set_seed=False):
        gen = torch.Generator().manual_seed(17)
        yield SimpleNamespace(input=(10 * torch.rand(256, generator=gen) + 1).to(dtype), args=(), kwargs={})

    def __call__(self, x):
        if x.device.type == "cpu":
            if x.dtype == torch.float64:
                return x.cumsum(0)
            out, total = torch.empty_like(x), torch.zeros((), dtype=x.dtype)
            for i, v in enumerate(x):
                total = total + v
                out[i] = total
            return out
        out = x.float().cumsum(0).to(x.dtype)
        if self.planted:
            bump = torch.zeros(x.shape, dtype=x.dtype)
            bump[100] = 0.05 * out[100].item()
            out = out + bump.to(x.device)
        return out


def test_closer_to_float64_passes_and_says_so(child):
    result = child.run_item(RunningSum(planted=False), "running_sum", torch.float16, "forward", 1)
    assert result["status"] == "pass", result
    rule = result["float64_rule"]
    assert rule["wgpu_err"] < rule["cpu_err"] and "closer to float64 than the CPU" in result["detail"]


def test_a_planted_wrong_value_is_a_mismatch(child):
    result = child.run_item(RunningSum(planted=True), "running_sum", torch.float16, "forward", 1)
    assert result["status"] == "mismatch", result
    assert result["detail"].startswith("sample 0 output 0: vs float64 wgpu err"), result["detail"]
