"""The geometry of a 2-D convolution, as every pass of the engine sees it."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Geometry:
    N: int
    C: int
    H: int
    W: int
    OC: int
    OH: int
    OW: int
    KH: int
    KW: int
    stride: tuple
    padding: tuple
    dilation: tuple
    groups: int

    @property
    def Cg(self):
        return self.C // self.groups

    @property
    def OCg(self):
        return self.OC // self.groups


def pointwise_geometry(g: Geometry) -> bool:
    """1x1 kernel, unit stride, no padding: every output position reads exactly its own input position."""
    return (g.KH == 1 and g.KW == 1 and tuple(g.stride) == (1, 1) and tuple(g.padding) == (0, 0)
            and g.H == g.OH and g.W == g.OW)


def unit_stride_1x1(g: Geometry) -> Geometry:
    """A 1x1 layer as the stride-1 convolution of its subsampled image (what the kernels see)."""
    return Geometry(g.N, g.C, g.OH, g.OW, g.OC, g.OH, g.OW, 1, 1, (1, 1), (0, 0), (1, 1), 1)
