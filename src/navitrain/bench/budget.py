"""How many steps a bench times: a fixed count (full runs, tiny CI runs), or as many as fit in a time
budget (quick runs at standard sizes), so a quick bench is quick because it is short, not because its
models are toys. A slow route gets fewer steps, never a smaller model; every route still gets
MIN_TIMED_STEPS, so a median and a spread exist even when one step outlasts the whole budget."""
from __future__ import annotations

MIN_TIMED_STEPS = 3


def keep_timing(timed_s: list[float], max_steps: int, budget_s: float | None) -> bool:
    """Whether to time another step, given the durations (seconds) of the steps timed so far."""
    if len(timed_s) >= max_steps:
        return False
    if budget_s is None or len(timed_s) < min(MIN_TIMED_STEPS, max_steps):
        return True
    return sum(timed_s) < budget_s


def describe(max_steps: int, budget_s: float | None) -> str:
    if budget_s is None:
        return f"{max_steps} timed steps"
    return (f"timed steps for {budget_s:g} s per route and mode (at least {MIN_TIMED_STEPS}, "
            f"at most {max_steps})")
