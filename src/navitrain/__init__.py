"""navitrain: PyTorch training on GPUs that ROCm left behind.

`navitrain.device()` returns a torch.device on the fastest route that works on this machine:
`native` (vendor libraries), `nomiopen` (vendor BLAS, MIOpen off, navitrain's GEMM convolution),
`wgpu` (navitrain's WGSL kernels on Vulkan/Metal/DX12) or `cpu`.

Importing navitrain does not import torch: `navitrain doctor` must work when torch is broken. This
facade imports only downward (the version, and navitrain.select when device() is called); only the
CLI, above it, imports it.
"""
from __future__ import annotations

from navitrain._version import __version__

__all__ = ["__version__", "device"]


def device(route: str | None = None, **kwargs):
    """A torch.device on the fastest working route (or on `route`); see navitrain.select."""
    from navitrain.select import device as _device

    return _device(route, **kwargs)
