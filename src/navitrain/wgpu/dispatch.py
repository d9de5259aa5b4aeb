"""Where every aten op on a wgpu tensor goes: a kernel, a decomposition, or the counted CPU fallback.

1. The op table: `@implements(aten.add.Tensor, ...)` registers a handler with exactly the aten signature.
2. Decompositions: an op without a handler but with a PyTorch decomposition (torch._decomp) is rewritten
   into ops that, in turn, reach the table. Counted separately: they stay on the GPU.
3. The CPU fallback: the op runs on CPU copies of its inputs; mutated arguments are written back and
   outputs come back to the device, so results are exactly the CPU's. Every call is counted per op and
   warned about once per op (`fallback_report()`); with NAVITRAIN_WGPU_STRICT=1 it raises instead.
   Ops that return views cannot fall back (the result would not alias its input): they raise.
"""
from __future__ import annotations

import logging
import threading
import warnings
from collections import Counter
from typing import Callable

import torch
from torch.utils._pytree import tree_flatten, tree_unflatten

from navitrain import _env
from navitrain.wgpu import op_plans
from navitrain.wgpu import runtime as _rt_mod
from navitrain.wgpu.dtypes import NoKernelForDtype
from navitrain.wgpu.tensor import DEVICE, WgpuTensor, empty, from_cpu, to_cpu, wrap

log = logging.getLogger("navitrain.wgpu")
aten = torch.ops.aten

class _OpTable(dict):
    """A dict of aten overload -> function that drops the dispatcher's cached routes whenever it changes
    (registration, and tests or modules that swap a handler in place: `OPS[op] = fn`)."""

    def __setitem__(self, key, value):
        super().__setitem__(key, value)
        _ROUTES.clear()

    def __delitem__(self, key):
        super().__delitem__(key)
        _ROUTES.clear()

    def _changed(method):
        def changing(self, *args, **kwargs):
            try:
                return method(self, *args, **kwargs)
            finally:
                _ROUTES.clear()
        changing.__name__ = method.__name__
        return changing

    update = _changed(dict.update)
    pop = _changed(dict.pop)
    popitem = _changed(dict.popitem)
    clear = _changed(dict.clear)
    setdefault = _changed(dict.setdefault)
    del _changed


OPS: dict[object, Callable] = _OpTable()
fallback_counts: Counter = Counter()
decomposed_counts: Counter = Counter()
_warned: set[str] = set()
_local = threading.local()


class FallbackForbidden(NotImplementedError):
    """An op had no wgpu kernel while NAVITRAIN_WGPU_STRICT=1."""


# -- the kernels this module runs --------------------------------------------------------------
# The CPU fallback writes results back into device views of any layout, and an op that fails inside
# backward leaves NaN-filled outputs: both take kernels (navitrain.wgpu.kernels.copy), which sit above
# this module and import it. The facade hands them over with use_copy_engine() before any op runs.
_fill: Callable | None = None
_upload_into: Callable | None = None


def use_copy_engine(fill: Callable, upload_into: Callable) -> None:
    """`fill(x, value)` sets every element of a device tensor; `upload_into(dst, cpu)` writes CPU values
    into a device view of any layout."""
    global _fill, _upload_into
    _fill, _upload_into = fill, upload_into


def implements(*ops):
    """Register the decorated function as the handler of each aten overload in `ops`."""
    def deco(fn):
        for op in ops:
            if isinstance(op, torch._ops.OpOverloadPacket):
                raise TypeError(f"register overloads explicitly, not the packet {op}")
            if op in OPS and OPS[op] is not fn:
                raise RuntimeError(f"{op} is registered twice ({OPS[op].__qualname__} and {fn.__qualname__})")
            OPS[op] = fn
        return fn
    return deco


# Handlers for complex64 operands of ops whose OPS handler computes in real dtypes only (add, copy_, sum,
# ...): consulted first when an argument is complex, so the real hot path pays one set lookup.
COMPLEX_OPS: dict[object, Callable] = _OpTable()


def implements_complex(*ops):
    """Register the decorated function for calls of each aten overload in `ops` with a complex argument
    (a complex tensor, Python complex or dtype= keyword); it may return NotImplemented (complex128)."""
    def deco(fn):
        for op in ops:
            if op in COMPLEX_OPS and COMPLEX_OPS[op] is not fn:
                raise RuntimeError(f"{op} has two complex handlers")
            COMPLEX_OPS[op] = fn
        return fn
    return deco


def _has_complex(args, kwargs) -> bool:
    for a in args:
        if (isinstance(a, torch.Tensor) and a.dtype.is_complex) or type(a) is complex:
            return True
    if kwargs:
        for a in kwargs.values():
            if (isinstance(a, torch.Tensor) and a.dtype.is_complex) or type(a) is complex or \
                    (isinstance(a, torch.dtype) and a.is_complex):
                return True
    return False


# Per overload, what torch_dispatch needs to know about it: (handler or None, whether it may mix devices,
# complex handler or None, the overload itself). Keyed by id(func): an OpOverload's __hash__ is a Python
# function, and three lookups by the overload cost a microsecond an op. The entry holds the overload, so
# its id cannot be reused while the entry lives. Cleared whenever OPS, COMPLEX_OPS or
# _MIXED_DEVICES_OK change (_OpTable, _MixedDevicesOk).
_ROUTES: dict[int, tuple] = {}


def _returns_view(func) -> bool:
    return any(r.alias_info is not None and not r.alias_info.is_write for r in func._schema.returns)


def _route(func) -> tuple:
    handler = OPS.get(func)
    if handler is not None and op_plans.plannable(func):
        handler = _planned(func, handler)
    route = (handler, func in _MIXED_DEVICES_OK, COMPLEX_OPS.get(func), func, _returns_view(func))
    _ROUTES[id(func)] = route
    return route


def _planned(func, handler):
    """The handler, repeated from a plan where its call is a repeat (op_plans.py)."""
    def planned(*args, **kwargs):
        return op_plans.run(_rt_mod._runtime or _rt_mod.runtime(), func, handler, args, kwargs)
    planned.__qualname__ = handler.__qualname__
    return planned


def torch_dispatch(cls, func, types, args=(), kwargs=None):
    if _deferred and not _in_backward():
        _raise_deferred()
    try:
        route = _ROUTES.get(id(func)) or _route(func)
        if not route[1]:
            _check_same_device(func, args, kwargs)
        complex_handler = route[2]
        if complex_handler is not None and _has_complex(args, kwargs):
            out = complex_handler(*args, **kwargs) if kwargs else complex_handler(*args)
            return cpu_fallback(func, args, kwargs or {}) if out is NotImplemented else out
        handler = route[0]
        if handler is not None:
            try:
                out = handler(*args, **kwargs) if kwargs else handler(*args)
            except NoKernelForDtype:
                return cpu_fallback(func, args, kwargs or {})
            if route[4] and torch.is_inference_mode_enabled():
                return _normal_views_of_normal_tensors(out, args)
            return out
        return _unhandled(func, args, kwargs or {})
    except Exception as exc:
        if _in_backward():
            return _defer(func, args, kwargs or {}, exc)
        raise


def _normal_views_of_normal_tensors(out, args):
    """Views made inside torch.inference_mode() of a tensor made outside it (a parameter's `.t()`, an input's
    `.view()`): PyTorch makes them normal tensors and shares the base's version counter with them, which an
    inference tensor refuses ("Cannot set version_counter for inference tensor": every such view failed, and
    compiled graphs run under inference mode with them). The handler's views were made inside the mode, so
    they are made again outside it, over the same memory."""
    base = next((a for a in args if isinstance(a, torch.Tensor)), None)
    if base is None or base.is_inference():
        return out

    def normal(v):
        if not isinstance(v, WgpuTensor) or not v.is_inference():
            return v
        with torch.inference_mode(False):
            again = wrap(v._ws, v.shape, v.stride(), v.storage_offset(), v.dtype)
        if v.is_conj():
            torch._C._set_conj(again, True)
        return again

    if isinstance(out, (tuple, list)):
        return type(out)(normal(v) for v in out)
    return normal(out)


# -- one device per op ----------------------------------------------------------------------------
# As on CUDA, an op takes tensors of one device, except 0-d CPU tensors (used as scalars), copies
# between devices, and CPU index tensors in advanced indexing. Checked here once for every op, so no
# handler meets a CPU tensor it would misread (as a scalar, or through a missing elem_offset).
class _MixedDevicesOk(set):
    """A set whose changes drop the dispatcher's cached routes."""

    def add(self, op):
        super().add(op)
        _ROUTES.clear()

    def discard(self, op):
        super().discard(op)
        _ROUTES.clear()

    def remove(self, op):
        super().remove(op)
        _ROUTES.clear()

    def update(self, *ops):
        super().update(*ops)
        _ROUTES.clear()


_MIXED_DEVICES_OK = _MixedDevicesOk({
    aten.copy_.default, aten.copy.default, aten._to_copy.default, aten.index.Tensor, aten.index_put.default,
    aten.index_put_.default, aten._index_put_impl_.default, aten._unsafe_index.Tensor,
    aten._unsafe_index_put.default, aten.set_.source_Tensor, aten.set_.source_Storage,
    aten.set_.source_Storage_storage_offset, aten.lift_fresh.default,
    aten._pack_padded_sequence.default,  # its lengths live on the CPU by PyTorch's design (read on the host)
})


# Argument types that cannot be a tensor of another device: skipped with one set lookup each (this check
# runs on every op, so the common case must cost next to nothing).
_INERT = frozenset({WgpuTensor, int, float, bool, type(None), str, torch.dtype, torch.device, torch.layout,
                    torch.memory_format})


def _check_same_device(func, args, kwargs) -> None:
    for a in args:
        if type(a) not in _INERT:
            _check_value(func, a, args)
    if kwargs:
        for k, a in kwargs.items():
            if type(a) not in _INERT:
                _check_value(func, a, k)


def _check_value(func, a, where) -> None:
    """`where`: the keyword, or the positional arguments (searched by identity only when raising)."""
    if isinstance(a, torch.Tensor):
        if not isinstance(a, WgpuTensor) and a.dim():
            _raise_other_device(func, a, where, a)
    elif type(a) in (list, tuple):
        for v in a:
            if type(v) not in _INERT and isinstance(v, torch.Tensor) and not isinstance(v, WgpuTensor) and v.dim():
                _raise_other_device(func, v, where, a)


def _raise_other_device(func, tensor, where, arg) -> None:
    if isinstance(where, tuple):
        where = next(i for i, x in enumerate(where) if x is arg)
    arguments = func._schema.arguments
    name = arguments[where].name if isinstance(where, int) and where < len(arguments) else where
    raise RuntimeError(f"Expected all tensors to be on the same device, but found at least two devices, "
                       f"{DEVICE} and {tensor.device}! (argument {name} of {func})")


# -- errors inside backward --------------------------------------------------------------------------
# A Python exception raised from __torch_dispatch__ while autograd's engine runs a backward node
# unwinds through the engine's stream guard, whose noexcept methods call back into Python for the
# PrivateUse1 device type; with the exception still pending that call fails and the process aborts
# ("terminate called without an active exception"; torch 2.11-2.13). So inside backward an error is
# recorded, the op returns NaN-filled outputs of the right shapes, and the error is raised at the next
# op outside backward (normally optimizer.step() or .item() right after loss.backward()).
_deferred: list = []


def _in_backward() -> bool:
    return torch._C._current_graph_task_id() != -1


class BackwardError(RuntimeError):
    """An op failed inside loss.backward(); raised at the next wgpu op after it."""


def _raise_deferred():
    func, exc = _deferred[0]
    _deferred.clear()
    raise BackwardError(f"navitrain wgpu: {func} failed during backward: {type(exc).__name__}: {exc}") from exc


def _defer(func, args, kwargs, exc):
    if not _deferred:
        _deferred.append((func, exc))

    def to_meta(x):
        if isinstance(x, WgpuTensor):
            return torch.empty_strided(x.shape, x.stride(), dtype=x.dtype, device="meta")
        if isinstance(x, torch.device) and x.type == DEVICE.type:
            return torch.device("meta")
        return x

    flat, spec = tree_flatten((args, kwargs))
    meta_args, meta_kwargs = tree_unflatten([to_meta(x) for x in flat], spec)
    try:
        meta_out = func(*meta_args, **meta_kwargs)
    except Exception:
        # No meta kernel (or a data-dependent shape): run the op on the CPU, leniently, just to get
        # outputs of the right shapes. The recorded error is raised after backward all the same.
        try:
            return _lenient_cpu(func, args, kwargs)
        except Exception:
            raise exc from None  # nothing else can produce the shapes; this may end the process

    def placeholder(t):
        if isinstance(t, torch.Tensor) and t.device.type == "meta":
            value = float("nan") if (t.dtype.is_floating_point or t.dtype.is_complex) else 0
            if t.dtype.is_complex:  # no wgpu kernel computes in complex types: upload the placeholder
                return from_cpu(torch.full(t.shape, value, dtype=t.dtype))
            return _fill(empty(t.shape, t.dtype, t.stride()), value)
        return t

    out_flat, out_spec = tree_flatten(meta_out)
    return tree_unflatten([placeholder(t) for t in out_flat], out_spec)


def _lenient_cpu(func, args, kwargs):
    import os

    saved = os.environ.get(_env.WGPU_STRICT)
    os.environ[_env.WGPU_STRICT] = "0"
    try:
        return cpu_fallback(func, args, kwargs)
    finally:
        if saved is None:
            os.environ.pop(_env.WGPU_STRICT, None)
        else:
            os.environ[_env.WGPU_STRICT] = saved


def raise_pending() -> None:
    """Raise an error recorded during backward, if any (called at sync points)."""
    if _deferred:
        _raise_deferred()


WgpuTensor.__torch_dispatch__ = classmethod(torch_dispatch)


def trace_ops(tracer: Callable | None) -> None:
    """Route every aten op on a wgpu tensor through `tracer(cls, func, types, args, kwargs)`, which calls
    `torch_dispatch` itself (navitrain.wgpu.traffic, while profiling or capturing); None: straight to
    `torch_dispatch` again. The class's entry point is swapped rather than a flag tested in
    torch_dispatch, so the untraced path, every op's, stays as it is."""
    WgpuTensor.__torch_dispatch__ = classmethod(torch_dispatch if tracer is None else tracer)


# -- decomposition ------------------------------------------------------------------------------
def _decomposition(func):
    from torch._decomp import decomposition_table

    return decomposition_table.get(func)


# Whether an overload has a CompositeImplicitAutograd kernel (its own decomposition), per overload: the
# dispatcher lookup by name costs tens of microseconds, and ops such as contiguous() take this path in
# every step. (Kernels are registered when an operator library loads, before its ops can be called.)
_COMPOSITE_IMPLICIT: dict = {}


def _composite_implicit(func) -> bool:
    known = _COMPOSITE_IMPLICIT.get(func)
    if known is None:
        known = _COMPOSITE_IMPLICIT[func] = torch._C._dispatch_has_kernel_for_dispatch_key(
            func.name(), "CompositeImplicitAutograd")
    return known


# Ops whose PyTorch decomposition also runs on integer tensors (computing truncated values) while the
# CPU has no integer kernel for them: refused here as the CPU refuses them.
_FLOAT_ONLY_DECOMPOSED = {aten.logaddexp.default, aten.logaddexp2.default, aten.log_sigmoid_forward.default}


def _unhandled(func, args, kwargs):
    if func in _FLOAT_ONLY_DECOMPOSED:
        for a in args:
            if isinstance(a, torch.Tensor) and not a.dtype.is_floating_point:
                raise NotImplementedError(f'"{func}" not implemented for \'{str(a.dtype).replace("torch.", "")}\'')
    active = getattr(_local, "decomposing", None)
    if active is None:
        active = _local.decomposing = set()
    if func not in active:
        decomp = _decomposition(func)
        if decomp is None and _composite_implicit(func):
            decomp = func.decompose
        if decomp is not None:
            active.add(func)
            try:
                result = decomp(*args, **kwargs)
            finally:
                active.discard(func)
            if result is not NotImplemented:
                decomposed_counts[str(func)] += 1
                return result
    kernel = _custom_op_kernel(func)
    if kernel is not None:
        return kernel(*args, **kwargs)
    return cpu_fallback(func, args, kwargs)


def _custom_op_kernel(func):
    """The function a library's custom op (torch.library.custom_op) registered for the "wgpu" device or for every
    device (no device_types; Hugging Face's MoE grouped matmul for compiled code is one). The dispatcher holds it
    under a backend key, below the Python key that brings every op here, so these ops ran on the CPU. Run here,
    its own ops on wgpu tensors come back through this dispatcher. None for other ops (looked up each time: the
    CPU fallback it saves is far slower, and a kernel may be registered after the op's first call)."""
    if func.namespace in ("aten", "prim", "prims"):
        return None
    from torch._library import custom_ops

    fns = getattr(getattr(custom_ops, "OPDEFS", {}).get(func._schema.name), "_backend_fns", None) or {}
    return fns.get(DEVICE.type) or fns.get(None)


# -- the CPU fallback ---------------------------------------------------------------------------
def _describe_args(args, kwargs) -> str:
    def one(x):
        if isinstance(x, torch.Tensor):
            return f"{x.device.type}:{str(x.dtype).replace('torch.', '')}{list(x.shape)}"
        if isinstance(x, (list, tuple)):
            return "[" + ", ".join(one(v) for v in x) + "]"
        return repr(x)
    parts = [one(a) for a in args] + [f"{k}={one(v)}" for k, v in kwargs.items()]
    return ", ".join(parts)


def cpu_fallback(func, args, kwargs):
    name = str(func)
    schema = func._schema
    if _returns_view(func):
        raise NotImplementedError(
            f"navitrain wgpu: view op {name} has no wgpu implementation (a CPU fallback cannot return a view); "
            f"arguments: {_describe_args(args, kwargs)}")
    if _env.wgpu_strict():
        raise FallbackForbidden(
            f"navitrain wgpu: no kernel for {name} ({_describe_args(args, kwargs)}); "
            f"{_env.WGPU_STRICT}=1 forbids running it on the CPU")
    fallback_counts[name] += 1
    if name not in _warned:
        _warned.add(name)
        warnings.warn(f"navitrain wgpu: {name} has no wgpu kernel and runs on the CPU "
                      "(counted; see navitrain.wgpu.fallback_report())", stacklevel=3)

    flat, spec = tree_flatten((args, kwargs))
    cpu_flat = []
    for x in flat:
        if isinstance(x, WgpuTensor):
            cpu_flat.append(to_cpu(x))
        elif isinstance(x, torch.device) and x.type == DEVICE.type:
            cpu_flat.append(torch.device("cpu"))
        else:
            cpu_flat.append(x)
    cpu_args, cpu_kwargs = tree_unflatten(cpu_flat, spec)
    out = func(*cpu_args, **cpu_kwargs)

    # Write mutated arguments back to the device tensors they came from.
    written: dict[int, object] = {}
    for i, arg in enumerate(schema.arguments):
        if arg.alias_info is None or not arg.alias_info.is_write:
            continue
        if arg.kwarg_only or i >= len(args):
            original, cpu_value = kwargs.get(arg.name), cpu_kwargs.get(arg.name)
        else:
            original, cpu_value = args[i], cpu_args[i]
        if original is None:
            continue
        pairs = zip(original, cpu_value) if isinstance(original, (list, tuple)) else [(original, cpu_value)]
        for dev_t, cpu_t in pairs:
            if isinstance(dev_t, WgpuTensor):
                _upload_into(dev_t, cpu_t)
        for alias in arg.alias_info.before_set:
            written[alias] = original

    def back(x, ret=None):
        if ret is not None and ret.alias_info is not None:
            for alias in ret.alias_info.before_set:
                if alias in written:
                    return written[alias]
        if isinstance(x, torch.Tensor) and x.device.type == "cpu" and not isinstance(x, WgpuTensor):
            return from_cpu(x)
        return x

    if isinstance(out, tuple) and len(schema.returns) == len(out):
        return tuple(back(o, r) if not isinstance(o, (list, tuple)) else type(o)(back(v) for v in o)
                     for o, r in zip(out, schema.returns))
    if isinstance(out, (list, tuple)):
        return type(out)(back(o) for o in out)
    return back(out, schema.returns[0] if schema.returns else None)


def fallback_report() -> dict:
    """Ops that ran on the CPU (and how often), and ops handled by decomposition."""
    return {"cpu_fallbacks": dict(fallback_counts), "decomposed": dict(decomposed_counts),
            "total_fallback_calls": sum(fallback_counts.values())}


def reset_fallback_counts() -> None:
    fallback_counts.clear()
    decomposed_counts.clear()
    _warned.clear()
