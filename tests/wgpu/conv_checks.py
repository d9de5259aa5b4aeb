"""Comparing a convolution's results on wgpu with a float64 CPU reference, and steering the tuner
(tests/wgpu/test_conv_*.py)."""
from navitrain.wgpu.kernels import gemm_tuning


def assert_close_to_reference(results, refs, tol):
    """results / refs: (output, grad_input, grad_weight[, grad_bias]); a reference of None (no bias) is
    skipped. The error is relative to the reference's largest magnitude, so layers of any scale compare
    alike."""
    for got, want, what in zip(results, refs, ("output", "grad_input", "grad_weight", "grad_bias")):
        if want is None:
            continue
        err = (got.double() - want).abs().max().item() / (want.abs().max().item() + 1e-12)
        assert err < tol, f"{what}: relative error {err:.2e}"


def force_tuner_choice(monkeypatch, choice):
    """Make the tuner answer `choice` to every question (without timing anything); returns the list that
    records each question as (key, sorted options, default)."""
    seen = []

    def pick(key, options, default):
        seen.append((key, sorted(options), default))
        return choice
    monkeypatch.setattr(gemm_tuning, "pick_choice", pick)
    monkeypatch.setattr(gemm_tuning, "_picked", {})   # answers remembered earlier would not ask it
    return seen
