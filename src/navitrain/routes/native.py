"""Route `native`: torch's own CUDA/HIP device as installed, with the vendor libraries
(MIOpen/cuDNN for convolution and normalisation, rocBLAS/cuBLAS for matrix products).

Fastest when it works. On cards ROCm does not serve it is the route that fails: no code object for the
card, no rocBLAS library for the arch, MIOpen kernels RDNA cannot run. Availability only says whether
torch sees a GPU; whether it computes correctly is for the probes to find out.
"""
from __future__ import annotations

from navitrain.routes.base import Availability, Route
from navitrain.routes.registry import register


def _build(torch) -> str | None:
    hip = getattr(torch.version, "hip", None)
    if hip:
        return f"ROCm/HIP {hip}"
    cuda = getattr(torch.version, "cuda", None)
    return f"CUDA {cuda}" if cuda else None


@register
class NativeRoute(Route):
    name = "native"
    summary = "torch's own CUDA/ROCm device with the vendor libraries (MIOpen/cuDNN, rocBLAS/cuBLAS)"
    default_rank = 10

    def availability(self) -> Availability:
        try:
            import torch
        except Exception as exc:  # torch missing, or a ROCm build whose libraries do not load
            return Availability(False, f"torch does not import: {exc}")
        build = _build(torch)
        if build is None:
            return Availability(False, f"torch {torch.__version__} is a CPU-only build (no CUDA or ROCm)")
        try:
            count = torch.cuda.device_count()
        except Exception as exc:
            return Availability(False, f"torch {torch.__version__} ({build}) cannot count GPUs: {exc}")
        if count == 0:
            return Availability(False, f"torch {torch.__version__} ({build}) sees no GPU")
        try:
            props = torch.cuda.get_device_properties(0)
            arch = getattr(props, "gcnArchName", None) or "sm_{}{}".format(props.major, props.minor)
            name = f"{props.name} [{arch}]"
            built_for = torch.cuda.get_arch_list()
        except Exception as exc:
            return Availability(True, f"torch {torch.__version__} ({build}) sees {count} GPU(s); "
                                      f"reading properties failed: {exc}")
        note = ""
        base_arch = arch.split(":")[0]
        if getattr(torch.version, "hip", None) and built_for and base_arch not in built_for:
            # Still "available": HSA_OVERRIDE_GFX_VERSION may make it run; the probes will tell.
            note = f"; this build has no code for {base_arch} (built for {', '.join(built_for)})"
        return Availability(True, f"torch {torch.__version__} ({build}) sees {count} GPU(s): {name}{note}")

    def prepare(self):
        import torch

        if not torch.cuda.is_available():
            raise RuntimeError(f"torch {torch.__version__} has no usable CUDA/ROCm device here")
        return torch.device("cuda", torch.cuda.current_device())
