"""The runtime's caches of compiled kernels (WGSL -> compute pipeline, keyed by what the WGSL depends
on), of bind group layouts, and of bind groups (one per tuple of heaps: tensors are blocks in a few
large heaps, so the groups stay cached)."""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from navitrain.wgpu import kernel_limits
from navitrain.wgpu.allocator import Heap
from navitrain.wgpu.dtypes import WGSL_HELPERS
from navitrain.wgpu.errors import KernelCompileError, WgpuError
from navitrain.wgpu.param_arena import MAX_BUFFERS, PARAM_ARENA_BYTES, PARAM_BYTES

log = logging.getLogger("navitrain.wgpu")

_F16 = re.compile(r"\bf16\b|[0-9]h\b")  # an f16 type or a half literal (1.0h): the module needs `enable f16`


@dataclass(frozen=True)
class Kernel:
    """A compiled compute pipeline and what launching it needs."""
    name: str
    pipeline: object
    n_buffers: int
    raw: object  # the native pipeline handle (None when the raw API is unavailable)
    table: bool = False  # binds the parameter arena as `T: array<u32>` after its buffers
    heavy: bool = False  # a matrix product or convolution: worth submitting right away


def _uses_f16(code: str) -> bool:
    return bool(_F16.search(code))


class KernelCache:
    """Runtime methods building and caching pipelines, layouts and bind groups. They use the runtime's
    `lock`, `device`, `_wgpu`, `limits`, `limits_profile`, `_raw`, `_param_buffer` and the caches
    `_layouts`, `_kernels`, `_bind_groups`."""

    def _layout(self, n_buffers: int, table: bool = False):
        layout = self._layouts.get((n_buffers, table))
        if layout is None:
            stage = self._wgpu.ShaderStage.COMPUTE
            entries = [{"binding": 0, "visibility": stage,
                        "buffer": {"type": "uniform", "has_dynamic_offset": True, "min_binding_size": PARAM_BYTES}}]
            entries += [{"binding": i + 1, "visibility": stage, "buffer": {"type": "storage"}}
                        for i in range(n_buffers)]
            if table:  # read-only: the same buffer is bound as the uniform parameter block
                entries.append({"binding": n_buffers + 1, "visibility": stage, "buffer": {"type": "read-only-storage"}})
            bgl = self.device.create_bind_group_layout(label=f"navitrain-{n_buffers}buf{'-table' if table else ''}",
                                                       entries=entries)
            layout = (bgl, self.device.create_pipeline_layout(bind_group_layouts=[bgl]))
            self._layouts[(n_buffers, table)] = layout
        return layout

    def kernel(self, key, name: str, n_buffers: int, source, table: bool = False) -> Kernel:
        """The compiled kernel for `key`, building WGSL with `source()` on first use."""
        kernel = self._kernels.get(key)
        if kernel is not None:
            return kernel
        with self.lock:
            kernel = self._kernels.get(key)
            if kernel is not None:
                return kernel
            if n_buffers > MAX_BUFFERS:
                raise WgpuError(f"kernel {name} binds {n_buffers} buffers; at most {MAX_BUFFERS} are supported")
            body = source() if callable(source) else source
            # `enable` directives must precede every declaration in a WGSL module.
            code = ("enable f16;\n" if _uses_f16(body) else "") + WGSL_HELPERS + body
            # wgpu-native does not refuse workgroup memory past the requested limit: check it ourselves.
            kernel_limits.check(name, code, self.limits, self.limits_profile and self.limits_profile.name)
            try:
                module = self.device.create_shader_module(label=name, code=code)
                pipeline = self.device.create_compute_pipeline(
                    label=name, layout=self._layout(n_buffers, table)[1],
                    compute={"module": module, "entry_point": "main"})
            except Exception as exc:
                numbered = "\n".join(f"{i + 1:4d} {line}" for i, line in enumerate(code.splitlines()))
                log.debug("WGSL of kernel %s:\n%s", name, numbered)
                raise KernelCompileError(f"WGSL kernel '{name}' failed to compile: {exc}") from None
            heavy = name.startswith(("gemm", "conv"))
            kernel = Kernel(name, pipeline, n_buffers, pipeline._internal if self._raw else None, table, heavy)
            self._kernels[key] = kernel
            return kernel

    def _bind_group(self, heaps: tuple[Heap, ...], table: bool = False):
        key = (heaps, "table") if table else heaps
        entry = self._bind_groups.get(key)
        if entry is not None:
            return entry
        if entry is None:
            bgl = self._layout(len(heaps), table)[0]
            entries = [{"binding": 0, "resource": {"buffer": self._param_buffer, "offset": 0, "size": PARAM_BYTES}}]
            entries += [{"binding": i + 1, "resource": {"buffer": h.buffer, "offset": 0, "size": h.size}}
                        for i, h in enumerate(heaps)]
            if table:
                entries.append({"binding": len(heaps) + 1,
                                "resource": {"buffer": self._param_buffer, "offset": 0, "size": PARAM_ARENA_BYTES}})
            group = self.device.create_bind_group(layout=bgl, entries=entries)
            entry = (group, group._internal if self._raw else None)
            self._bind_groups[key] = entry
        return entry

    def _forget_heap(self, heap: Heap) -> None:
        """Drop the bind groups of a heap the allocator has freed."""
        for key in list(self._bind_groups):
            heaps = key[0] if key and key[-1] == "table" else key
            if any(h is heap for h in heaps):
                del self._bind_groups[key]
