"""The end of a grad-weight kernel that keeps one running sum per filter tap in each thread's registers
(kernels/conv_depthwise/grad_weight.py, kernels/conv_grouped/grad_weight.py): the workgroup's sums of each
tap, ROUND taps a round through workgroup memory, each total summed by one thread, in a fixed order (so
a layer's weight gradient is the same from run to run)."""
from __future__ import annotations

from collections.abc import Callable

ROUND = 16   # taps reduced per round in workgroup memory (64 threads x 16 floats = 4 KiB)


def shared(workgroup: int) -> str:
    return f"var<workgroup> red: array<f32, {ROUND * workgroup}>;"


def sum_and_store(names: list[str], workgroup: int, store: Callable[[int], list[str]]) -> list[str]:
    """WGSL lines summing each thread's `names` over the workgroup. In the round starting at sum number
    t0, thread lid < the round's size holds sum t0 + lid's total in `total` and runs store(t0)'s lines."""
    wg = workgroup
    lines = []
    for t0 in range(0, len(names), ROUND):
        chunk = names[t0:t0 + ROUND]
        lines += [f"  red[{k}u * {wg}u + lid] = {s};" for k, s in enumerate(chunk)]
        lines += ["  workgroupBarrier();",
                  f"  if (lid < {len(chunk)}u) {{",
                  "    var total = 0.0;",
                  f"    for (var k = 0u; k < {wg}u; k = k + 1u) {{ total = total + red[lid * {wg}u + k]; }}",
                  *store(t0),
                  "  }",
                  "  workgroupBarrier();"]
    return lines
