"""Which GEMM tile to use for a shape (the autotuner's cache and the built-in defaults)."""
from __future__ import annotations

from navitrain.wgpu.gemm import TileConfig

LARGE = TileConfig(128, 128, 8, 8, 8)
MEDIUM = TileConfig(64, 64, 8, 4, 4)
SMALL = TileConfig(32, 32, 8, 4, 4)


def config_for(M: int, N: int, K: int, batch: int) -> TileConfig:
    """Defaults by size: big tiles for big problems, smaller ones so small problems still fill the GPU."""
    if M >= 512 and N >= 512:
        return LARGE
    if M * N * batch >= 64 * 64 * 16:
        return MEDIUM
    return SMALL
