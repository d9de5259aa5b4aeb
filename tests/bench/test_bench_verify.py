"""The checks that stand between a route's run and its reported speed."""
import math

from navitrain.bench import verify


def test_a_sound_run_passes():
    assert verify.problem([2.3, 2.1, 1.9, 1.6, 1.5, 1.2], 2.3, 2.3 * (1 + 1e-5)) is None


def test_a_loss_that_does_not_fall_is_refused():
    why = verify.problem([2.3, 2.4, 2.2, 2.5, 2.6, 2.4], 2.3, 2.3)
    assert why and "did not decrease" in why


def test_a_non_finite_loss_is_refused_naming_the_step():
    why = verify.problem([2.3, 1.9, math.nan, 1.0], 2.3, 2.3)
    assert why and "step 3" in why


def test_disagreement_with_the_cpu_is_refused_but_tf32_noise_is_not():
    assert verify.problem([2.3, 1.0], 2.3 * 1.004, 2.3) is None  # TF32-sized difference
    why = verify.problem([3.45, 1.0], 3.45, 2.3)
    assert why and "disagrees with the CPU" in why


def test_loss_decreased_uses_the_tail_mean():
    assert verify.loss_decreased([2.0, 2.5, 1.9, 1.5])       # tail [1.5]
    assert not verify.loss_decreased([2.0, 1.0, 2.1, 2.2])   # a dip in the middle is not enough
    assert not verify.loss_decreased([2.0])


def test_failure_modes_come_from_the_explain_classifier():
    assert verify.failure_mode("RuntimeError: HIP error: invalid device function") == "no-code-object"
    assert verify.failure_mode("ValueError: something ordinary") is None
