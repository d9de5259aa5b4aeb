"""compare(): per-dtype tolerances relative to the output's scale, exact integers, NaN placement,
shapes, output names, and the fp16-corruption hint."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from navitrain.probe.compare import TOLERANCES, compare, flatten, tolerance_class


def test_float32_result_of_a_float64_computation_passes():
    a, b = torch.randn(64, 48, dtype=torch.float64), torch.randn(48, 32, dtype=torch.float64)
    ref = a @ b
    dev = a.float() @ b.float()
    result = compare(dev, ref, "float32")
    assert result.ok, result.detail
    assert 0 < result.max_abs < 1e-4


def test_an_error_beyond_the_tolerance_is_a_mismatch_naming_the_output():
    ref = {"output": torch.randn(100, dtype=torch.float64), "grad weight": torch.randn(7, 3, dtype=torch.float64)}
    dev = {"output": ref["output"].float(), "grad weight": ref["grad weight"].float().clone()}
    dev["grad weight"][2, 1] += 0.5
    result = compare(dev, ref, "float32")
    assert not result.ok
    assert result.detail.startswith("grad weight: max abs err 0.5")
    assert result.max_abs == pytest.approx(0.5, rel=1e-5)
    assert "1 of 21 values" in result.detail


def test_tolerance_scales_with_the_output_magnitude():
    ref = torch.randn(200, dtype=torch.float64) * 1e-6  # tiny gradients: absolute 1e-9 errors matter
    assert compare((ref * (1 + 1e-5)).float(), ref, "float32").ok
    noisy = ref + 1e-7 * torch.randn(200, dtype=torch.float64)
    assert not compare(noisy.float(), ref, "float32").ok


@settings(max_examples=25, deadline=None)
@given(scale=st.floats(1e-6, 1e6), seed=st.integers(0, 2**16))
def test_scaling_inputs_does_not_change_the_verdict(scale, seed):
    g = torch.Generator().manual_seed(seed)
    ref = torch.randn(50, generator=g, dtype=torch.float64)
    dev = ref + 3e-3 * torch.randn(50, generator=g, dtype=torch.float64)  # ~1e-3 relative noise
    assert compare(dev * scale, ref * scale, "float16").ok == compare(dev, ref, "float16").ok
    assert not compare(dev * scale, ref * scale, "float32").ok


def test_low_precision_outputs_get_their_tolerances_and_fp32_outputs_of_such_a_case_too():
    ref = torch.randn(128, 64, dtype=torch.float64)
    assert compare(ref.half(), ref).ok  # judged as float16 by its own dtype
    low = ref.bfloat16()
    assert compare(low, ref).ok
    assert not compare(low.float(), ref).ok  # a float32 tensor with bf16 error, judged as float32
    assert compare(low.float(), ref, "bfloat16").ok  # ... unless the case says it is a bf16 case
    assert tolerance_class("float32", "bfloat16") == "bfloat16"
    assert tolerance_class("float16", "float32") == "float16"
    assert TOLERANCES["bfloat16"][0] > TOLERANCES["float16"][0] > TOLERANCES["float32"][0]


def test_integers_and_booleans_must_match_exactly():
    idx = torch.randint(0, 10, (30,))
    assert compare(idx, idx.clone()).ok
    wrong = idx.clone()
    wrong[4] += 1
    result = compare(wrong, idx)
    assert not result.ok and "1 of 30 values differ" in result.detail
    mask = torch.rand(20) > 0.5
    assert not compare(~mask, mask).ok
    assert not compare(idx.float(), idx).ok  # a float where an integer was expected


def test_nan_must_be_where_the_reference_has_it():
    ref = torch.randn(10, dtype=torch.float64)
    ref[3] = float("nan")
    dev = ref.float().clone()
    assert compare(dev, ref, "float32").ok
    dev[5] = float("nan")
    result = compare(dev, ref, "float32")
    assert not result.ok and "NaN in 1 of 10" in result.detail
    assert result.mode is None  # fp32 NaN is not the fp16-corruption mode


def test_nan_or_constant_fp16_output_points_to_fp16_corruption():
    ref = torch.randn(32, 32, dtype=torch.float64)
    nan = torch.full((32, 32), float("nan"), dtype=torch.float16)
    assert compare(nan, ref, "float16").mode == "fp16-corruption"
    constant = torch.full((32, 32), 0.5, dtype=torch.float16)
    result = compare(constant, ref, "float16")
    assert not result.ok and result.mode == "fp16-corruption" and "constant" in result.detail


def test_shape_and_output_structure_mismatches():
    ref = torch.randn(4, 5, dtype=torch.float64)
    result = compare(ref.float().t(), ref, "float32")
    assert not result.ok and "shape (5, 4), expected (4, 5)" in result.detail
    result = compare((ref.float(),), (ref, ref))
    assert not result.ok and "returned outputs" in result.detail


def test_flatten_names_outputs():
    t = torch.zeros(1)
    assert [label for label, _ in flatten(t)] == ["output"]
    assert [label for label, _ in flatten((t, t))] == ["output 0", "output 1"]
    assert [label for label, _ in flatten({"a": t, "b": {"c": t}, "d": [t]})] == ["a", "b/c", "d[0]"]
