"""The runtime's side of captured graphs (graphs.py): laying captured dispatches out in parameter-arena
chunks once, and submitting them again on each replay with three native calls per dispatch."""
from __future__ import annotations

from navitrain.wgpu.errors import DeviceLostError, GraphCaptureError
from navitrain.wgpu.param_arena import PARAM_ARENA_BYTES


class GraphReplay:
    """Runtime methods; they use its `lock`, `device`, `queue`, `_param_buffer`, the raw C API (`_lib`,
    `_offsets`), the arena layout (`_arena_need`, `_place`), `_group_for`, `flush()` and `_check_lost()`."""

    def pack_replay(self, records: list) -> list:
        """Lay captured dispatches out for replay: chunks of (parameter-arena bytes, [(kernel, bind
        group, arena offset, grid)], [(byte position of an RNG seed/offset pair, captured offset)]),
        each chunk's parameters fitting the arena."""
        chunks, entries, patches = [], [], []
        blob = bytearray(PARAM_ARENA_BYTES)
        used = 0
        for kernel, heaps, params, table, groups, rng_word in records:
            need = self._arena_need(kernel, table)
            if used + need > PARAM_ARENA_BYTES:
                chunks.append((blob[:used], entries, patches))
                blob, entries, patches, used = bytearray(PARAM_ARENA_BYTES), [], [], 0
            offset = used
            self._place(blob, offset, params, table)
            if rng_word is not None:
                at = offset + 4 * rng_word
                patches.append((at, int.from_bytes(params[4 * rng_word + 8:4 * rng_word + 16], "little")))
            used += need
            entries.append((kernel, self._group_for(kernel, heaps), offset, groups))
        if entries:
            chunks.append((blob[:used], entries, patches))
        return chunks

    def replay(self, chunks: list, rng: tuple[int, int] | None = None) -> None:
        """Submit captured dispatches (from pack_replay) after whatever was recorded before. `rng`:
        (seed, shift) for the random ops: each gets the current seed and its captured counter offset
        moved by `shift`, so every replay draws fresh numbers."""
        with self.lock:
            if self.lost_reason is not None:
                raise DeviceLostError(self.lost_reason)
            if self.capture is not None:
                raise GraphCaptureError("replay() while a graph is being captured")
            self.flush()
            lib = self._lib
            for blob, entries, patches in chunks:
                if rng is not None and patches:
                    seed, shift = rng
                    for at, captured in patches:
                        blob[at:at + 16] = (seed | ((captured + shift) << 64)).to_bytes(16, "little")
                # Ordered on the queue: this write lands after earlier submissions, before this one.
                self.queue.write_buffer(self._param_buffer, 0, blob)
                encoder = self.device.create_command_encoder(label="navitrain-replay")
                cpass = encoder.begin_compute_pass(label="navitrain-replay")
                if lib is not None:
                    raw, offsets, last = cpass._internal, self._offsets, None
                    for kernel, group, offset, (x, y, z) in entries:
                        if kernel is not last:
                            lib.wgpuComputePassEncoderSetPipeline(raw, kernel.raw)
                            last = kernel
                        offsets[0] = offset
                        lib.wgpuComputePassEncoderSetBindGroup(raw, 0, group[1], 1, offsets)
                        lib.wgpuComputePassEncoderDispatchWorkgroups(raw, x, y, z)
                else:
                    for kernel, group, offset, grid in entries:
                        cpass.set_pipeline(kernel.pipeline)
                        cpass.set_bind_group(0, group[0], [offset])
                        cpass.dispatch_workgroups(*grid)
                cpass.end()
                try:
                    self.queue.submit([encoder.finish()])
                except Exception as exc:
                    self._check_lost(exc)
                    raise
                self.submit_count += 1
                self.dispatch_count += len(entries)
