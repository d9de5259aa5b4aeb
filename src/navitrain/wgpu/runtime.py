"""The wgpu runtime: one adapter, one device, one queue, and the recording of kernel dispatches.

Dispatches are recorded into a single open compute pass and submitted together at sync points (reading
data back, writing data in, a dispatch-count limit, `synchronize()`), because submitting each dispatch
on its own costs hundreds of microseconds. Pipelines and bind groups are cached; kernel parameters
(sizes, strides, offsets, scalars) go into one uniform "arena" buffer that is bound with a dynamic
offset, so a dispatch costs three native calls. Those calls go straight to wgpu-native through
wgpu-py's cffi handle where available: wgpu-py's Python wrappers cost ~12 us for a dynamic-offset
`set_bind_group` alone, a third of our whole per-op budget.

Everything here is guarded by one re-entrant lock: autograd runs backward ops on its own thread.

This file holds the Runtime class, its recording and submission path, and `runtime()`; the rest of the
runtime sits in plumbing modules of one job each: device_setup.py (adapter, features, limits),
kernel_cache.py, param_arena.py, graph_replay.py, transfers.py, gpu_timer.py and errors.py. The names
importers take from here (the errors, PARAM_WORDS, MAX_BUFFERS) are re-exported.
"""
from __future__ import annotations

import logging
import threading
import time

from navitrain import _env
from navitrain.wgpu.allocator import Block, CachingAllocator, Heap, OutOfMemory
from navitrain.wgpu.device_setup import choose_adapter, request_device
from navitrain.wgpu.dtypes import build_table
from navitrain.wgpu.errors import DeviceLostError, WgpuError
from navitrain.wgpu.errors import GraphCaptureError as GraphCaptureError  # re-exported
from navitrain.wgpu.errors import KernelCompileError as KernelCompileError  # re-exported
from navitrain.wgpu.gpu_timer import GpuTimer
from navitrain.wgpu.graph_replay import GraphReplay
from navitrain.wgpu.kernel_cache import Kernel, KernelCache
from navitrain.wgpu.native_submit import NativeSubmitter, native_api
from navitrain.wgpu.param_arena import MAX_BUFFERS as MAX_BUFFERS  # re-exported
from navitrain.wgpu.param_arena import PARAM_ARENA_BYTES, PARAM_BYTES, ParamArena
from navitrain.wgpu.param_arena import PARAM_WORDS as PARAM_WORDS  # re-exported
from navitrain.wgpu.transfers import Transfers

log = logging.getLogger("navitrain.wgpu")


def _raw_api():
    """wgpu-native's C functions through wgpu-py's cffi binding, or None."""
    try:
        from wgpu.backends.wgpu_native._api import ffi, lib

        lib.wgpuComputePassEncoderDispatchWorkgroups  # noqa: B018 - existence check
        return ffi, lib
    except Exception:  # pragma: no cover - other wgpu builds
        return None


class Runtime(KernelCache, ParamArena, GraphReplay, Transfers):
    """The device, its queue and the recording of dispatches. The kernel and bind group caches, the
    arena layout, graph replay and host transfers are methods of the mixins named above (one file each)."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        import wgpu

        self._wgpu = wgpu
        self.adapter, self.info, self.all_adapters = choose_adapter()
        self.device, self.features, self.limits_profile = request_device(self.adapter)
        self.queue = self.device.queue
        self.limits = dict(self.device.limits)
        self.stypes = build_table("shader-f16" in self.features, "shader-int64" in self.features,
                                  has_f64="shader-f64" in self.features)

        max_binding = int(self.limits["max-storage-buffer-binding-size"])
        max_binding = min(max_binding, int(self.limits["max-buffer-size"])) // 256 * 256
        heap = min(max_binding, (64 << 20) if self.info.software else (512 << 20))
        self.allocator = CachingAllocator(self._create_heap_buffer, self._destroy_heap_buffer, heap, max_binding,
                                          cap=_env.value(_env.WGPU_MEMORY_LIMIT))
        self.allocator.on_heap_freed = self._heap_freed

        self._raw = _raw_api()
        self._lib = self._raw[1] if self._raw else None
        self._param_align = max(PARAM_BYTES, int(self.limits.get("min-uniform-buffer-offset-alignment", 256)))
        usage = wgpu.BufferUsage
        # The arena also serves as a read-only storage "table" for kernels whose parameters outgrow 64
        # words (multi-tensor ops list every tensor's offset there).
        self._param_buffer = self.device.create_buffer(
            label="navitrain-params", size=PARAM_ARENA_BYTES, usage=usage.UNIFORM | usage.STORAGE | usage.COPY_DST)
        self._param_arena = bytearray(PARAM_ARENA_BYTES)
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
        self.compile_count = 0      # pipelines compiled, and the wall seconds spent compiling them (tuning's
        self.compile_seconds = 0.0  # share of a first step is read from these)
        self._collecting = threading.local()  # .pending: {key: how to build it} while this thread collects
        self.profile: dict | None = None  # kernel name -> [count, seconds] while profiling (profiling.py)
        self.profile_keys: list[str] = []  # while profiling: each dispatch's key in `profile`, in order
        self._timer = GpuTimer(self) if "timestamp-query" in self.features else None
        self.lost_reason: str | None = None
        self.capture = None  # the navitrain.wgpu.graphs.WgpuGraph being captured, if any
        # The op plan being recorded (op_plans.py), told of every dispatch, and of reads, writes and waits,
        # which no plan can repeat; and the plans made, by call (a new runtime starts with none).
        self.recorder = None
        self.plans: dict = {}
        self.plans_state = None  # what the plans were made under (op_plans._state)
        self.plans_seen: dict = {}  # calls met once, recorded when met again

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

    def _heap_freed(self, heap: Heap) -> None:
        """The allocator gave a heap back: its bind groups go, and so do the op plans (some may bind it)."""
        self._forget_heap(heap)
        self.plans.clear()

    def malloc(self, nbytes: int) -> Block:
        return self.allocator.malloc(nbytes)  # the allocator has its own lock

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
            if self.recorder is not None:   # an eager op's plan is being recorded (op_plans.py)
                self.recorder.dispatch(kernel, heaps, params, groups, table, rng_word)
            # (The common case, no table, is spelled out inline: this is every op's hot path.)
            need = self._param_align if table is None else self._arena_need(kernel, table)
            offset = self._param_used
            if offset + need > PARAM_ARENA_BYTES:
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
            # (_group_for, inlined: this is every dispatch)
            entry = self._bind_group(heaps, True) if kernel.table else \
                (self._bind_groups.get(heaps) or self._bind_group(heaps))
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

    def _group_for(self, kernel: Kernel, heaps: tuple[Heap, ...]):
        return self._bind_group(heaps, True) if kernel.table else \
            (self._bind_groups.get(heaps) or self._bind_group(heaps))

    def synchronize(self) -> None:
        """Submit pending work and wait until the GPU has finished it."""
        with self.lock:
            if self.recorder is not None:
                self.recorder.spoil("waits for the GPU")
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


_runtime: Runtime | None = None
_runtime_lock = threading.Lock()
_runtime_error: Exception | None = None


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
