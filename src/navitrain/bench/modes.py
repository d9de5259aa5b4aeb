"""How a route's training step is run: the modes a user can train in on each device, each timed as its
own row ("wgpu (eager)", "wgpu (graph)"), because on a fast GPU the mode decides whether Python or the
GPU sets the pace (issue 18: CIFAR ResNet-18 on an H200 was 16x the CPU eager and 39x captured).

A mode is a function (train_step, workload) -> step callable; `for_device` lists the modes a device has.
To add torch.compile once navitrain.wgpu.compile exists: write `_compiled(step, workload)` and add
"compile" to _MODES and to the wgpu entry of _DEVICE_MODES; the runner, report and store need no change.
"""
from __future__ import annotations

from typing import Any, Callable

Step = Callable[[Any, Any], Any]  # (x, y) -> loss tensor

EAGER = "eager"
GRAPH = "graph"


def _eager(step: Step, workload) -> Step:
    return step


def _graphed(step: Step, workload) -> Step:
    """navitrain.wgpu.graphed, as users write it: eager warm-up calls, then one capture, then replays.
    The runner's warm-up steps cover the eager calls and the capture, so timed steps are replays."""
    import navitrain.wgpu as nw

    return nw.graphed(step, warmup=GRAPH_EAGER_CALLS)


# Eager calls before graphed() captures: kernels compile and tiles are tuned on them. The runner adds
# them (and the capture call) to the warm-up of graph rows.
GRAPH_EAGER_CALLS = 2
# Replays after the capture that are not timed either: on the H200 the first few replays ran at 2-3x
# the steady step time while the GPU came up to speed (benchmarks/bench_wgpu_train.py, REPLAY_WARMUP).
GRAPH_SETTLE_REPLAYS = 3

_MODES: dict[str, Callable[[Step, Any], Step]] = {EAGER: _eager, GRAPH: _graphed}
# CUDA graphs exist too, but navitrain's users capture wgpu steps; native CUDA is timed as people
# usually run it. The CPU has nothing to capture.
_DEVICE_MODES = {"wgpu": (EAGER, GRAPH)}


def for_device(device_type: str) -> tuple[str, ...]:
    return _DEVICE_MODES.get(device_type, (EAGER,))


def extra_warmup(mode: str, warmup: int, settle: bool = True) -> int:
    """Untimed steps a mode needs beyond the run's `warmup` before its steps are steady: a graph's eager
    calls and capture (the run's warm-up steps count towards them), then, with `settle`, a few replays
    (a real GPU coming up to speed; the tiny CI sizes on a software adapter skip them)."""
    if mode != GRAPH:
        return 0
    return max(0, GRAPH_EAGER_CALLS + 1 - warmup) + (GRAPH_SETTLE_REPLAYS if settle else 0)


def needs_capturable_optimizer(mode: str) -> bool:
    return mode == GRAPH


def wrap(mode: str, step: Step, workload) -> Step:
    try:
        return _MODES[mode](step, workload)
    except KeyError:
        raise ValueError(f"unknown mode {mode!r}; modes: {', '.join(_MODES)}") from None


def label(route: str, mode: str, modes_of_route: int) -> str:
    """'wgpu (graph)' for a route timed in several modes, plain 'cpu' otherwise."""
    return f"{route} ({mode})" if modes_of_route > 1 else route
