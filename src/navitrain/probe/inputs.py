"""Helpers for writing probe cases: identical random inputs on every device, dtype names, autocast checks.

Inputs are drawn from torch's CPU generator (seeded by the worker before each run) and then moved to
the device, so the device run and the CPU reference see the same numbers. Inside a low-precision case
the values are first rounded to the case's dtype, so the float64 reference starts from exactly the
numbers the device got and the comparison measures the device's arithmetic, not input rounding.

Importing this module does not import torch (the catalogue is listed by a torch-free parent).
"""
from __future__ import annotations

import importlib
from contextlib import contextmanager


class _LazyModule:
    """A module imported on first attribute access, so case modules can say `torch.randn` at top level."""

    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, attr):
        return getattr(importlib.import_module(self._name), attr)


torch = _LazyModule("torch")
nn = _LazyModule("torch.nn")
F = _LazyModule("torch.nn.functional")

# The dtype name inputs are rounded to before use (set by the worker for the duration of one case).
_round_to: str | None = None


@contextmanager
def rounding(dtype_name: str | None):
    global _round_to
    previous, _round_to = _round_to, dtype_name
    try:
        yield
    finally:
        _round_to = previous


def dtype_of(name: str | None):
    """torch dtype for a name such as "float16" (None -> float32)."""
    return getattr(torch, name or "float32")


def _finish(t, device, dtype):
    if _round_to is not None and t.is_floating_point():
        t = t.to(dtype_of(_round_to))
    return t.to(device=device, dtype=dtype if t.is_floating_point() else t.dtype)


def randn(*shape: int, device="cpu", dtype=None, scale: float = 1.0):
    """Normal random numbers made on the CPU, then moved (same values on every device)."""
    return _finish(torch.randn(*shape) * scale, device, dtype or torch.float32)


def rand(*shape: int, device="cpu", dtype=None, low: float = 0.0, high: float = 1.0):
    """Uniform random numbers in [low, high) made on the CPU, then moved."""
    return _finish(torch.rand(*shape) * (high - low) + low, device, dtype or torch.float32)


def randint(high: int, *shape: int, device="cpu"):
    return torch.randint(0, high, shape).to(device)


def module(m, device, dtype):
    """A module built on the CPU (seeded, so identical weights everywhere), rounded and moved."""
    if _round_to is not None:
        m = m.to(dtype_of(_round_to))
    return m.to(device=device, dtype=dtype)


def require_autocast(device, dtype=None) -> None:
    """Raise Unsupported when torch has no autocast (in `dtype`) for this device: the device type has
    none, a Python backend's device module lacks get_amp_supported_dtype, or a CUDA/ROCm GPU has no
    bfloat16."""
    from navitrain.probe.cases import Unsupported

    available = getattr(torch.amp, "is_autocast_available", None)
    if available is not None and not available(device.type):
        raise Unsupported(f"torch has no autocast for device type {device.type!r}")
    if device.type == "cuda":
        if dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
            raise Unsupported("this GPU has no bfloat16 autocast")
    elif device.type == torch._C._get_privateuse1_backend_name():
        backend = getattr(torch, device.type, None)
        supported = getattr(backend, "get_amp_supported_dtype", None)
        if supported is None:
            raise Unsupported(f"the {device.type} device module does not support autocast (no get_amp_supported_dtype)")
        if dtype is not None and dtype not in supported():
            raise Unsupported(f"the {device.type} device has no {str(dtype).replace('torch.', '')} autocast")
