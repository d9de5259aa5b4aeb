"""The parameter arena: one uniform buffer holding every recorded dispatch's parameter block (sizes,
strides, offsets, scalars), bound with a dynamic offset, and after a block the optional read-only
"table" of kernels whose parameters outgrow 64 words. Eager recording and captured-graph replay lay
blocks out the same way, through the `ParamArena` methods mixed into the runtime."""
from __future__ import annotations

from navitrain.wgpu.errors import WgpuError

PARAM_BYTES = 256            # uniform parameter block per dispatch (64 32-bit words)
PARAM_WORDS = PARAM_BYTES // 4
MAX_BUFFERS = 8              # storage buffers a kernel may bind (besides the parameter block)
PARAM_ARENA_BYTES = 1 << 18  # 256 KiB of parameter blocks per submission


class ParamArena:
    """Runtime methods placing parameter blocks; `_param_align` is the runtime's block stride (the
    adapter's uniform offset alignment, at least PARAM_BYTES)."""

    _param_align: int

    def _arena_need(self, kernel, table: bytes | None) -> int:
        """Arena bytes a dispatch takes: its parameter block, and its table rounded up."""
        align = self._param_align
        if table is None:
            return align
        need = align + (len(table) + align - 1) // align * align
        if need > PARAM_ARENA_BYTES:
            raise WgpuError(f"kernel {kernel.name}: a {len(table)}-byte table exceeds the parameter arena")
        return need

    def _place(self, arena: bytearray, offset: int, params: bytes, table: bytes | None) -> None:
        """Write a parameter block at `offset`, and its table right after it with the block's last
        word telling the kernel where (as a word index into T)."""
        arena[offset:offset + len(params)] = params
        if table is not None:
            start = offset + self._param_align
            arena[start:start + len(table)] = table
            arena[offset + PARAM_BYTES - 4:offset + PARAM_BYTES] = (start // 4).to_bytes(4, "little")
