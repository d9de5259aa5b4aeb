"""What the two routes on torch's own CUDA/ROCm device (`native`, `nomiopen`) ask torch alike: does it
import, is it a GPU build, how many GPUs does it see; and the device they hand back. Only this module
and the routes' methods import torch, and only when asked: importing a route must not import it."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from navitrain.routes.base import Availability


@dataclass(frozen=True)
class TorchGpus:
    torch: Any   # the imported torch module
    build: str   # "ROCm/HIP 6.4" or "CUDA 12.8"
    count: int   # at least 1


def build(torch) -> str | None:
    """The GPU stack this torch was built for, None for a CPU-only build."""
    hip = getattr(torch.version, "hip", None)
    if hip:
        return f"ROCm/HIP {hip}"
    cuda = getattr(torch.version, "cuda", None)
    return f"CUDA {cuda}" if cuda else None


def find() -> TorchGpus | Availability:
    """torch's GPUs, or an unavailable Availability saying why there are none. Never raises."""
    try:
        import torch
    except Exception as exc:  # torch missing, or a ROCm build whose libraries do not load
        return Availability(False, f"torch does not import: {exc}")
    stack = build(torch)
    if stack is None:
        return Availability(False, f"torch {torch.__version__} is a CPU-only build (no CUDA or ROCm)")
    try:
        count = torch.cuda.device_count()
    except Exception as exc:
        return Availability(False, f"torch {torch.__version__} ({stack}) cannot count GPUs: {exc}")
    if count == 0:
        return Availability(False, f"torch {torch.__version__} ({stack}) sees no GPU")
    return TorchGpus(torch, stack, count)


def current_device():
    """torch's current CUDA/ROCm device; a RuntimeError when torch cannot use one here."""
    import torch

    if not torch.cuda.is_available():
        raise RuntimeError(f"torch {torch.__version__} has no usable CUDA/ROCm device here")
    return torch.device("cuda", torch.cuda.current_device())
