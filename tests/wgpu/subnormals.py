"""CPU references for adapters that flush float32 subnormals (NVIDIA's Vulkan driver; navitrain.float_modes).

Where the adapter flushes, a test that puts subnormals through arithmetic compares against the CPU run
under torch.set_flush_denormal(True) (flush to zero and denormals are zero, what such a driver does);
where it keeps them (lavapipe), the reference is the plain CPU's, so the tests lose no strength there:

    a, b = <inputs with subnormals>                # built outside: under the flag they would read as 0
    got = fn(a.to("wgpu"), b.to("wgpu"))
    with cpu_like_adapter():
        expected = fn(a, b)
    assert_close(got.cpu(), expected, ...)         # compared outside: the flag zeroes subnormals there too
"""
from __future__ import annotations

import contextlib

import pytest
import torch

SMALLEST_NORMAL = 2.0 ** -126


def adapter_flushes_subnormals() -> bool:
    import navitrain.wgpu as nw

    return bool(nw.adapter_info()["flushes_subnormals"])


def cpu_flushes_subnormals() -> bool:
    """Whether the CPU flushes now (PyTorch has no getter): 2^-128 * 1 comes out 0."""
    return float(torch.tensor([2.0 ** -128]) * torch.tensor([1.0])) == 0.0


@contextlib.contextmanager
def cpu_like_adapter(flushes: bool | None = None):
    """Inside, the CPU computes float32 as the adapter does; yields whether that means flushing.

    flushes: the adapter's answer (None: ask navitrain.wgpu.adapter_info(); tests of this helper fake it).
    torch.set_flush_denormal sets the calling thread only (PyTorch's intra-op threads, once started, keep
    subnormals in their share of a large tensor), so those threads are off inside. It works on x86 with
    SSE3 only: elsewhere a flushing adapter's test is skipped, saying why, rather than compared with a
    reference that is wrong for it. The CPU's flush mode and thread count are restored on the way out."""
    if flushes is None:
        flushes = adapter_flushes_subnormals()
    if not flushes:
        yield False
        return
    was_flushing, threads = cpu_flushes_subnormals(), torch.get_num_threads()
    if not torch.set_flush_denormal(True):
        pytest.skip("the adapter flushes float32 subnormals and this CPU cannot "
                    "(torch.set_flush_denormal works on x86 with SSE3 only)")
    torch.set_num_threads(1)
    try:
        yield True
    finally:
        torch.set_flush_denormal(was_flushing)
        torch.set_num_threads(threads)
