"""Eager ops repeated from plans: an op called again with the same arguments, at the same addresses, does what
its handler did the time before without running the handler's Python.

Why: an eager step on a fast GPU is host-bound, and most of the host's time is in a few handlers that work out
the same answer every step. A convolution's handler spends ~250 us choosing a formulation and a tile, building
its kernel's description and packing parameter words; a batch norm's ~140 us; a training step repeats both
dozens of times with the same shapes. What a handler does is decided by its arguments (each tensor's geometry,
dtype and address; every other argument's value), the grad and inference modes, and the NAVITRAIN_* variables
it reads. Given those it allocates the same blocks (the allocator hands out a size class's lowest free address,
so a step's allocations repeat) and records the same dispatches. A plan is that record: the allocations and
frees in order, the dispatches (kernel, heaps, parameter bytes, grid), and how the outputs are made from the
blocks and the arguments.

A call becomes a plan only if it did nothing a plan could not repeat: no reads of device data, no uploads, no
waiting for the GPU (the tuner timing its candidates), no random numbers, no freeing of memory it did not
allocate, no block kept that is not returned, nothing from another thread. A repeat checks every allocation
lands where it was recorded before it dispatches anything; where one does not, the handler runs and its call
becomes another plan for the same key. A key keeps a plan per place its first allocation landed (up to
PLANS_PER_KEY), and the place the allocator would hand out now picks the one to repeat: one call may put its
output in several places in turn (a GPT's layers call one clone with the same arguments, each output kept for
backward; `loss = step()` keeps the last loss alive while the next is made). Only ops in
PLANNED_NAMES are planned: their handlers were read for other inputs (`requires_grad`, autograd inside a
handler, host values) that the key does not hold. A key is recorded the second time it is met, so calls whose
key never repeats (a float argument that changes every step: a non-capturable Adam's bias corrections) cost no
recording and keep no plan; keys are plain tuples of numbers, which the cyclic GC stops tracking.

NAVITRAIN_WGPU_PLANS=0 runs every handler; =verify runs the handler on every repeat as well and raises where
it did anything other than the plan (the test suite's check of all of the above).
"""
from __future__ import annotations

import os
import threading
from collections import Counter

import torch

from navitrain import _env
from navitrain.wgpu.tensor import WgpuStorage, WgpuTensor, wrap

aten = torch.ops.aten

# Handlers that are functions of the plan key alone (see above), by aten name; and every `_foreach_*` op (an
# optimizer's update). Ops that draw random numbers or read the host are left out: they could never repeat.
PLANNED_NAMES = frozenset({
    # convolutions, normalisations, matrix products: the handlers that work out the most per call
    "convolution", "convolution_backward",
    "native_batch_norm", "native_batch_norm_backward", "_native_batch_norm_legit",
    "_native_batch_norm_legit_no_training", "_batch_norm_with_update", "batch_norm_backward",
    "native_layer_norm", "native_layer_norm_backward", "native_group_norm", "native_group_norm_backward",
    "mm", "addmm", "bmm", "baddbmm",
    # losses, softmax, embeddings, reductions, concatenation
    "_softmax", "_log_softmax", "_softmax_backward_data", "_log_softmax_backward_data",
    "nll_loss_forward", "nll_loss_backward", "nll_loss2d_forward", "nll_loss2d_backward",
    "embedding", "embedding_dense_backward", "sum", "mean", "cat",
    "max_pool2d_with_indices", "max_pool2d_with_indices_backward", "avg_pool2d", "avg_pool2d_backward",
    "_adaptive_avg_pool2d", "_adaptive_avg_pool2d_backward",
    # the elementwise ops a training step is made of
    "add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_", "neg", "clone", "copy_", "_to_copy", "where",
    "relu", "relu_", "threshold_backward", "hardswish", "hardswish_", "hardswish_backward", "hardsigmoid",
    "hardsigmoid_", "hardsigmoid_backward", "silu", "silu_", "silu_backward", "sigmoid", "sigmoid_backward",
    "gelu", "gelu_backward", "tanh", "tanh_backward", "exp", "log", "sqrt", "rsqrt", "pow", "masked_fill",
    "masked_fill_", "fill_", "zero_", "addcmul", "addcdiv", "lerp",
})


def plannable(func) -> bool:
    """An aten op named above (another library's op of the same name runs that library's code: never planned)."""
    namespace, _, name = func._schema.name.partition("::")
    return namespace == "aten" and (name in PLANNED_NAMES or name.startswith("_foreach_"))


# How calls of planned ops went: "repeated" from a plan, "recorded" (a plan made), "unplannable" (why, by
# reason), "moved" (a plan whose allocations landed elsewhere: the handler ran).
stats: Counter = Counter()
MAX_PLANS = 8192       # a step holds a few hundred to a few thousand; past this the table starts again
MAX_SEEN = 4096        # keys met once (not recorded yet) remembered at most
PLANS_PER_KEY = 64     # places kept per key: where its first allocation landed (PlanSet)
PLANS_PER_PLACE = 4    # plans kept per place: their later allocations land elsewhere
_MALLOC, _FREE = 0, 1
# Values that are their own key. Numbers are keyed with their type (1, 1.0 and True are equal, and hash alike, but
# add an integer tensor to 1 and to 1.0 and the results differ in dtype) and floats by their bits (0.0 == -0.0).
_AS_IS = frozenset({type(None), str, torch.dtype, torch.layout, torch.memory_format})
_SCALARS = _AS_IS | {int, float, bool, torch.device}   # what a handler may return besides tensors


class _NoKey(Exception):
    """An argument a plan cannot be keyed by (a CPU tensor, whose value a handler may read)."""


def _describe(a):
    t = type(a)
    if t is WgpuTensor:
        ws = a._ws
        return ws.heap.index, ws.base + a.storage_offset(), tuple(a.shape), a.stride(), a.dtype
    if t is float:
        return 1, a.hex()
    if t is int or t is bool:
        return t is bool, a
    if t in _AS_IS:
        return a
    if t is torch.device and a.type != "cpu":   # (a copy to the host reads the device: never repeatable)
        return a
    if t is list or t is tuple:
        return tuple([_describe(v) for v in a])
    raise _NoKey


def _key(func, args, kwargs):
    """The plan's key: everything the handler's work depends on (see above), or None."""
    key = [id(func), torch.is_grad_enabled(), torch.is_inference_mode_enabled(), torch.get_default_dtype()]
    append = key.append
    try:
        # (Spelled out for the common argument types: this runs on every call of a planned op.)
        for a in args:
            t = type(a)
            if t is WgpuTensor:
                ws = a._ws
                append((ws.heap.index, ws.base + a.storage_offset(), tuple(a.shape), a.stride(), a.dtype))
            elif t is list:   # (stride, padding: integers, as they are)
                for v in a:
                    if type(v) is not int:
                        append(_describe(a))
                        break
                else:
                    append(tuple(a))
            else:
                append(_describe(a))
        if kwargs:
            for k, v in kwargs.items():
                append(k)
                append(_describe(v))
    except _NoKey:
        return None
    return tuple(key)


class _Spoiled(Exception):
    pass


class Recorder:
    """What one handler call does, as the runtime and the allocator report it (their `recorder`)."""

    def __init__(self) -> None:
        self.thread = threading.get_ident()
        self.memory: list[tuple] = []        # (_MALLOC, nbytes, heap index, offset) / (_FREE, k)
        self.blocks: list = []               # the k-th allocated block (kept: their ids stay unique)
        self.index: dict[int, int] = {}      # id(block) -> k
        self.freed: set[int] = set()
        self.dispatches: list[tuple] = []    # (kernel, heaps, params, groups, table)
        self.spoiled: str | None = None

    def spoil(self, why: str) -> None:
        if self.spoiled is None:
            self.spoiled = why

    def _foreign(self) -> bool:
        if threading.get_ident() != self.thread:
            self.spoil("another thread used the device")
            return True
        return False

    def malloc(self, nbytes: int, block) -> None:
        if self._foreign():
            return
        self.index[id(block)] = len(self.blocks)
        self.blocks.append(block)
        self.memory.append((_MALLOC, nbytes, block.heap.index, block.offset))

    def free(self, block) -> None:
        if self._foreign():
            return
        k = self.index.get(id(block))
        if k is None:
            self.spoil("freed memory it did not allocate")
            return
        self.freed.add(k)
        self.memory.append((_FREE, k))

    def dispatch(self, kernel, heaps, params, groups, table, rng_word) -> None:
        if self._foreign():
            return
        if rng_word is not None:
            self.spoil("draws random numbers")
            return
        self.dispatches.append((kernel, heaps, bytes(params), groups, None if table is None else bytes(table)))


class Plan:
    __slots__ = ("memory", "dispatches", "storages", "outputs", "env")

    def __init__(self, memory, dispatches, storages, outputs, env):
        self.memory = memory          # the allocations and frees, in order
        self.dispatches = dispatches
        self.storages = storages      # (k, storage type, elements): a storage over the k-th block per output
        self.outputs = outputs        # (container type or None, leaves): how to build the result
        self.env = env                # ((name, raw text), ...) read by the handler

    def same_work(self, other: Plan) -> bool:
        return (self.memory == other.memory and self.dispatches == other.dispatches and self.storages ==
                other.storages and self.outputs == other.outputs and self.env == other.env)


class PlanSet:
    """A key's plans, by the place their first allocation landed. Every plan of a key comes from the same handler
    with the same arguments, so its allocations have the same sizes in the same order: where the allocator would
    put the first one now (Allocator.next_place) names the plans to try, whatever the number of places. Plans
    whose first allocation shares a place (a later one differs) are tried in turn, least recently repeated first.
    (Were a plan's first allocation of another size, it would not be found; a repeat checks every allocation.)"""

    __slots__ = ("first", "by_place")

    def __init__(self, plan: Plan):
        first = _first_malloc(plan)
        self.first = None if first is None else first[1]   # bytes of the first allocation (None: none made)
        self.by_place: dict = {}      # (heap index, offset) of the first allocation, or None -> [Plan, ...]

    def find(self, allocator) -> list:
        place = None if self.first is None else allocator.next_place(self.first)
        return self.by_place.get(place, ())

    def add(self, plan: Plan) -> None:
        """Keep `plan`: the oldest place goes past PLANS_PER_KEY, the oldest plan of a place past PLANS_PER_PLACE."""
        first = _first_malloc(plan)
        place = None if first is None else (first[2], first[3])
        places = self.by_place
        same = places.get(place)
        if same is None:
            if len(places) >= PLANS_PER_KEY:
                del places[next(iter(places))]
            same = places[place] = []
        elif len(same) >= PLANS_PER_PLACE:
            del same[0]
        same.append(plan)


def _first_malloc(plan: Plan) -> tuple | None:
    """The plan's first allocation, (_MALLOC, bytes, heap index, offset), or None (a plan frees only what it
    allocated, so its first memory event, if any, is an allocation)."""
    return plan.memory[0] if plan.memory else None


def _geometry(t: WgpuTensor) -> tuple:
    return tuple(t.shape), t.stride(), t.storage_offset(), t.dtype


def _leaf(v, args, rec: Recorder, storages: dict):
    """How to make output `v` again: ("const", v), ("arg", i) (the argument itself), ("on_arg", i, geometry)
    (a view of argument i's storage) or ("new", storage number, geometry)."""
    if not isinstance(v, torch.Tensor):
        if type(v) not in _SCALARS:
            raise _Spoiled("returns something other than tensors and numbers")
        return ("const", v)
    if type(v) is not WgpuTensor:
        raise _Spoiled("returns a tensor of another device")
    for i, a in enumerate(args):
        if a is v:
            return ("arg", i)
    ws = v._ws
    for i, a in enumerate(args):
        if type(a) is WgpuTensor and a._ws is ws:
            return ("on_arg", i, _geometry(v))
    k = rec.index.get(id(ws.block))
    if type(ws) is not WgpuStorage or k is None or k in rec.freed:
        raise _Spoiled("returns memory it did not allocate")
    number = storages.get(id(ws))
    if number is None:
        if any(entry[1] == k for entry in storages.values()):
            raise _Spoiled("returns two storages of one block")
        number = storages[id(ws)] = (len(storages), k, ws.stype, ws.nelem)
    return ("new", number[0], _geometry(v))


def _make_plan(rec: Recorder, out, args, env: dict) -> Plan:
    if rec.spoiled is not None:
        raise _Spoiled(rec.spoiled)
    storages: dict[int, tuple] = {}
    if type(out) in (tuple, list):
        outputs = (type(out), tuple(_leaf(v, args, rec, storages) for v in out))
    else:
        outputs = (None, (_leaf(out, args, rec, storages),))
    returned = {entry[1] for entry in storages.values()}
    if any(k not in rec.freed and k not in returned for k in range(len(rec.blocks))):
        raise _Spoiled("keeps memory it does not return")
    ordered = tuple((k, stype, nelem) for _, k, stype, nelem in sorted(storages.values(), key=lambda e: e[0]))
    return Plan(tuple(rec.memory), tuple(rec.dispatches), ordered, outputs, tuple(env.items()))


def _record(rt, handler, args, kwargs):
    """Run the handler with the runtime, the allocator and the environment reporting to a Recorder: (its
    result, the plan of that call or None)."""
    rec = Recorder()
    env: dict = {}
    rt.recorder = rt.allocator.recorder = rec
    _env.watch = env
    try:
        out = handler(*args, **kwargs) if kwargs else handler(*args)
    finally:
        rt.recorder = rt.allocator.recorder = None
        _env.watch = None
    try:
        return out, _make_plan(rec, out, args, env)
    except _Spoiled as why:
        stats[f"unplannable: {why}"] += 1
        return out, None


_NOT_REPEATED = object()   # (an op's result may itself be None: in-place list ops return nothing)


def _replay(rt, plan: Plan, args):
    """The plan's work and outputs, or _NOT_REPEATED (nothing done) where an allocation lands elsewhere or a
    setting the handler read has changed."""
    for name, text in plan.env:
        if os.environ.get(name) != text:
            return _NOT_REPEATED
    allocator = rt.allocator
    with rt.lock:
        blocks = []
        for event in plan.memory:
            if event[0] == _MALLOC:
                block = allocator.malloc(event[1])
                blocks.append(block)
                if block.offset != event[3] or block.heap.index != event[2]:
                    for b in reversed(blocks):
                        allocator.free(b)
                    return _NOT_REPEATED
            else:
                allocator.free(blocks[event[1]])
        # (Dispatched after the allocations are known to match, under the runtime's lock: a block freed above
        # goes to no other thread's kernel before these read or write it.)
        dispatch = rt.dispatch
        for kernel, heaps, params, groups, table in plan.dispatches:
            dispatch(kernel, heaps, params, groups, table)
    made = [WgpuStorage(blocks[k], stype, nelem) for k, stype, nelem in plan.storages]
    kind, leaves = plan.outputs
    out = []
    for leaf in leaves:
        how = leaf[0]
        if how == "new":
            shape, stride, offset, dtype = leaf[2]
            out.append(wrap(made[leaf[1]], shape, stride, offset, dtype))
        elif how == "arg":
            out.append(args[leaf[1]])
        elif how == "on_arg":
            shape, stride, offset, dtype = leaf[2]
            out.append(wrap(args[leaf[1]]._ws, shape, stride, offset, dtype))
        else:
            out.append(leaf[1])
    return out[0] if kind is None else kind(out)


# What handlers decide by besides their arguments: each probe returns a value that changes when that does (the
# tuner's remembered answers and tile cache register one: kernels/gemm_tuning.py). Plans made under other values
# are dropped, as are plans made before a kernel was compiled or the cache of kernels cleared.
_probes: list = []


def depends_on(probe) -> None:
    """Drop every plan whenever `probe()` returns another value (compared with ==: keep it cheap)."""
    _probes.append(probe)


def _state(rt) -> tuple:
    return (len(rt._kernels), rt.compile_count, *[probe() for probe in _probes])


def mode() -> str:
    """NAVITRAIN_WGPU_PLANS: "1", "0" or "verify", read on every call (tests switch it)."""
    return _env.value_on_hot_path(_env.WGPU_PLANS)


def run(rt, func, handler, args, kwargs):
    """Call `handler` for `func`, or repeat one of its plans for these arguments."""
    mode_now = mode()
    if mode_now == "0" or rt.recorder is not None or rt.capture is not None or rt.profile is not None:
        # Off; inside another op's recording (its work is part of that plan); or capturing a graph or profiling,
        # whose own bookkeeping sees each dispatch.
        return handler(*args, **kwargs) if kwargs else handler(*args)
    key = _key(func, args, kwargs)
    if key is None:
        return handler(*args, **kwargs) if kwargs else handler(*args)
    plans = rt.plans
    state = _state(rt)
    if state != rt.plans_state:
        plans.clear()
        rt.plans_state = state
    known = plans.get(key)
    if known is not None:
        if mode_now == "verify":
            return _verify(rt, func, known, handler, args, kwargs, key)
        same = known.find(rt.allocator)
        for i, plan in enumerate(same):
            out = _replay(rt, plan, args)
            if out is not _NOT_REPEATED:
                stats["repeated"] += 1
                if i != len(same) - 1:
                    same.append(same.pop(i))   # (the others are tried first next time: they come round in turn)
                return out
        stats["moved"] += 1
    else:
        # A key is recorded the second time it is met: calls whose key never comes back (a float argument that
        # changes every step) then cost no recording and keep no plan. What was met once is forgotten in bulk.
        seen = rt.plans_seen
        if key not in seen:
            if len(seen) >= MAX_SEEN:
                seen.clear()
            seen[key] = None
            return handler(*args, **kwargs) if kwargs else handler(*args)
        del seen[key]
    out, plan = _record(rt, handler, args, kwargs)
    if plan is not None and _state(rt) == state:   # (a call that compiled a kernel is recorded next time)
        stats["recorded"] += 1
        if known is None:
            if len(plans) >= MAX_PLANS:
                plans.clear()
            known = plans[key] = PlanSet(plan)
        known.add(plan)
    return out


class PlanMismatch(RuntimeError):
    """NAVITRAIN_WGPU_PLANS=verify: a handler did other work than its plan for the same key."""


def _verify(rt, func, known: PlanSet, handler, args, kwargs, key):
    """Run the handler where a plan would have been repeated, and compare with the plan it would have repeated.
    (A repeat whose allocations land elsewhere, or under other NAVITRAIN_* values, runs the handler anyway: only
    the same memory and environment must give the same work. A call may also not be plannable now, as when the
    tuner's cache was cleared.)"""
    same = list(known.find(rt.allocator))
    out, fresh = _record(rt, handler, args, kwargs)
    if fresh is None:
        rt.plans.pop(key, None)
        return out
    for plan in same:
        if fresh.memory == plan.memory and fresh.env == plan.env:
            if not fresh.same_work(plan):
                raise PlanMismatch(f"{func}: the handler did other work than its plan for the same arguments")
            return out
    known.add(fresh)
    return out
