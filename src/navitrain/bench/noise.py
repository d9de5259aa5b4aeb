"""When a bench's step times are too spread out for its ratios to mean anything, and what else was running.

The same CPU step once measured 216 ms, 1.62 s and 4.26 s in three runs on a busy machine, and nothing
said so. A row is *noisy* when the middle half of its timed steps spans more than NOISY_SPREAD of their
median: a speed-up computed from such a row can be off by about as much, so "1.3x" and "0.8x" cannot
be told apart. The usual cause is other work on the machine competing for the CPU (which also drives
the GPU): `OtherLoad` measures how busy the rest of the machine was during the bench, so the report
can say whether that was the cause instead of guessing.
"""
from __future__ import annotations

import os
import resource
from typing import Any

# IQR / median above which a row's ratios are not reliable. At 0.3 a ratio may be off by roughly
# +-30%: enough to turn "a bit faster" into "a bit slower".
NOISY_SPREAD = 0.3
# Share of the machine's CPU time other processes used above which they are named as the likely cause.
BUSY_SHARE = 0.1
# ... and above which every time of the bench competed with them, steady or not: a step can be slowed
# evenly (its spread small) and its ratio still be wrong, so no speed-up of such a bench is reliable.
LOADED_SHARE = 0.25


def relative_spread(iqr_ms: float | None, median_ms: float | None) -> float | None:
    if iqr_ms is None or not median_ms or median_ms <= 0:
        return None
    return iqr_ms / median_ms


def is_noisy(spread: float | None) -> bool:
    return spread is not None and spread > NOISY_SPREAD


def _machine_cpu_seconds() -> tuple[float, float] | None:
    """(busy, total) CPU-seconds of the whole machine since boot, from /proc/stat (Linux); None elsewhere."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:9]]
        tick = os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None
    user, nice, system, idle, iowait, irq, softirq, steal = fields
    busy = user + nice + system + irq + softirq + steal
    return busy / tick, (busy + idle + iowait) / tick


def _own_cpu_seconds() -> float:
    """CPU time of this process and of its children that have ended (the bench's route processes)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


class OtherLoad:
    """How much of the machine's CPU other processes used between start() and stop(): the bench's own
    processes are subtracted, so what is left is load that competed with the timed steps."""

    def __init__(self):
        self._machine = None
        self._own = 0.0

    def start(self) -> "OtherLoad":
        self._machine = _machine_cpu_seconds()
        self._own = _own_cpu_seconds()
        return self

    def stop(self) -> dict[str, Any] | None:
        """{"share": other processes' share of all CPU time (0..1), "cpu_s", "available_cpu_s"}, or None
        where the OS does not say (not Linux)."""
        end = _machine_cpu_seconds()
        if self._machine is None or end is None:
            return None
        busy = end[0] - self._machine[0]
        total = end[1] - self._machine[1]
        if total <= 0:
            return None
        other = max(0.0, busy - (_own_cpu_seconds() - self._own))
        return {"share": min(1.0, other / total), "cpu_s": other, "available_cpu_s": total}


def machine_busy(other_load: dict[str, Any] | None) -> bool:
    return bool(other_load) and other_load["share"] >= LOADED_SHARE


def cause_sentence(other_load: dict[str, Any] | None) -> str:
    """What the measured load says about the cause of noisy rows; only what was measured."""
    if not other_load:
        return "other load on the machine is the usual cause (it was not measured here)"
    share = other_load["share"]
    if share >= BUSY_SHARE:
        return (f"other processes kept {share:.0%} of this machine's CPU time busy during the bench, "
                "competing with the timed steps: rerun on an idle machine")
    return (f"other processes used only {share:.0%} of this machine's CPU time during the bench, so the "
            "cause is not other load: more steps (--steps) give a steadier median")
