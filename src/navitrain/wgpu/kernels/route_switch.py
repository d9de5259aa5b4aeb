"""A switch that routes layers away from a family of direct kernels for a while: the tuner turns it off
to time the implicit GEMM (the other candidate) on the same layer, benchmarks to measure both."""
from __future__ import annotations

import contextlib


class RouteSwitch:
    def __init__(self) -> None:
        self.on = True

    @contextlib.contextmanager
    def disabled(self):
        """Off inside the block, back to what it was after (nested blocks included)."""
        was, self.on = self.on, False
        try:
            yield
        finally:
            self.on = was
