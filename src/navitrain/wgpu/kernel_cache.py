"""The runtime's caches of compiled kernels (WGSL -> compute pipeline, keyed by what the WGSL depends
on), of bind group layouts, and of bind groups (one per tuple of heaps: tensors are blocks in a few
large heaps, so the groups stay cached)."""
from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import re
import time
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


class KernelNotCompiled(Exception):
    """A run met a kernel not compiled yet while kernels were being collected (collecting_kernels)."""


def _uses_f16(code: str) -> bool:
    return bool(_F16.search(code))


class KernelCache:
    """Runtime methods building and caching pipelines, layouts and bind groups. They use the runtime's
    `lock`, `device`, `_wgpu`, `limits`, `limits_profile`, `_raw`, `_param_buffer` and the caches
    `_layouts`, `_kernels`, `_bind_groups`, and count compiles in `compile_count` / `compile_seconds`."""

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
        """The compiled kernel for `key`, building WGSL with `source()` on first use. While this thread
        collects kernels (collecting_kernels), a kernel not compiled yet is noted and KernelNotCompiled
        raised instead: the caller's run stops there."""
        kernel = self._kernels.get(key)
        if kernel is not None:
            return kernel
        pending = getattr(self._collecting, "pending", None)
        if pending is not None:
            pending.setdefault(key, (name, n_buffers, source, table))
            raise KernelNotCompiled(name)
        with self.lock:
            kernel = self._kernels.get(key)
            if kernel is not None:
                return kernel
            code = self._code(name, n_buffers, source)
            started = time.perf_counter()
            try:
                pipeline = self._pipeline(name, code, n_buffers, table)
            except Exception as exc:
                numbered = "\n".join(f"{i + 1:4d} {line}" for i, line in enumerate(code.splitlines()))
                log.debug("WGSL of kernel %s:\n%s", name, numbered)
                raise KernelCompileError(f"WGSL kernel '{name}' failed to compile: {exc}") from None
            self.compile_count += 1
            self.compile_seconds += time.perf_counter() - started
            return self._keep(key, name, pipeline, n_buffers, table)

    def _code(self, name: str, n_buffers: int, source) -> str:
        """The whole WGSL module of a kernel, checked against the adapter's limits."""
        if n_buffers > MAX_BUFFERS:
            raise WgpuError(f"kernel {name} binds {n_buffers} buffers; at most {MAX_BUFFERS} are supported")
        body = source() if callable(source) else source
        # `enable` directives must precede every declaration in a WGSL module.
        code = ("enable f16;\n" if _uses_f16(body) else "") + WGSL_HELPERS + body
        # wgpu-native does not refuse workgroup memory past the requested limit: check it ourselves.
        kernel_limits.check(name, code, self.limits, self.limits_profile and self.limits_profile.name)
        return code

    def _pipeline(self, name: str, code: str, n_buffers: int, table: bool):
        module = self.device.create_shader_module(label=name, code=code)
        return self.device.create_compute_pipeline(
            label=name, layout=self._layout(n_buffers, table)[1], compute={"module": module, "entry_point": "main"})

    def _keep(self, key, name: str, pipeline, n_buffers: int, table: bool) -> Kernel:
        heavy = name.startswith(("gemm", "conv"))
        kernel = Kernel(name, pipeline, n_buffers, pipeline._internal if self._raw else None, table, heavy)
        self._kernels[key] = kernel
        return kernel

    @contextlib.contextmanager
    def collecting_kernels(self, pending: dict):
        """Within: this thread's runs stop at their first kernel not compiled yet (KernelNotCompiled),
        noting in `pending` how to build it, for compile_together. Runs whose kernels all exist run."""
        state = self._collecting
        outer, state.pending = getattr(state, "pending", None), pending
        try:
            yield pending
        finally:
            state.pending = outer

    @contextlib.contextmanager
    def not_collecting(self):
        """Within: kernels compile on first use again (a tuning nested inside a collecting run)."""
        state = self._collecting
        outer, state.pending = getattr(state, "pending", None), None
        try:
            yield
        finally:
            state.pending = outer

    def compile_together(self, pending: dict, threads: int) -> int:
        """Compile the kernels noted by collecting_kernels on up to `threads` threads; returns how many
        were compiled. Drivers take ~0.4 s per GEMM pipeline (an H100 through Vulkan, run 15: 90% of a
        tuning's time), and they compile in parallel: the C calls release the GIL and wgpu-py keeps its
        error capture per thread. A kernel that fails here is left out, to fail again where it is used
        (with its WGSL logged), exactly as when compiled alone."""
        jobs = []
        for key, (name, n_buffers, source, table) in pending.items():
            if key in self._kernels:
                continue
            try:
                code = self._code(name, n_buffers, source)
                self._layout(n_buffers, table)
            except Exception as exc:
                log.debug("kernel %s is left to compile where it is used: %s", name, exc)
                continue
            jobs.append((key, name, code, n_buffers, table))
        if not jobs:
            return 0
        started = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, min(threads, len(jobs)))) as pool:
            futures = [(job, pool.submit(self._pipeline, job[1], job[2], job[3], job[4])) for job in jobs]
        done = 0
        with self.lock:
            for (key, name, _, n_buffers, table), future in futures:
                if future.exception() is not None:
                    log.debug("kernel %s is left to compile where it is used: %s", name, future.exception())
                elif key not in self._kernels:
                    self._keep(key, name, future.result(), n_buffers, table)
                    done += 1
            self.compile_count += done
            self.compile_seconds += time.perf_counter() - started
        return done

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
