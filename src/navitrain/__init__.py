"""navitrain: PyTorch training on GPUs that ROCm left behind.

`navitrain.device()` returns a torch.device on the fastest route that works on this machine:
`native` (vendor libraries), `nomiopen` (vendor BLAS, MIOpen off, navitrain's GEMM convolution),
`wgpu` (navitrain's WGSL kernels on Vulkan/Metal/DX12) or `cpu`.

Importing navitrain does not import torch: `navitrain doctor` must work when torch is broken.
"""
from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "device"]


def device(route: str | None = None, **kwargs):
    """A torch.device on the fastest working route (or on `route`); see navitrain.probe.select."""
    from navitrain.probe.select import device as _device

    return _device(route, **kwargs)
