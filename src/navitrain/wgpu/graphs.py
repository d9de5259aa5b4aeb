"""Captured graphs: record the GPU work of a step once, then replay it without running Python.

Why: in eager mode every aten op costs tens of microseconds of host time (PyTorch's dispatch of a
Python tensor subclass, then navitrain choosing and recording a kernel). A GPT training step is about
900 aten ops, so on a fast GPU the host, not the GPU, sets the pace. A step that runs the same ops on
the same shapes every time can be captured instead, as with `torch.cuda.CUDAGraph`:

    g = navitrain.wgpu.WgpuGraph()
    static_x, static_y = x0.to("wgpu"), y0.to("wgpu")
    for _ in range(3):                      # warm up eagerly first: kernels compile, tiles get tuned
        step(static_x, static_y)
    with navitrain.wgpu.graph(g):           # records the dispatches; nothing runs yet
        static_loss = step(static_x, static_y)
    for x, y in batches:
        static_x.copy_(x); static_y.copy_(y)   # new data into the same tensors
        g.replay()                             # the whole step: a few submissions, no Python per op
        print(static_loss.item())

Rules (each broken one raises GraphCaptureError or is the caller's to keep, as with CUDA graphs):
- Capture records and does not run: results appear after the first replay().
- No host reads or writes inside the capture (.item(), printing, .to("wgpu") of CPU data, an op that
  falls back to the CPU); copy inputs into static tensors before replay() and read outputs after.
- Everything is replayed with the shapes, tensors and Python-side numbers seen during capture. Values
  computed on the host during capture are frozen: use optimizers with `capturable=True` (Adam/AdamW
  then keep their step count on the GPU) and keep the learning rate fixed or in a tensor.
- Random ops (dropout, ...) draw fresh numbers on every replay: each replay reserves the counters an
  eager step would, and the captured random dispatches get the current seed and those counters.
- Tensors the graph reads that were made before capture (parameters, optimizer state, static inputs)
  must stay alive while the graph is replayed; memory the graph allocates stays reserved to it until
  `reset()`.
"""
from __future__ import annotations

import contextlib

import torch

from navitrain.wgpu import process_device, rng, traffic
from navitrain.wgpu import runtime as runtime_mod
from navitrain.wgpu.allocator import GraphPool
from navitrain.wgpu.runtime import GraphCaptureError, runtime


class WgpuGraph:
    """A captured sequence of dispatches (see the module docstring)."""

    def __init__(self) -> None:
        self._records: list = []
        self.traffic = traffic.DispatchLog(self._records)  # bytes and FLOPs of each record, for profile()
        self._chunks: list | None = None
        self._pool: GraphPool | None = None
        self._pinned: list = []
        self._rng_start = (0, 0)
        self._rng_span = 0

    # -- capture ------------------------------------------------------------------------------
    def capture_begin(self) -> None:
        rt = runtime()
        if rt.capture is not None:
            raise GraphCaptureError("a graph is already being captured; captures cannot nest")
        self.reset()
        rt.synchronize()  # eager work recorded before the capture runs first, on its own
        self._pool = GraphPool()
        self._rng_start = rng.position()
        rt.allocator.capturing = self._pool
        rt.capture = self
        traffic.update_tracing()  # each op's traffic goes with its records (a capture is done once)

    def record(self, kernel, heaps, params, table, groups, rng_word=None) -> None:
        """Called by the runtime, under its lock, for each dispatch while capturing."""
        self._records.append((kernel, heaps, bytes(params), None if table is None else bytes(table), groups,
                              rng_word))

    def capture_end(self) -> None:
        rt = runtime()
        if rt.capture is not self:
            raise GraphCaptureError("capture_end() without a matching capture_begin()")
        rt.capture = None
        rt.allocator.capturing = None
        traffic.update_tracing()
        # Random ops reserved counters while being recorded; nothing ran, so give them back: the first
        # replay then draws what an eager step would have drawn here.
        seed, start = self._rng_start
        now_seed, end = rng.position()
        self._rng_span = end - start if now_seed == seed else 0
        if self._rng_span:
            rng.rewind(start)
        heaps = {id(h): h for record in self._records for h in record[1]}
        for heap in heaps.values():
            heap.pins += 1
        self._pinned = list(heaps.values())
        self._chunks = rt.pack_replay(self._records)

    def abort(self) -> None:
        """End a capture that failed: nothing is kept."""
        rt = runtime()
        if rt.capture is self:
            rt.capture = None
            traffic.update_tracing()
        self.reset()

    # -- use ----------------------------------------------------------------------------------
    @property
    def dispatch_count(self) -> int:
        return len(self._records)

    def replay(self) -> None:
        if self._chunks is None:
            raise GraphCaptureError("replay() needs a finished capture (use `with navitrain.wgpu.graph(g):`)")
        renew = None
        if self._rng_span:
            seed, base = rng.reserve(self._rng_span)  # fresh counters for this replay's random ops
            renew = (seed, base - self._rng_start[1])
        rt = runtime()
        if rt.profile is not None and rt.capture is None:
            self._replay_profiled(rt, renew)
        else:
            rt.replay(self._chunks, renew)

    def _replay_profiled(self, rt, renew: tuple[int, int] | None) -> None:
        """Inside navitrain.wgpu.profile(): the records dispatched one by one as eager work is, so each is
        timed, with the traffic captured with it."""
        dlog = traffic.profile_log
        for i, (kernel, heaps, params, table, groups, rng_word) in enumerate(self._records):
            if renew is not None and rng_word is not None:
                seed, shift = renew  # as Runtime.replay patches the packed blocks
                at = 4 * rng_word
                captured = int.from_bytes(params[at + 8:at + 16], "little")
                params = params[:at] + (seed | ((captured + shift) << 64)).to_bytes(16, "little") + params[at + 16:]
            rt.dispatch(kernel, heaps, params, groups, table)
            recorded = self.traffic[i]
            if recorded is not None and dlog is not None:
                dlog.give([len(dlog.issued) - 1], *recorded)

    def reset(self) -> None:
        """Forget the captured work and give its memory back."""
        rt = runtime_mod._runtime
        if rt is not None and self._pool is not None:
            rt.allocator.release_pool(self._pool)
        for heap in self._pinned:
            heap.pins -= 1
        self._pinned = []
        self._pool = None
        self._records = []
        self.traffic = traffic.DispatchLog(self._records)
        self._chunks = None

    def __del__(self):
        try:
            self.reset()
        except Exception:  # interpreter shutdown
            pass


def is_capturing() -> bool:
    return runtime_mod._runtime is not None and runtime_mod._runtime.capture is not None


@contextlib.contextmanager
def graph(g: WgpuGraph):
    """Capture the wgpu work done inside the block into `g` (recorded, not run)."""
    g.capture_begin()
    try:
        yield g
    except BaseException:
        g.abort()
        raise
    g.capture_end()


class GraphedStep:
    """A step function that runs eagerly for its first `warmup` calls, is captured on the next one and
    replayed from then on (see `graphed`)."""

    def __init__(self, fn, warmup: int = 3):
        if warmup < 1:
            raise ValueError("graphed(): warmup must be at least 1 (kernels compile and tiles are tuned then)")
        self.fn = fn
        self.warmup = warmup
        self.calls = 0
        self.eager_calls = 0     # calls that ran eagerly after capture (inputs of another shape)
        self.graph: WgpuGraph | None = None
        self._static: list | None = None
        self._signature = None
        self._out = None

    @staticmethod
    def _describe(args) -> tuple:
        """(shapes and dtypes of the tensor arguments, the other arguments)."""
        tensors = tuple((tuple(a.shape), a.dtype) for a in args if isinstance(a, torch.Tensor))
        return tensors, tuple(a for a in args if not isinstance(a, torch.Tensor))

    def _load(self, args) -> list:
        """The static inputs, holding this call's data."""
        if self._static is None:
            self._static = [a.detach().to(process_device.CURRENT, copy=True) if isinstance(a, torch.Tensor) else a
                            for a in args]
        else:
            for static, a in zip(self._static, args):
                if isinstance(a, torch.Tensor):
                    static.copy_(a.detach())
        return self._static

    def __call__(self, *args):
        tensors, values = self._describe(args)
        if self._signature is None:
            self._signature = (tensors, values)
        if values != self._signature[1]:
            raise GraphCaptureError(
                f"graphed(): non-tensor arguments changed from {self._signature[1]} to {values}; a captured "
                "step replays the values it was captured with. Pass them as tensors, or keep them fixed")
        if tensors != self._signature[0]:
            # Another shape (a short last batch, say): run this call eagerly, leave the graph alone.
            self.eager_calls += 1
            return self.fn(*(a.to(process_device.CURRENT) if isinstance(a, torch.Tensor) else a for a in args))
        static = self._load(args)
        self.calls += 1
        if self.calls <= self.warmup:
            return self.fn(*static)
        if self.graph is None:
            self.graph = WgpuGraph()
            with graph(self.graph):
                self._out = self.fn(*static)
        self.graph.replay()
        return self._out


def graphed(fn=None, *, warmup: int = 3):
    """Wrap a training-step function so that it runs as a captured graph after `warmup` eager calls:

        step = navitrain.wgpu.graphed(train_step)
        for x, y in loader:
            loss = step(x, y)          # x, y may live on the CPU: they are copied into static inputs

    The step's tensor arguments are copied into static wgpu tensors each call; the tensors it returns
    are the graph's outputs, overwritten by the next call (read or clone them before then). A call
    whose tensor shapes differ from the first call's (a short last batch) runs eagerly. The rules of
    WgpuGraph apply: no reads inside, `capturable=True` optimizers."""
    if fn is None:
        return lambda f: GraphedStep(f, warmup)
    return GraphedStep(fn, warmup)
