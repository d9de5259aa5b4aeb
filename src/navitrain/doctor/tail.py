"""Bounded reads of a log: the last `keep` bytes of a file, a pipe, a terminal or a device.

A regular file is read from `keep` bytes before its end (one seek). Anything else (a pipe, `<(cmd)`,
standard input, /dev/zero) cannot seek, so it is read in chunks of which only the last `keep` bytes
are kept, and reading stops after `cap` bytes: a stream that never ends (/dev/zero, `yes`) neither
fills the memory nor blocks forever on a fast producer.
"""
from __future__ import annotations

import os
import stat
from collections import deque
from dataclasses import dataclass
from typing import BinaryIO

KEEP_BYTES = 32 << 20   # the failure is near the end of a log; this much of the end is plenty
STREAM_CAP = 1 << 30    # read at most this much of a stream that cannot seek
_CHUNK = 1 << 20


@dataclass
class Tail:
    data: bytes
    total: int        # bytes the input held (a file) or that were read (a stream)
    cut_start: bool   # the beginning was left out (only the last `keep` bytes are in data)
    unfinished: bool  # a stream still had more after `cap` bytes: its end was never seen


def read_tail(handle: BinaryIO, keep: int = KEEP_BYTES, cap: int = STREAM_CAP) -> Tail:
    try:
        regular = stat.S_ISREG(os.fstat(handle.fileno()).st_mode)
    except (AttributeError, OSError, ValueError):  # a file-like object without a descriptor
        regular = False
    if regular:
        size = handle.seek(0, os.SEEK_END)
        handle.seek(max(0, size - keep))
        data = handle.read(keep)
        return Tail(data, size, size > keep, False)
    chunks: deque[bytes] = deque()
    kept = total = 0
    while total < cap:
        chunk = handle.read(min(_CHUNK, cap - total))
        if not chunk:
            break
        chunks.append(chunk)
        kept += len(chunk)
        total += len(chunk)
        while chunks and kept - len(chunks[0]) >= keep:  # the oldest chunk is no longer in the last `keep`
            kept -= len(chunks.popleft())
    unfinished = total >= cap and bool(handle.read(1))
    data = b"".join(chunks)[-keep:]
    return Tail(data, total, total > keep, unfinished)
