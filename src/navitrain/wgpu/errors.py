"""The wgpu device's exceptions, at the bottom of the plumbing so that every layer can raise and catch
them without importing the runtime (navitrain.wgpu and navitrain.wgpu.runtime re-export them)."""
from __future__ import annotations


class WgpuError(RuntimeError):
    """A failure of the wgpu device (compilation, validation, lost device)."""


class KernelCompileError(WgpuError):
    pass


class DeviceLostError(WgpuError):
    pass


class GraphCaptureError(WgpuError):
    """Something a captured graph cannot hold was asked for while capturing."""
