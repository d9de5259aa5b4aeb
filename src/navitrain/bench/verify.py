"""The checks a route's run must pass before its speed is reported.

A route that trains fast but wrong (fp16 garbage, a miscompiled kernel, an override that runs another
GPU's code) is worse than a slow one, so the bench refuses to time it and says why instead.
"""
from __future__ import annotations

import math

from navitrain.bench.units import plain

# First-step losses from the same seed and weights agree to ~1e-6 between correct fp32 implementations;
# 1% leaves room for TF32 convolutions (cuDNN's default on Ampere and later) and still catches any
# broken kernel, whose loss is off by far more.
LOSS_RTOL = 1e-2
LOSS_ATOL = 1e-3


def loss_decreased(losses: list[float]) -> bool:
    """The mean loss over the last third of the run is below the first step's loss."""
    if len(losses) < 2:
        return False
    tail = losses[-max(1, len(losses) // 3):]
    return sum(tail) / len(tail) < losses[0]


def problem(losses: list[float], check_loss: float | None, cpu_check_loss: float | None) -> str | None:
    """Why this run must not be timed, or None when it is sound."""
    bad = [i + 1 for i, value in enumerate(losses) if not math.isfinite(value)]
    if bad:
        return f"loss is not finite from step {bad[0]} (got {losses[bad[0] - 1]})"
    if not loss_decreased(losses):
        tail = losses[-max(1, len(losses) // 3):]
        return (f"loss did not decrease: first step {plain(losses[0], 4)}, mean of the last {len(tail)} "
                f"steps {plain(sum(tail) / len(tail), 4)}")
    if check_loss is not None and cpu_check_loss is not None:
        if not math.isclose(check_loss, cpu_check_loss, rel_tol=LOSS_RTOL, abs_tol=LOSS_ATOL):
            return (f"first-step loss {plain(check_loss, 6)} disagrees with the CPU's {plain(cpu_check_loss, 6)} "
                    f"from the same seed (tolerance {LOSS_RTOL:g} relative)")
    return None


def failure_mode(text: str) -> str | None:
    """The `explain` failure-mode id for a child's error text or stderr, when the classifier knows it."""
    if not text:
        return None
    try:
        from navitrain.doctor import logs
    except Exception:  # the doctor is optional here: without it the raw text is still shown
        return None
    try:
        modes = logs.classify(text)  # most important first; [unknown] when nothing matches
    except Exception:
        return None
    mode = getattr(modes[0], "id", None) if modes else None
    return None if mode in (None, "unknown") else str(mode)
