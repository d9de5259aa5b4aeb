"""Route `nomiopen`: the vendor BLAS only. MIOpen/cuDNN are switched off and aten::convolution /
aten::convolution_backward run navitrain's GEMM convolution (navitrain.nomiopen_conv.gemm_conv).

On RDNA1, MIOpen's training kernels use instructions the card lacks while rocBLAS can work; with
`torch.backends.cudnn.enabled = False` alone PyTorch falls back to its own convolution, about 10x
slower than cuDNN. HIP builds of PyTorch use the CUDA dispatch key, so the same registration serves
ROCm and (as the test bed) NVIDIA.

    import navitrain.routes.nomiopen as nomiopen
    nomiopen.enable()            # or: with nomiopen.enabled(): ...
    ...train on "cuda"...
    nomiopen.disable()

The kernels are registered with torch.library only while the route is on; disable() removes them and
restores the previous cuDNN setting. Autograd is untouched: aten's own derivative of convolution
calls convolution_backward, which is ours while the route is on. Each process enables the route for
itself (one process per GPU under DistributedDataParallel).
"""
from __future__ import annotations

import contextlib
import threading
import warnings
from typing import Iterator

from navitrain.routes import torch_gpus
from navitrain.routes.base import Availability, Route
from navitrain.routes.registry import register

_lock = threading.Lock()
_library = None  # the torch.library.Library holding our kernels while enabled
_dispatch_key: str | None = None
_saved_cudnn: bool | None = None


def _kernels():
    from navitrain.nomiopen_conv import gemm_conv

    return {"convolution": gemm_conv.convolution, "convolution_backward": gemm_conv.convolution_backward}


def enable(dispatch_key: str = "CUDA") -> None:
    """Switch cuDNN/MIOpen off and route aten convolutions on `dispatch_key` to navitrain's GEMM
    convolution. Idempotent. Tests pass dispatch_key="CPU" to exercise the registration without a GPU."""
    global _library, _dispatch_key, _saved_cudnn
    import torch

    with _lock:
        if _library is not None:
            if _dispatch_key != dispatch_key:
                raise RuntimeError(f"nomiopen is already enabled for {_dispatch_key}; disable() it first")
            return
        library = torch.library.Library("aten", "IMPL")
        with warnings.catch_warnings():
            # "Overriding a previously registered kernel": that is the point.
            warnings.simplefilter("ignore")
            for name, fn in _kernels().items():
                library.impl(name, fn, dispatch_key)
        _library, _dispatch_key = library, dispatch_key
        _saved_cudnn = torch.backends.cudnn.enabled
        torch.backends.cudnn.enabled = False


def disable() -> None:
    """Remove the registrations and restore the cuDNN setting enable() found. Idempotent."""
    global _library, _dispatch_key, _saved_cudnn
    import torch

    with _lock:
        if _library is None:
            return
        _library._destroy()  # unregisters our kernels; aten's own ones are visible again
        _library, _dispatch_key = None, None
        if _saved_cudnn is not None:
            torch.backends.cudnn.enabled = _saved_cudnn
        _saved_cudnn = None


def is_enabled() -> bool:
    return _library is not None


@contextlib.contextmanager
def enabled(dispatch_key: str = "CUDA") -> Iterator[None]:
    """`with enabled(): ...` turns the route on for the block (and leaves it on if it already was)."""
    was_on = is_enabled()
    enable(dispatch_key)
    try:
        yield
    finally:
        if not was_on:
            disable()


def stats() -> dict[str, int]:
    """How often each convolution algorithm ran in this process ({"forward:winograd4": 40, ...})."""
    from navitrain.nomiopen_conv import conv_plan

    return dict(conv_plan.stats)


@register
class NomiopenRoute(Route):
    name = "nomiopen"
    summary = "vendor BLAS only: MIOpen/cuDNN off, convolutions by navitrain's GEMM/Winograd kernels"
    default_rank = 20

    def availability(self) -> Availability:
        gpus = torch_gpus.find()
        if isinstance(gpus, Availability):
            return gpus
        torch, build, count = gpus.torch, gpus.build, gpus.count
        try:
            name = torch.cuda.get_device_name(0)
        except Exception:
            name = "GPU 0"
        return Availability(True, f"torch {torch.__version__} ({build}) sees {count} GPU(s): {name}; "
                                  "convolutions via BLAS GEMMs, MIOpen/cuDNN off")

    def prepare(self):
        device = torch_gpus.current_device()
        enable("CUDA")
        return device

    def release(self) -> None:
        disable()
