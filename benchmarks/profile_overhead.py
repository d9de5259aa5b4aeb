"""Where the host time of a small op goes on the wgpu device (cProfile of a chain of small ops)."""
import cProfile
import pstats
import time

import torch

import navitrain.wgpu as nw

x = torch.randn(1024).to("wgpu")


def chain(n):
    y = x
    for _ in range(n):
        y = y * 1.0001
    return y


chain(200)
nw.synchronize()
for label, clock in (("thread cpu", time.thread_time), ("wall", time.perf_counter)):
    t = clock()
    chain(3000)
    print(f"{label}: {(clock() - t) / 3000 * 1e6:.1f} us per op")
    nw.synchronize()
cProfile.run("chain(3000)", "/tmp/overhead.prof")
pstats.Stats("/tmp/overhead.prof").sort_stats("tottime").print_stats(14)
