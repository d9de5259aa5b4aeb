"""Route `native`: torch's own CUDA/HIP device as installed, with the vendor libraries
(MIOpen/cuDNN for convolution and normalisation, rocBLAS/cuBLAS for matrix products).

Fastest when it works. On cards ROCm does not serve it is the route that fails: no code object for the
card, no rocBLAS library for the arch, MIOpen kernels RDNA cannot run. Availability only says whether
torch sees a GPU; whether it computes correctly is for the probes to find out.
"""
from __future__ import annotations

from navitrain.routes import torch_gpus
from navitrain.routes.base import Availability, Route
from navitrain.routes.registry import register


@register
class NativeRoute(Route):
    name = "native"
    summary = "torch's own CUDA/ROCm device with the vendor libraries (MIOpen/cuDNN, rocBLAS/cuBLAS)"
    default_rank = 10

    def availability(self) -> Availability:
        gpus = torch_gpus.find()
        if isinstance(gpus, Availability):
            return gpus
        torch, build, count = gpus.torch, gpus.build, gpus.count
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
        return torch_gpus.current_device()
