"""Bytes read, bytes written and FLOPs per dispatch, for `navitrain.wgpu.profile()`.

A dispatch binds whole heaps (allocator slabs), so what it moves cannot be read off its bindings; the
aten op that issued it knows its tensors. While a profile is open or a graph is being captured, every
aten op on a wgpu tensor goes through `_traced_dispatch` (the class's entry point is swapped, so the
ordinary path carries no test at all), which gives the op's traffic to the dispatches it issued:

- traffic is compulsory traffic: the size of each tensor region the op reads (its tensor arguments,
  an in-place op's `self` too unless the op overwrites it without reading: copy_, fill_, zero_, the
  random fills) and of each region it writes (outputs, mutated arguments), each distinct region
  (storage, offset, sizes, strides) counted once, at the bytes its storage type takes in the buffer
  (bool and 8/16-bit integers are stored as 32-bit words). A broadcast dimension (stride 0) adds
  nothing; an operand counts whole even where the kernel touches part of it (a gather's table). What
  caches and re-reads add on top is not counted;
- FLOPs: PyTorch's own formulas for matrix products, convolutions and attention
  (torch.utils.flop_counter's registry); 1 per output element for ops PyTorch tags pointwise and for
  the `_foreach_*` list ops (a stated convention: a fused multiply-add is one); 0 where unknown;
- an op's traffic goes to the dispatches it issued itself: bytes split evenly among them (a conv's
  Winograd transforms and GEMMs share its bytes: per-kernel bandwidth of a multi-dispatch op is its
  average), FLOPs among its matrix-product and convolution kernels where it has any.
  Ops that a handler calls inside count their own, as decompositions do; an op that issued nothing
  (a view, an op whose inner ops did all the work) adds nothing. Kernels launched outside any aten op
  (the fused kernels of compiled graphs) report theirs with `note_traffic`.

Where it goes: while a graph is captured, into the graph (each recorded dispatch keeps its traffic, so
every replay adds it up again); otherwise into the open profile."""
from __future__ import annotations

import logging
from collections.abc import Iterable

import torch
from torch.utils.flop_counter import flop_registry

from navitrain.wgpu import dispatch as _dispatch
from navitrain.wgpu import runtime as _runtime_mod
from navitrain.wgpu.tensor import WgpuTensor

log = logging.getLogger("navitrain.wgpu")
aten = torch.ops.aten


class DispatchLog:
    """The traffic of each dispatch of one destination (a captured graph's records, an open profile's
    dispatches), aligned with `issued`, the list that grows by one per dispatch; None until given."""

    def __init__(self, issued: list) -> None:
        self.issued = issued
        self.traffic: list[tuple[int, int, int] | None] = []

    def pending(self, i: int) -> bool:
        return i >= len(self.traffic) or self.traffic[i] is None

    def give(self, indices: list[int], read: int, written: int, flops: int) -> None:
        """Split bytes evenly over the dispatches `indices`, FLOPs over their matrix-product and
        convolution kernels where there are any (a copy beside a GEMM computes nothing); remainders go
        to the first."""
        if not indices:
            return
        if len(self.traffic) <= indices[-1]:
            self.traffic.extend([None] * (indices[-1] + 1 - len(self.traffic)))
        computing = [i for i in indices if self._heavy(self.issued[i])] or indices
        (r, r0), (w, w0) = divmod(read, len(indices)), divmod(written, len(indices))
        f, f0 = divmod(flops, len(computing))
        for k, i in enumerate(indices):
            self.traffic[i] = (r + (r0 if k == 0 else 0), w + (w0 if k == 0 else 0), 0)
        for k, i in enumerate(computing):
            self.traffic[i] = self.traffic[i][:2] + (f + (f0 if k == 0 else 0),)

    @staticmethod
    def _heavy(dispatch) -> bool:
        """A matrix product or convolution: a captured record's kernel says so; an open profile's key
        is "name@grid" for those (Runtime._profile_key)."""
        return "@" in dispatch if isinstance(dispatch, str) else dispatch[0].heavy

    def __getitem__(self, i: int) -> tuple[int, int, int] | None:
        return self.traffic[i] if i < len(self.traffic) else None


# The open profile's log (profiling.py sets it); a captured graph's own log wins while capturing.
profile_log: DispatchLog | None = None


def current_log() -> DispatchLog | None:
    rt = _runtime_mod._runtime
    if rt is not None and rt.capture is not None:
        return rt.capture.traffic
    return profile_log


def update_tracing() -> None:
    """Trace aten ops while a profile is open or a graph is being captured, and only then."""
    _dispatch.trace_ops(_traced_dispatch if current_log() is not None else None)


def _traced_dispatch(cls, func, types, args=(), kwargs=None):
    dlog = current_log()
    if dlog is None:
        return _dispatch.torch_dispatch(cls, func, types, args, kwargs)
    start = len(dlog.issued)
    out = _dispatch.torch_dispatch(cls, func, types, args, kwargs)
    if len(dlog.issued) > start:
        # Ops called inside the handler have claimed theirs already; what is left is this op's own.
        own = [i for i in range(start, len(dlog.issued)) if dlog.pending(i)]
        if own:
            dlog.give(own, *op_traffic(func, args, kwargs or {}, out))
    return out


def mark() -> int | None:
    """Where the dispatches launched from now on will start, for `note_traffic(since=...)` (None while
    neither a profile is open nor a graph is being captured)."""
    dlog = current_log()
    return None if dlog is None else len(dlog.issued)


def note_traffic(reads: Iterable, writes: Iterable, flops: int = 0, since: int | None = None) -> None:
    """Give the tensors in `reads` and `writes` (their regions' bytes, as for an aten op) and `flops` to
    the dispatches launched since `since` (a `mark()` taken before launching them; None: the last
    dispatch only) that no aten op called in between has claimed. For kernels launched outside any aten
    op, such as the fused kernels of compiled graphs:

        start = traffic.mark()
        out = pointwise.run(...)
        traffic.note_traffic(inputs, (out,), flops=out.numel() * len(ops), since=start)

    Does nothing unless a profile is open or a graph is being captured."""
    dlog = current_log()
    if dlog is None:
        return
    end = len(dlog.issued)
    own = [i for i in range(end - 1 if since is None else since, end) if i >= 0 and dlog.pending(i)]
    if own:
        dlog.give(own, _region_bytes(_wgpu_tensors(reads)), _region_bytes(_wgpu_tensors(writes)), int(flops))


# -- what one aten call moves and computes ----------------------------------------------------------
# In-place ops that write `self` without reading it.
_OVERWRITES = frozenset({"copy_", "fill_", "zero_", "uniform_", "normal_", "random_", "exponential_",
                         "geometric_", "log_normal_", "cauchy_", "bernoulli_"})
# Pointwise-tagged ops that only move data: no FLOPs.
_MOVES = frozenset({"clone", "_to_copy", "copy", "copy_", "lift_fresh_copy", "alias_copy"})


def op_traffic(func, args, kwargs, out) -> tuple[int, int, int]:
    """(bytes read, bytes written, FLOPs) of one aten call (see the module docstring)."""
    name = func.overloadpacket.__name__
    reads, writes = [], []
    for i, arg in enumerate(func._schema.arguments):
        value = args[i] if i < len(args) and not arg.kwarg_only else kwargs.get(arg.name)
        tensors = _wgpu_tensors(value if isinstance(value, (list, tuple)) else (value,))
        if not tensors:
            continue
        mutated = arg.alias_info is not None and arg.alias_info.is_write
        if mutated:
            writes += tensors
        if not mutated or not (arg.kwarg_only or name in _OVERWRITES):  # out= arguments are only written
            reads += tensors
    outputs = _wgpu_tensors(_flatten(out))
    writes += outputs
    return _region_bytes(reads), _region_bytes(writes), _flops(func, name, args, kwargs, out, writes)


def _flops(func, name, args, kwargs, out, written) -> int:
    formula = flop_registry.get(func.overloadpacket)
    if formula is not None:
        try:
            return int(formula(*args, out_val=out, **kwargs))
        except Exception as exc:  # an argument form the formula does not take: unknown, not invented
            log.debug("no FLOP count for %s: %s", func, exc)
            return 0
    if (torch.Tag.pointwise in func.tags and name not in _MOVES) or name.startswith("_foreach_"):
        return _elements(written)
    return 0


def _flatten(value) -> list:
    if isinstance(value, (list, tuple)):
        return [x for v in value for x in _flatten(v)]
    return [value]


def _wgpu_tensors(values) -> list:
    return [v for v in values if isinstance(v, WgpuTensor)]


def _distinct(t: WgpuTensor) -> int:
    """Distinct elements a view covers: broadcast (stride-0) dimensions repeat the same ones."""
    n = 1
    for size, stride in zip(t.shape, t.stride()):
        if size == 0:
            return 0
        if stride != 0:
            n *= size
    return n


def _region_bytes(tensors: list) -> int:
    seen, total = set(), 0
    for t in tensors:
        ws = t._ws
        key = (id(ws.block), t.elem_offset * ws.stype.itemsize, tuple(t.shape), t.stride(), ws.stype.itemsize)
        if key not in seen:
            seen.add(key)
            total += _distinct(t) * ws.stype.itemsize
    return total


def _elements(tensors: list) -> int:
    seen, total = set(), 0
    for t in tensors:
        key = (id(t._ws.block), t.elem_offset, tuple(t.shape), t.stride())
        if key not in seen:
            seen.add(key)
            total += t.numel()
    return total
