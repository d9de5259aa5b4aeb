"""What the normalization kernels (channel_sums, batch_norm, row_norm) share: loads and stores in a
tensor's storage type, the module and launch with their one workgroup size, and per-channel vectors as
parameters (an element offset and a stride, so a strided weight or running statistic is read in place)."""
from __future__ import annotations

from navitrain.wgpu.kernels import codegen, wgsl_math
from navitrain.wgpu.runtime import runtime

WG = 256


def stype(t):
    return runtime().stypes[t.dtype]


def load(t, binding: int, index: str) -> str:
    """WGSL reading element `index` of `t` (bound at b{binding}) as f32."""
    return stype(t).load(f"b{binding}[{index}]", "f32")


def store(t, binding: int, index: str, value: str) -> str:
    """A WGSL statement writing the f32 `value` into element `index` of `t` (bound at b{binding})."""
    return f"b{binding}[{index}] = {stype(t).store(value)};"


def module(tensors, body: str, shared: str = "") -> str:
    helpers = wgsl_math.helpers("shader-int64" in runtime().features)
    return codegen.module([stype(t).wgsl for t in tensors], body, WG, helpers=helpers, shared=shared)


def launch(key, name: str, tensors, params: bytes, source, groups) -> None:
    rt = runtime()
    kernel = rt.kernel(key, name, len(tensors), source)
    rt.dispatch(kernel, tuple(t._ws.heap for t in tensors), params, groups)


def next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def vec_fields(name: str) -> tuple[str, str]:
    """ParamBlock fields of a per-channel vector `name` (absent vectors read 0 and are never used)."""
    return f"{name}_off", f"{name}_stride"


def vec_defaults(*names: str) -> dict:
    return {field: 0 for name in names for field in vec_fields(name)}


def vec_at(name: str, index: str) -> str:
    """WGSL index of element `index` of the vector declared with vec_fields(name)."""
    return f"{name}_off + {index} * {name}_stride"


def vec_args(name: str, t) -> dict:
    """pack() arguments for the vector `name` (nothing when `t` is None: the defaults stand)."""
    if t is None:
        return {}
    return {f"{name}_off": t.elem_offset, f"{name}_stride": vec_stride(t)}


def vec_stride(t) -> int:
    return t.stride(0) if t.dim() else 0
