"""GPU time per dispatch for `navitrain.wgpu.profile()` (profiling.py), on adapters with timestamp queries."""
from __future__ import annotations

import numpy as np


class GpuTimer:
    """Per-dispatch GPU time from timestamp queries written at the start and end of a one-dispatch
    compute pass (the runtime gives each dispatch a pass of its own while profiling). Unlike timing
    each submission from the host, this leaves out the ~50 us submit round trip that would swamp every
    small kernel. `rt` is the runtime (its device, queue and raw C API)."""

    SLOTS = 1024  # dispatches timed per submission

    def __init__(self, rt) -> None:
        import wgpu

        self.rt = rt
        self.query_set = rt.device.create_query_set(type=wgpu.QueryType.timestamp, count=2 * self.SLOTS)
        self.buffer = rt.device.create_buffer(
            size=16 * self.SLOTS, usage=wgpu.BufferUsage.QUERY_RESOLVE | wgpu.BufferUsage.COPY_SRC)
        self.names: list[str] = []
        period = 1.0
        if rt._raw is not None:
            try:
                period = float(rt._raw[1].wgpuQueueGetTimestampPeriod(rt.queue._internal)) or 1.0
            except Exception:  # pragma: no cover - older wgpu-native: ticks are nanoseconds
                period = 1.0
        self.seconds_per_tick = period * 1e-9

    def writes(self, name: str) -> dict:
        i = len(self.names)
        self.names.append(name)
        return {"query_set": self.query_set, "beginning_of_pass_write_index": 2 * i,
                "end_of_pass_write_index": 2 * i + 1}

    def full(self) -> bool:
        return len(self.names) >= self.SLOTS

    def resolve(self, encoder) -> None:
        if self.names:
            encoder.resolve_query_set(self.query_set, 0, 2 * len(self.names), self.buffer, 0)

    def collect(self, table: dict) -> None:
        if not self.names:
            return
        n = len(self.names)
        ticks = np.frombuffer(self.rt.queue.read_buffer(self.buffer, 0, 16 * n), dtype=np.uint64).reshape(n, 2)
        for name, (start, end) in zip(self.names, ticks):
            entry = table.entry(name)
            entry[0] += 1
            entry[1] += float(int(end) - int(start)) * self.seconds_per_tick if end >= start else 0.0
        self.names.clear()
