"""Copies between the host and the runtime's heaps: read-backs and uploads, each ordered after the work
recorded before it (which is submitted first), and refused while a graph is being captured."""
from __future__ import annotations

import numpy as np

from navitrain.wgpu.allocator import Heap
from navitrain.wgpu.errors import GraphCaptureError, WgpuError


class Transfers:
    """Runtime methods; they use its `lock`, `capture`, `queue`, `flush()` and `_check_lost()`."""

    def read(self, heap: Heap, offset: int, nbytes: int) -> memoryview:
        """Bytes [offset, offset+nbytes) of a heap, after all recorded work."""
        start = offset & ~3
        end = (offset + nbytes + 3) & ~3
        with self.lock:
            if self.recorder is not None:
                self.recorder.spoil("reads the device")
            if self.capture is not None:
                raise GraphCaptureError(
                    "reading wgpu data (.item(), .cpu(), .tolist(), printing, or an op that falls back to "
                    "the CPU) is not possible while a graph is being captured: the captured work has not "
                    "run yet. Read results after replay()")
            self.flush()
            try:
                data = self.queue.read_buffer(heap.buffer, start, end - start)
            except Exception as exc:
                self._check_lost(exc)
                raise
        return memoryview(data)[offset - start: offset - start + nbytes]

    def write(self, heap: Heap, offset: int, data: np.ndarray) -> None:
        """Write bytes at a 4-byte aligned offset; the length is padded to 4 bytes."""
        raw = memoryview(np.ascontiguousarray(data)).cast("B")
        if len(raw) % 4:
            raw = memoryview(bytes(raw) + bytes(4 - len(raw) % 4))
        if offset % 4:
            raise WgpuError("unaligned write")  # callers route unaligned writes through a copy kernel
        with self.lock:
            if self.recorder is not None:
                self.recorder.spoil("copies host data in")
            if self.capture is not None:
                raise GraphCaptureError(
                    "copying host data to the wgpu device is not possible inside a captured graph (a "
                    "replay would not repeat it): copy new inputs into the graph's static input tensors "
                    "before each replay()")
            # Queue writes run before commands that are recorded but not yet submitted: submit them
            # first so a block reused since then is not overwritten under a pending kernel.
            self.flush()
            self.queue.write_buffer(heap.buffer, offset, raw)
