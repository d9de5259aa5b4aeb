"""Comparing a convolution's results on wgpu with a float64 CPU reference (tests/wgpu/test_conv_*.py)."""


def assert_close_to_reference(results, refs, tol):
    """results / refs: (output, grad_input, grad_weight[, grad_bias]); a reference of None (no bias) is
    skipped. The error is relative to the reference's largest magnitude, so layers of any scale compare
    alike."""
    for got, want, what in zip(results, refs, ("output", "grad_input", "grad_weight", "grad_bias")):
        if want is None:
            continue
        err = (got.double() - want).abs().max().item() / (want.abs().max().item() + 1e-12)
        assert err < tol, f"{what}: relative error {err:.2e}"
