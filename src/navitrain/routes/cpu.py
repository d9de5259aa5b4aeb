"""Route `cpu`: PyTorch on the CPU. Always available; the last resort and the reference."""
from __future__ import annotations

from navitrain.routes.base import Availability, Route
from navitrain.routes.registry import register


@register
class CpuRoute(Route):
    name = "cpu"
    summary = "PyTorch on the CPU (always works; the reference for every probe)"
    default_rank = 100

    def availability(self) -> Availability:
        try:
            import torch

            return Availability(True, f"torch {torch.__version__} with {torch.get_num_threads()} threads")
        except Exception as exc:  # torch missing or broken
            return Availability(False, f"torch does not import: {exc}")

    def prepare(self):
        import torch

        return torch.device("cpu")
