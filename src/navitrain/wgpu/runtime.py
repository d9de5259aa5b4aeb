"""The wgpu runtime: one adapter, one device, one queue, and the recording of kernel dispatches.

Dispatches are recorded into a single open compute pass and submitted together at sync points (reading
data back, writing data in, a dispatch-count limit, `synchronize()`), because submitting each dispatch
on its own costs hundreds of microseconds. Pipelines and bind groups are cached; kernel parameters
(sizes, strides, offsets, scalars) go into one uniform "arena" buffer that is bound with a dynamic
offset, so a dispatch costs three native calls. Those calls go straight to wgpu-native through
wgpu-py's cffi handle where available: wgpu-py's Python wrappers cost ~12 us for a dynamic-offset
`set_bind_group` alone, a third of our whole per-op budget.

Everything here is guarded by one re-entrant lock: autograd runs backward ops on its own thread.
"""
from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import dataclass

import numpy as np

from navitrain import _env
from navitrain.adapters import AdapterInfo, choose, device_order, list_adapters
from navitrain.wgpu import kernel_limits, process_device
from navitrain.wgpu.allocator import Block, CachingAllocator, Heap, OutOfMemory
from navitrain.wgpu.dtypes import WGSL_HELPERS, build_table
from navitrain.wgpu.native_submit import NativeSubmitter, native_api

log = logging.getLogger("navitrain.wgpu")

PARAM_BYTES = 256            # uniform parameter block per dispatch (64 32-bit words)
PARAM_WORDS = PARAM_BYTES // 4
MAX_BUFFERS = 8              # storage buffers a kernel may bind (besides the parameter block)
_PARAM_ARENA = 1 << 18       # 256 KiB of parameter blocks per submission
_F16 = re.compile(r"\bf16\b|[0-9]h\b")  # an f16 type or a half literal (1.0h): the module needs `enable f16`


class WgpuError(RuntimeError):
    """A failure of the wgpu device (compilation, validation, lost device)."""


class KernelCompileError(WgpuError):
    pass


class DeviceLostError(WgpuError):
    pass


class GraphCaptureError(WgpuError):
    """Something a captured graph cannot hold was asked for while capturing."""


@dataclass(frozen=True)
class Kernel:
    """A compiled compute pipeline and what launching it needs."""
    name: str
    pipeline: object
    n_buffers: int
    raw: object  # the native pipeline handle (None when the raw API is unavailable)
    table: bool = False  # binds the parameter arena as `T: array<u32>` after its buffers
    heavy: bool = False  # a matrix product or convolution: worth submitting right away


def _raw_api():
    """wgpu-native's C functions through wgpu-py's cffi binding, or None."""
    try:
        from wgpu.backends.wgpu_native._api import ffi, lib

        lib.wgpuComputePassEncoderDispatchWorkgroups  # noqa: B018 - existence check
        return ffi, lib
    except Exception:  # pragma: no cover - other wgpu builds
        return None


def _uses_f16(code: str) -> bool:
    return bool(_F16.search(code))


class Runtime:
    def __init__(self) -> None:
        self.lock = threading.RLock()
        import wgpu

        self._wgpu = wgpu
        pairs = list_adapters()
        infos = [info for _, info in pairs]
        want = _env.wgpu_adapter()
        order = device_order(infos)
        asked = process_device.CURRENT.index
        index = choose(infos, want) if want else (order[asked] if asked < len(order) else None)
        if index is None and not want and infos:
            raise WgpuError(f"wgpu:{asked} does not exist: {len(order)} adapter(s) in wgpu:N order: "
                            + ", ".join(infos[i].name for i in order))
        if index is None:
            if want:
                names = ", ".join(i.name for i in infos) or "none"
                raise WgpuError(f"{_env.WGPU_ADAPTER}={want!r} matches no adapter (adapters: {names})")
            raise WgpuError(
                "no Vulkan/Metal/DX12 adapter found; install a Vulkan driver "
                "(Debian/Ubuntu: sudo apt-get install mesa-vulkan-drivers libvulkan1)")
        self.adapter, self.info = pairs[index]
        self.all_adapters: list[AdapterInfo] = infos
        if self.info.software:
            log.warning("wgpu is running on a software adapter (%s): correct but slow", self.info.name)

        feats = set(self.adapter.features)
        want_features = [f for f in ("shader-f16", "shader-f64", "shader-int64", "subgroup", "timestamp-query")
                         if f in feats]
        limits = dict(self.adapter.limits)
        keys = (
            "max-storage-buffer-binding-size", "max-buffer-size", "max-compute-workgroup-storage-size",
            "max-compute-invocations-per-workgroup", "max-compute-workgroup-size-x",
            "max-compute-workgroup-size-y", "max-storage-buffers-per-shader-stage",
        )
        # NAVITRAIN_WGPU_LIMITS: ask for no more than a given card offers (navitrain.wgpu.limits_profile),
        # so a kernel that would not fit that card fails here too.
        self.limits_profile = _env.value(_env.WGPU_LIMITS)
        if self.limits_profile is not None:
            want_features = self.limits_profile.allow(want_features)
            limits = self.limits_profile.cap(limits)
            keys += tuple(k for k in self.limits_profile.limits if k not in keys)
        required_limits = {k: limits[k] for k in keys if k in limits}
        self.device = self.adapter.request_device_sync(
            label="navitrain", required_features=want_features, required_limits=required_limits)
        self.queue = self.device.queue
        self.features = frozenset(want_features)
        self.limits = dict(self.device.limits)
        self.stypes = build_table("shader-f16" in self.features, "shader-int64" in self.features,
                                  has_f64="shader-f64" in self.features)

        max_binding = int(self.limits["max-storage-buffer-binding-size"])
        max_binding = min(max_binding, int(self.limits["max-buffer-size"])) // 256 * 256
        heap = min(max_binding, (64 << 20) if self.info.software else (512 << 20))
        self.allocator = CachingAllocator(self._create_heap_buffer, self._destroy_heap_buffer, heap, max_binding,
                                          cap=_env.value(_env.WGPU_MEMORY_LIMIT))
        self.allocator.on_heap_freed = self._forget_heap

        self._raw = _raw_api()
        self._lib = self._raw[1] if self._raw else None
        self._param_align = max(PARAM_BYTES, int(self.limits.get("min-uniform-buffer-offset-alignment", 256)))
        usage = wgpu.BufferUsage
        # The arena also serves as a read-only storage "table" for kernels whose parameters outgrow 64
        # words (multi-tensor ops list every tensor's offset there).
        self._param_buffer = self.device.create_buffer(
            label="navitrain-params", size=_PARAM_ARENA, usage=usage.UNIFORM | usage.STORAGE | usage.COPY_DST)
        self._param_arena = bytearray(_PARAM_ARENA)
        self._fence = self.device.create_buffer(label="navitrain-fence", size=4, usage=usage.COPY_SRC | usage.STORAGE)
        self._param_used = 0
        self._layouts: dict[int, tuple[object, object]] = {}
        self._kernels: dict[object, Kernel] = {}
        self._bind_groups: dict[tuple, tuple[object, object]] = {}
        self._encoder = None       # a wgpu-py encoder (timed profiling passes, builds without the C API)
        self._encoder_raw = None   # or a native encoder handle (every other batch: see native_submit)
        self._pass = None
        self._pass_raw = None
        api = native_api() if self._raw else None
        self._native = NativeSubmitter(api, self.device, self.queue, self._param_buffer, self._param_arena) \
            if api is not None else None
        self._last_kernel = None
        self._pending = 0
        self._batch_limit = _env.integer(_env.WGPU_BATCH)
        self._heavy_batch = 4  # submit as soon as this many dispatches, one a matrix product, wait
        self._offsets = self._raw[0].new("uint32_t[1]") if self._raw else None
        self.dispatch_count = 0
        self.submit_count = 0
        self.profile: dict | None = None  # kernel name -> [count, seconds] while profiling (profiling.py)
        self.profile_keys: list[str] = []  # while profiling: each dispatch's key in `profile`, in order
        self._timer = _GpuTimer(self) if "timestamp-query" in self.features else None
        self.lost_reason: str | None = None
        self.capture = None  # the navitrain.wgpu.graphs.WgpuGraph being captured, if any

    # -- description ------------------------------------------------------------------------------
    def describe(self) -> dict:
        return {
            **self.info.to_dict(),
            "features": sorted(self.features),
            "max_storage_binding_bytes": self.allocator.max_binding,
            "heap_bytes": self.allocator.heap_size,
            "limits_profile": self.limits_profile.name if self.limits_profile else None,
            "memory_limit_bytes": self.allocator.cap,
        }

    # -- memory -------------------------------------------------------------------------------------
    def _create_heap_buffer(self, nbytes: int):
        usage = self._wgpu.BufferUsage
        try:
            return self.device.create_buffer(
                label=f"navitrain-heap-{nbytes >> 20}MiB", size=nbytes,
                usage=usage.STORAGE | usage.COPY_SRC | usage.COPY_DST)
        except Exception as exc:  # wgpu reports out-of-memory as an exception of its own
            if "memory" in str(exc).lower() or type(exc).__name__ == "GPUOutOfMemoryError":
                raise OutOfMemory(str(exc)) from None
            raise

    def _destroy_heap_buffer(self, buffer) -> None:
        # Work already recorded may still use the heap: finish it before the buffer goes.
        self.synchronize()
        buffer.destroy()

    def _forget_heap(self, heap: Heap) -> None:
        for key in list(self._bind_groups):
            heaps = key[0] if key and key[-1] == "table" else key
            if any(h is heap for h in heaps):
                del self._bind_groups[key]

    def malloc(self, nbytes: int) -> Block:
        return self.allocator.malloc(nbytes)  # the allocator has its own lock

    # -- kernels --------------------------------------------------------------------------------
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
                                "resource": {"buffer": self._param_buffer, "offset": 0, "size": _PARAM_ARENA}})
            group = self.device.create_bind_group(layout=bgl, entries=entries)
            entry = (group, group._internal if self._raw else None)
            self._bind_groups[key] = entry
        return entry

    # -- recording ------------------------------------------------------------------------------
    def _begin(self, timestamp_writes: dict | None = None) -> None:
        native = self._native
        if native is not None and timestamp_writes is None and self._encoder is None:
            if self._encoder_raw is None:
                self._encoder_raw = native.create_encoder()
            self._pass = native.begin_pass(self._encoder_raw)
            self._pass_raw = self._pass.raw
            self._last_kernel = None
            return
        if self._encoder_raw is not None:
            # A timed pass needs a wgpu-py encoder. profile() starts from a synchronized runtime, so no
            # native batch is open then; should one be, it is submitted first.
            self._submit()
        if self._encoder is None:
            self._encoder = self.device.create_command_encoder(label="navitrain-batch")
        self._pass = self._encoder.begin_compute_pass(label="navitrain-pass", timestamp_writes=timestamp_writes)
        self._pass_raw = self._pass._internal if self._raw else None
        self._last_kernel = None

    def dispatch(self, kernel: Kernel, heaps: tuple[Heap, ...], params: bytes, groups: tuple[int, int, int],
                 table: bytes | None = None, rng_word: int | None = None) -> None:
        """Record one dispatch of `kernel` over `heaps` with parameter block `params`. A `table` (for
        kernels compiled with table=True) lands in the arena right after the block; the block's last
        word tells the kernel where (as a word index into T). `rng_word`: where the block holds the
        RNG seed and counter offset (two 64-bit values), which a captured graph renews on each replay."""
        with self.lock:
            if self.lost_reason is not None:
                raise DeviceLostError(self.lost_reason)
            if self.capture is not None:
                # Capturing: the dispatch is kept for replay, not run (as with torch.cuda graphs).
                self.capture.record(kernel, heaps, params, table, groups, rng_word)
                return
            # (The common case, no table, is spelled out inline: this is every op's hot path.)
            need = self._param_align if table is None else self._arena_need(kernel, table)
            offset = self._param_used
            if offset + need > _PARAM_ARENA:
                self.flush()
                offset = 0
            timed = self.profile is not None and self._timer is not None
            if timed:
                # GPU-timestamp profiling: each dispatch gets a pass of its own with begin/end stamps.
                if self._pass is not None:
                    self._pass.end()
                    self._pass = None
                self._begin(self._timer.writes(self._profile_key(kernel, groups)))
            elif self._pass is None:
                self._begin()
            if table is None:
                self._param_arena[offset:offset + len(params)] = params
            else:
                self._place(self._param_arena, offset, params, table)
            self._param_used = offset + need
            entry = self._group_for(kernel, heaps)
            lib = self._lib
            if lib is not None:
                if self._last_kernel is not kernel:
                    lib.wgpuComputePassEncoderSetPipeline(self._pass_raw, kernel.raw)
                    self._last_kernel = kernel
                self._offsets[0] = offset
                lib.wgpuComputePassEncoderSetBindGroup(self._pass_raw, 0, entry[1], 1, self._offsets)
                lib.wgpuComputePassEncoderDispatchWorkgroups(self._pass_raw, groups[0], groups[1], groups[2])
            else:
                if self._last_kernel is not kernel:
                    self._pass.set_pipeline(kernel.pipeline)
                    self._last_kernel = kernel
                self._pass.set_bind_group(0, entry[0], [offset])
                self._pass.dispatch_workgroups(*groups)
            self._pending += 1
            self.dispatch_count += 1
            if timed:
                self._pass.end()
                self._pass = None
                if self._timer.full() or self._pending >= self._batch_limit:
                    self.flush()
            elif self.profile is not None:
                self._profile_last(self._profile_key(kernel, groups))
            elif self._pending >= self._batch_limit or (kernel.heavy and self._pending >= self._heavy_batch):
                # Submit early and often enough that the GPU works while Python records the rest
                # of the step: a step recorded whole before its first submit costs host time plus
                # GPU time instead of the larger of the two.
                self.flush()

    def _profile_key(self, kernel: Kernel, groups: tuple[int, int, int]) -> str:
        """Profiling: the table key of a dispatch (matrix products and convolutions keyed by grid too, so
        that shapes stay apart), also noted in `profile_keys`, in issue order, for the traffic log."""
        key = kernel.name if not kernel.heavy else f"{kernel.name}@{groups}"
        self.profile_keys.append(key)
        return key

    def _profile_last(self, name: str) -> None:
        """Profiling mode: submit each dispatch alone and wait for it (slow; for finding hot kernels)."""
        t0 = time.perf_counter()
        self.flush()
        poll_wait = getattr(self.device, "_poll_wait", None)
        if poll_wait is not None:
            poll_wait()
        entry = self.profile.entry(name)
        entry[0] += 1
        entry[1] += time.perf_counter() - t0

    def flush(self) -> None:
        """Submit everything recorded so far (does not wait for it)."""
        with self.lock:
            if self._encoder is None and self._encoder_raw is None:
                return
            if self._pass is not None:
                self._pass.end()
            timer = self._timer if self.profile is not None else None
            if timer is not None and self._encoder is not None:
                timer.resolve(self._encoder)
            self._submit()
            if timer is not None:
                timer.collect(self.profile)

    def _submit(self) -> None:
        """Submit the open encoder (its pass ended) after uploading the parameter blocks it uses."""
        native = self._native
        if self._param_used:
            if native is not None:
                native.upload_params(self._param_used)
            else:
                self.queue.write_buffer(self._param_buffer, 0, self._param_arena, 0, self._param_used)
        encoder, raw = self._encoder, self._encoder_raw
        self._pass = self._pass_raw = self._encoder = self._encoder_raw = None
        self._last_kernel = None
        self._pending = 0
        self._param_used = 0
        commands = encoder.finish() if encoder is not None else native.finish(raw)
        try:
            if encoder is not None:
                self.queue.submit([commands])
            else:
                native.submit(commands)
        except Exception as exc:
            self._check_lost(exc)
            raise
        self.submit_count += 1

    # -- the parameter arena (shared by recording and by captured graphs) ------------------------
    def _arena_need(self, kernel: Kernel, table: bytes | None) -> int:
        """Arena bytes a dispatch takes: its parameter block, and its table rounded up."""
        align = self._param_align
        if table is None:
            return align
        need = align + (len(table) + align - 1) // align * align
        if need > _PARAM_ARENA:
            raise WgpuError(f"kernel {kernel.name}: a {len(table)}-byte table exceeds the parameter arena")
        return need

    def _place(self, arena: bytearray, offset: int, params: bytes, table: bytes | None) -> None:
        """Write a parameter block at `offset`, and its table right after it with the block's last
        word telling the kernel where (as a word index into T)."""
        arena[offset:offset + len(params)] = params
        if table is not None:
            start = offset + self._param_align
            arena[start:start + len(table)] = table
            arena[offset + PARAM_BYTES - 4:offset + PARAM_BYTES] = (start // 4).to_bytes(4, "little")

    def _group_for(self, kernel: Kernel, heaps: tuple[Heap, ...]):
        return self._bind_group(heaps, True) if kernel.table else \
            (self._bind_groups.get(heaps) or self._bind_group(heaps))

    def pack_replay(self, records: list) -> list:
        """Lay captured dispatches out for replay: chunks of (parameter-arena bytes, [(kernel, bind
        group, arena offset, grid)], [(byte position of an RNG seed/offset pair, captured offset)]),
        each chunk's parameters fitting the arena."""
        chunks, entries, patches = [], [], []
        blob = bytearray(_PARAM_ARENA)
        used = 0
        for kernel, heaps, params, table, groups, rng_word in records:
            need = self._arena_need(kernel, table)
            if used + need > _PARAM_ARENA:
                chunks.append((blob[:used], entries, patches))
                blob, entries, patches, used = bytearray(_PARAM_ARENA), [], [], 0
            offset = used
            self._place(blob, offset, params, table)
            if rng_word is not None:
                at = offset + 4 * rng_word
                patches.append((at, int.from_bytes(params[4 * rng_word + 8:4 * rng_word + 16], "little")))
            used += need
            entries.append((kernel, self._group_for(kernel, heaps), offset, groups))
        if entries:
            chunks.append((blob[:used], entries, patches))
        return chunks

    def replay(self, chunks: list, rng: tuple[int, int] | None = None) -> None:
        """Submit captured dispatches (from pack_replay) after whatever was recorded before. `rng`:
        (seed, shift) for the random ops: each gets the current seed and its captured counter offset
        moved by `shift`, so every replay draws fresh numbers."""
        with self.lock:
            if self.lost_reason is not None:
                raise DeviceLostError(self.lost_reason)
            if self.capture is not None:
                raise GraphCaptureError("replay() while a graph is being captured")
            self.flush()
            lib = self._lib
            for blob, entries, patches in chunks:
                if rng is not None and patches:
                    seed, shift = rng
                    for at, captured in patches:
                        blob[at:at + 16] = (seed | ((captured + shift) << 64)).to_bytes(16, "little")
                # Ordered on the queue: this write lands after earlier submissions, before this one.
                self.queue.write_buffer(self._param_buffer, 0, blob)
                encoder = self.device.create_command_encoder(label="navitrain-replay")
                cpass = encoder.begin_compute_pass(label="navitrain-replay")
                if lib is not None:
                    raw, offsets, last = cpass._internal, self._offsets, None
                    for kernel, group, offset, (x, y, z) in entries:
                        if kernel is not last:
                            lib.wgpuComputePassEncoderSetPipeline(raw, kernel.raw)
                            last = kernel
                        offsets[0] = offset
                        lib.wgpuComputePassEncoderSetBindGroup(raw, 0, group[1], 1, offsets)
                        lib.wgpuComputePassEncoderDispatchWorkgroups(raw, x, y, z)
                else:
                    for kernel, group, offset, grid in entries:
                        cpass.set_pipeline(kernel.pipeline)
                        cpass.set_bind_group(0, group[0], [offset])
                        cpass.dispatch_workgroups(*grid)
                cpass.end()
                try:
                    self.queue.submit([encoder.finish()])
                except Exception as exc:
                    self._check_lost(exc)
                    raise
                self.submit_count += 1
                self.dispatch_count += len(entries)

    def synchronize(self) -> None:
        """Submit pending work and wait until the GPU has finished it."""
        with self.lock:
            self.flush()
            try:
                # wgpuDevicePoll(wait=true) blocks until submitted work is done. (wgpu-py 0.32's
                # on_submitted_work_done_sync has a broken callback signature, so it is not used.)
                poll_wait = getattr(self.device, "_poll_wait", None)
                if poll_wait is not None:
                    poll_wait()
                else:  # pragma: no cover - other wgpu-py versions: a tiny read-back waits as well
                    self.queue.read_buffer(self._fence, 0, 4)
            except Exception as exc:
                self._check_lost(exc)
                raise

    def _check_lost(self, exc: Exception) -> None:
        text = str(exc).lower()
        if "lost" in text or "device is invalid" in text or "parent device" in text:
            self.lost_reason = (
                f"the wgpu device on {self.info.name} was lost ({exc}); the driver may have reset the GPU. "
                "Restart the process; `navitrain doctor` and `dmesg` may say why.")
            raise DeviceLostError(self.lost_reason) from exc

    # -- transfers ------------------------------------------------------------------------------
    def read(self, heap: Heap, offset: int, nbytes: int) -> memoryview:
        """Bytes [offset, offset+nbytes) of a heap, after all recorded work."""
        start = offset & ~3
        end = (offset + nbytes + 3) & ~3
        with self.lock:
            if self.capture is not None:
                raise GraphCaptureError(
                    "reading wgpu data (.item(), .cpu(), .tolist(), printing, or an op that falls back to "
                    "the CPU) is not possible while a graph is being captured: the captured work has not "
                    "run yet. Read results after replay()")
            self.flush()
            try:
                data = self.queue.read_buffer(heap.buffer, start, end - start)
            except Exception as exc:
                self._check_lost(exc)
                raise
        return memoryview(data)[offset - start: offset - start + nbytes]

    def write(self, heap: Heap, offset: int, data: np.ndarray) -> None:
        """Write bytes at a 4-byte aligned offset; the length is padded to 4 bytes."""
        raw = memoryview(np.ascontiguousarray(data)).cast("B")
        if len(raw) % 4:
            raw = memoryview(bytes(raw) + bytes(4 - len(raw) % 4))
        if offset % 4:
            raise WgpuError("unaligned write")  # callers route unaligned writes through a copy kernel
        with self.lock:
            if self.capture is not None:
                raise GraphCaptureError(
                    "copying host data to the wgpu device is not possible inside a captured graph (a "
                    "replay would not repeat it): copy new inputs into the graph's static input tensors "
                    "before each replay()")
            # Queue writes run before commands that are recorded but not yet submitted: submit them
            # first so a block reused since then is not overwritten under a pending kernel.
            self.flush()
            self.queue.write_buffer(heap.buffer, offset, raw)


_runtime: Runtime | None = None
_runtime_lock = threading.Lock()
_runtime_error: Exception | None = None


class _GpuTimer:
    """Per-dispatch GPU time for `navitrain.wgpu.profile()`, from timestamp queries written at the
    start and end of a one-dispatch compute pass. Unlike timing each submission from the host, this
    leaves out the ~50 us submit round trip that would swamp every small kernel."""

    SLOTS = 1024  # dispatches timed per submission

    def __init__(self, rt: Runtime) -> None:
        import wgpu

        self.rt = rt
        self.query_set = rt.device.create_query_set(type=wgpu.QueryType.timestamp, count=2 * self.SLOTS)
        self.buffer = rt.device.create_buffer(
            size=16 * self.SLOTS, usage=wgpu.BufferUsage.QUERY_RESOLVE | wgpu.BufferUsage.COPY_SRC)
        self.names: list[str] = []
        period = 1.0
        if rt._raw is not None:
            try:
                period = float(rt._raw[1].wgpuQueueGetTimestampPeriod(rt.queue._internal)) or 1.0
            except Exception:  # pragma: no cover - older wgpu-native: ticks are nanoseconds
                period = 1.0
        self.seconds_per_tick = period * 1e-9

    def writes(self, name: str) -> dict:
        i = len(self.names)
        self.names.append(name)
        return {"query_set": self.query_set, "beginning_of_pass_write_index": 2 * i,
                "end_of_pass_write_index": 2 * i + 1}

    def full(self) -> bool:
        return len(self.names) >= self.SLOTS

    def resolve(self, encoder) -> None:
        if self.names:
            encoder.resolve_query_set(self.query_set, 0, 2 * len(self.names), self.buffer, 0)

    def collect(self, table: dict) -> None:
        if not self.names:
            return
        n = len(self.names)
        ticks = np.frombuffer(self.rt.queue.read_buffer(self.buffer, 0, 16 * n), dtype=np.uint64).reshape(n, 2)
        for name, (start, end) in zip(self.names, ticks):
            entry = table.entry(name)
            entry[0] += 1
            entry[1] += float(int(end) - int(start)) * self.seconds_per_tick if end >= start else 0.0
        self.names.clear()


def runtime() -> Runtime:
    """The process-wide runtime, created on first use."""
    global _runtime, _runtime_error
    if _runtime is not None:
        return _runtime
    with _runtime_lock:
        if _runtime is None:
            if _runtime_error is not None:
                raise WgpuError(f"the wgpu device could not start earlier: {_runtime_error}")
            t0 = time.perf_counter()
            try:
                _runtime = Runtime()
            except Exception as exc:
                _runtime_error = exc
                raise
            log.info("wgpu device on %s (%s, %s) ready in %.2fs", _runtime.info.name, _runtime.info.backend,
                     _runtime.info.driver, time.perf_counter() - t0)
    return _runtime


def is_started() -> bool:
    return _runtime is not None
