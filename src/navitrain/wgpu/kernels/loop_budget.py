"""llvmpipe's loop limit, and splitting a kernel's sequential steps over dispatches to stay under it.

llvmpipe (lavapipe, Mesa's CPU Vulkan driver, our CI adapter) runs each group of 8 consecutive
invocations of a workgroup as one SIMD program (16 with 512-bit vectors) and gives that program ONE loop
counter, LP_MAX_TGSI_LOOP_ITERATIONS = 65535, shared by every loop of the kernel: nested, sequential,
inside called functions. Every pass through a loop body counts, including the last pass that only tests
the exit condition (a loop that runs t times costs t + 1), and a pass counts while any of the 8 lanes is
still in the loop. When the counter reaches zero the running loop exits as if its condition had failed,
and every later loop runs one pass and exits: no error, the kernel carries on with wrong data. The
counter starts again for every workgroup and every dispatch. Loops the compiler unrolls completely
(small constant trip counts, e.g. 4) cost nothing; one with 64 constant trips is not unrolled and counts.
Measured on Mesa 22.3 / LLVM 15; tests/wgpu/test_loop_limit.py probes the rule so that a Mesa that changes
it is noticed.

So nesting a long loop does not help (the inner passes count too): a kernel whose invocations walk many
sequential steps has to bound the loop passes of one dispatch and continue in the next. `spans` cuts the
steps into such ranges from an upper bound of each step's passes; real GPUs have no limit, and small
problems fit one span, so the common case keeps its single dispatch.
"""
from __future__ import annotations

from collections.abc import Callable

from navitrain.wgpu.dtypes import NoKernelForDtype
from navitrain.wgpu.runtime import runtime

LLVMPIPE_LOOP_PASSES = 65535
# What a dispatch may plan for: the estimates are upper bounds, the margin covers small loops they leave out.
PASS_BUDGET = 60000


def strided(count: int, step: int) -> int:
    """Passes of `for (i = lid; i < count; i += step)` for the busiest lane: its trips plus the exit test."""
    return -(-max(count, 0) // step) + 1


def require(passes: int, what: str) -> None:
    """Refuse, on a software adapter, a launch whose busiest thread needs more loop passes than llvmpipe
    allows: NoKernelForDtype makes the dispatcher take the counted CPU fallback instead of a wrong value."""
    if passes > PASS_BUDGET and runtime().info.software:
        raise NoKernelForDtype(f"{what} needs {passes} loop passes in one thread; llvmpipe stops every loop "
                               f"after {LLVMPIPE_LOOP_PASSES} in all, so it runs on the CPU")


def spans(steps: int, cost: Callable[[int], int], budget: int = PASS_BUDGET, fixed: int = 2) -> list[tuple[int, int]]:
    """Cut steps 0..steps-1 into consecutive (begin, end) ranges whose loop passes (`cost(step)` each, plus
    `fixed` per dispatch for the enclosing loop's exit test and setup loops) stay within the budget.
    `cost` must be monotonic in the step (the first and last steps bound the rest: the quick check).

    A step that alone exceeds the budget cannot be computed in one llvmpipe dispatch: on a software adapter
    that raises NoKernelForDtype (the counted CPU fallback); elsewhere there is no limit and it gets a span
    of its own."""
    if steps <= 0:
        return []
    if steps * max(cost(0), cost(steps - 1)) + fixed <= budget:
        return [(0, steps)]
    out: list[tuple[int, int]] = []
    begin, used = 0, fixed
    for k in range(steps):
        c = cost(k)
        require(c + fixed, "one step of this kernel")
        if used + c > budget and k > begin:
            out.append((begin, k))
            begin, used = k, fixed
        used += c
    if steps > begin:
        out.append((begin, steps))
    return out
