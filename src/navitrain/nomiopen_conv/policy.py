"""Which convolution algorithm to prefer, and how much workspace it may use.

The policy comes from NAVITRAIN_CONV_ALGO unless code overrides it (`use_policy`, used by the
benchmark to compare algorithms in one process). The workspace cap comes from
NAVITRAIN_CONV_WORKSPACE_MB; both are read on every call (a change selects other convolution plans),
so tests and users can change them live.
"""
from __future__ import annotations

import contextlib
import functools
import math
from typing import Iterator

from navitrain import _env

POLICIES = ("auto", "tune", "im2col", "winograd2", "winograd4")

_override: str | None = None
# Explicit split-K for weight gradients (a GEMM whose reduction is the whole batch but whose output is
# a small weight matrix leaves most of a big GPU idle); switchable so the benchmark can measure it.
split_k_enabled = True


def current() -> str:
    if _override is not None:
        return _override
    return _env.value(_env.CONV_ALGO)  # parsed against the same names as POLICIES; raises naming the variable


def state() -> tuple:
    """Everything besides shapes that a convolution plan depends on: the policy (override or variable),
    the workspace cap and split-K, as raw values (cheap enough to read on every call; parsed and
    validated when a plan is built)."""
    return _override, _env.raw(_env.CONV_ALGO), _env.raw(_env.CONV_WORKSPACE_MB), split_k_enabled


def set_policy(name: str | None) -> None:
    """Override NAVITRAIN_CONV_ALGO in this process (None: go back to the variable)."""
    global _override
    if name is not None and name not in POLICIES:
        raise ValueError(f"unknown convolution policy {name!r}; choose one of {', '.join(POLICIES)}")
    _override = name


@contextlib.contextmanager
def use_policy(name: str) -> Iterator[None]:
    global _override
    previous = _override
    set_policy(name)
    try:
        yield
    finally:
        _override = previous


def workspace_bytes() -> int:
    return _env.integer(_env.CONV_WORKSPACE_MB) * 2**20


def batch_chunks(n: int, per_image_bytes: int) -> list[tuple[int, int]]:
    """Split a batch of n into [start, stop) chunks whose workspace stays under the cap. One image is
    the smallest chunk: a single image larger than the cap still runs (the cap is then exceeded)."""
    step = n if per_image_bytes <= 0 else max(1, workspace_bytes() // per_image_bytes)
    return [(a, min(n, a + step)) for a in range(0, n, step)] or [(0, 0)]


@functools.lru_cache(maxsize=None)
def _multiprocessors(index: int) -> int:
    import torch

    return torch.cuda.get_device_properties(index).multi_processor_count


def split_k(device, rows: int, out_rows: int, out_cols: int) -> int:
    """How many slices to cut a reduction of `rows` into for an out_rows x out_cols result: enough
    independent output tiles for two waves over the GPU, slices of at least 1024 rows, a power of two
    that divides `rows` (so the slices are views). 1 on the CPU or when split-K is off."""
    if not split_k_enabled or device.type != "cuda" or rows < 2048:
        return 1
    tiles = math.ceil(out_rows / 128) * math.ceil(out_cols / 128)
    want = min(64, math.ceil(2 * _multiprocessors(device.index or 0) / tiles), rows // 1024)
    split = 1
    while split * 2 <= want and rows % (split * 2) == 0:
        split *= 2
    return split
