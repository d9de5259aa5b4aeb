"""`profile()`: GPU time, bytes moved and FLOPs per kernel. Lives below the package facade so that
engines (the GEMM tuner times its candidates with it) can use it without importing `navitrain.wgpu`,
which imports everything."""
from __future__ import annotations

import contextlib

from navitrain.wgpu import runtime as _runtime_mod
from navitrain.wgpu import traffic as _traffic


class KernelProfile(list):
    """One kernel's row: `[dispatches, GPU seconds]`, as the table always held (`count, seconds = row`
    still works), plus the traffic of those dispatches (navitrain.wgpu.traffic says how it is counted):
    `bytes_read`, `bytes_written`, `flops`, and `untracked`, the dispatches whose traffic was not known
    (kernels launched outside any aten op without `note_traffic`, such as a borrowed output's copy)."""

    __slots__ = ("bytes_read", "bytes_written", "flops", "untracked")

    def __init__(self) -> None:
        super().__init__((0, 0.0))
        self.bytes_read = self.bytes_written = self.flops = self.untracked = 0

    count = property(lambda self: self[0])
    seconds = property(lambda self: self[1])
    bytes_moved = property(lambda self: self.bytes_read + self.bytes_written)

    def __repr__(self) -> str:
        return (f"KernelProfile(count={self[0]}, seconds={self[1]:.3g}, bytes_read={self.bytes_read}, "
                f"bytes_written={self.bytes_written}, flops={self.flops}, untracked={self.untracked})")


class ProfileTable(dict):
    """Kernel name -> KernelProfile (see `profile`)."""

    def entry(self, name: str) -> KernelProfile:
        row = self.get(name)
        if row is None:
            row = self[name] = KernelProfile()
        return row

    def totals(self) -> dict:
        """The whole table in one row: dispatches, seconds, bytes_read, bytes_written, bytes_moved,
        flops, untracked."""
        rows = self.values()
        read, written = sum(r.bytes_read for r in rows), sum(r.bytes_written for r in rows)
        return {"dispatches": sum(r[0] for r in rows), "seconds": sum(r[1] for r in rows), "bytes_read": read,
                "bytes_written": written, "bytes_moved": read + written, "flops": sum(r.flops for r in rows),
                "untracked": sum(r.untracked for r in rows)}


@contextlib.contextmanager
def profile():
    """Time every kernel on the GPU and count what it moves:

        with navitrain.wgpu.profile() as table:
            train_step()
        # table: kernel name -> [dispatch count, GPU seconds], with .bytes_read, .bytes_written, .flops
        # (and .untracked); matrix products and convolutions are keyed "name@(grid)" so that shapes
        # stay apart. table.totals() sums it all.

    With the adapter's timestamp queries each dispatch runs in a compute pass of its own stamped at
    both ends (GPU time only); without them each dispatch is submitted and waited for alone, and the
    seconds include the submit round trip. Captured graphs (WgpuGraph, compiled steps) replayed inside
    the block are replayed dispatch by dispatch, so they are timed and counted as eager work is.
    Traffic is filled in when the block ends. Profiles nest: an inner one (the GEMM tuner timing
    candidates inside a profiled step) keeps its dispatches to itself."""
    rt = _runtime_mod.runtime()
    rt.synchronize()
    outer = rt.profile, rt.profile_keys, _traffic.profile_log
    table = rt.profile = ProfileTable()
    keys = rt.profile_keys = []
    dlog = _traffic.profile_log = _traffic.DispatchLog(keys)
    _traffic.update_tracing()
    try:
        yield table
    finally:
        try:
            rt.synchronize()
        finally:
            rt.profile, rt.profile_keys, _traffic.profile_log = outer
            _traffic.update_tracing()
            _fold(table, keys, dlog)


def _fold(table: ProfileTable, keys: list, dlog: _traffic.DispatchLog) -> None:
    """Add each dispatch's traffic to its kernel's row."""
    for i, name in enumerate(keys):
        row, traffic = table.entry(name), dlog[i]
        if traffic is None:
            row.untracked += 1
        else:
            row.bytes_read += traffic[0]
            row.bytes_written += traffic[1]
            row.flops += traffic[2]


def mark() -> int | None:
    """See navitrain.wgpu.traffic.mark: taken before launching kernels outside any aten op."""
    return _traffic.mark()


def note_traffic(reads, writes, flops: int = 0, since: int | None = None) -> None:
    """The traffic of kernels launched outside any aten op (see navitrain.wgpu.traffic.note_traffic)."""
    _traffic.note_traffic(reads, writes, flops, since)
