"""`torch.compile(model, backend="wgpu")`: dynamo and AOTAutograd trace, captured graphs replay.

How a wgpu tensor gets traced: it is a traceable wrapper subclass with no inner tensors (see
WgpuTensor.__tensor_unflatten__), so its fake is a plain FakeTensor on device wgpu:0 and tracing runs
aten's meta kernels, as for CUDA. AOTAutograd then hands over forward and backward graphs of
functional aten ops; each one becomes a `CapturedGraphModule`:

- the first call with a given input signature (shapes, strides, dtypes, the values of the other
  arguments) runs the FX graph eagerly, through the ordinary handlers (kernels compile, tiles tune);
- the next call with that signature captures it into a WgpuGraph and every later call replays it.
  Inputs are compared by memory: the caller's tensors that are where they were on the previous call
  (parameters, buffers, optimizer state) and other replays' outputs (the forward's saved activations
  fed to the backward, gradients fed to the optimizer) are read in place; the others are copied into
  static input tensors first. Outputs are lent, not copied (borrowed.py): each replay hands out new
  storages borrowing the graph's output memory, and before the graph writes it again every one still
  alive gets a copy of its own, so a later replay never changes a tensor the caller holds;
- a signature never seen before (the last, short batch) is warmed up and captured in turn, up to
  MAX_CAPTURES per graph; beyond that, and when capture fails (a host read, an op falling back to
  the CPU), the graph runs eagerly, with a one-time warning. Never a wrong result.

Before that, chains of pointwise ops in each graph are fused into single kernels (fusion.py), those
around a batch norm into the batch norm's own passes (fusion_norm.py); an optimizer's list ops become
in-place multi-tensor kernels (fusion_foreach.py), values that depend on no input are computed once
(fusion_constants.py), new values of inputs are written where the inputs are instead of copied
there (fusion_inplace.py), and the batch norms' counter increments run as one kernel (fusion_counters.py).

Dynamo itself provides the guards (shapes, dtypes, strides), recompiles (bounded by its cache limit)
and graph breaks (the pieces between them run eagerly).
"""
from __future__ import annotations

import logging
import operator
import warnings
import weakref
from collections import Counter

import torch

from navitrain import _env
from navitrain.wgpu import (
    dispatch,
    fusion,
    fusion_constants,
    fusion_conv_relu,
    fusion_conv_stats,
    fusion_counters,
    fusion_foreach,
    fusion_gemm,
    fusion_inplace,
    fusion_norm,
    fusion_norm_pair,
)
from navitrain.wgpu.borrowed import Loans, lender_of
from navitrain.wgpu.compile_compat import patch_constant_folding, patch_fake_tensor_helpers
from navitrain.wgpu.compile_optimizer import patch_dynamo_capturable
from navitrain.wgpu.compile_tangents import patch_tangent_restride
from navitrain.wgpu.graphs import WgpuGraph, graph, is_capturing
from navitrain.wgpu.runtime import WgpuError
from navitrain.wgpu.tensor import WgpuTensor, wrap

log = logging.getLogger("navitrain.wgpu")

BACKEND_NAME = "wgpu"
MAX_CAPTURES = 4  # captured signatures kept per graph (each holds its own memory)
MAX_WARMED = 64   # signatures remembered from their eager first call, per graph, awaiting a second

# What the compiled graphs did, for tests and benchmarks: eager runs, captures, replays, failures; and per
# graph compiled, the pointwise groups fused (fused_groups, fused_ops, fused_dispatches_saved).
stats: Counter = Counter()
_warned: set[str] = set()


def reset_stats() -> None:
    """Zero the counters and let each warning be given once more."""
    stats.clear()
    _warned.clear()


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=3)
    log.info(message)


def _signature(args) -> tuple:
    return tuple((type(a), a.shape, a.stride(), a.dtype) if isinstance(a, torch.Tensor) else a for a in args)


def _where(a):
    """Where an eager call's tensor was, without keeping its memory alive."""
    return (weakref.ref(a._ws), a.storage_offset()) if isinstance(a, WgpuTensor) else None


def _still_at(a, where) -> bool:
    return where is not None and isinstance(a, WgpuTensor) and where[0]() is a._ws and where[1] == a.storage_offset()


def _address(t) -> tuple:
    """(heap, element address) of a tensor's first element."""
    ws = t._ws
    return ws.heap, ws.base + t.storage_offset()


def _same_memory(a, b) -> bool:
    """`a` starts where `b` does (signatures already matched shapes, strides and dtypes): a graph that reads
    `b` reads `a`'s data, whichever storage object either has."""
    (heap_a, at_a), (heap_b, at_b) = _address(a), _address(b)
    return heap_a is heap_b and at_a == at_b


# How a captured graph reads each tensor input:
CALLERS = "callers"  # the caller's own tensor (a parameter, optimizer state), read in place; elsewhere: capture again
PINNED = "pinned"    # another graph's output memory (borrowed when captured), read in place; elsewhere: copied in
COPIED = "copied"    # a static copy of this graph's own; each call's data is copied in unless already there


class _Capture:
    """One captured signature: the graph, the tensors it reads, the outputs it writes and lends.

    Everything a replay checks or hands out is worked out here once, per input and output position: a
    step's graphs take hundreds of tensors (an optimizer graph reads every parameter, gradient and state),
    and per-call work over all of them was half of a compiled step's host time."""

    def __init__(self, wgpu_graph: WgpuGraph, inputs: list, how: list, outputs: list, mutated=()):
        self.graph = wgpu_graph
        self.mutated = [i for i in mutated if how[i] is not None]   # inputs the graph writes (copy_ into them)
        self.inputs = inputs      # what the graph reads: callers' tensors, pins or static copies
        self.how = how            # CALLERS, PINNED, COPIED or None (not a wgpu tensor), per input
        self.outputs = outputs
        self.loans = Loans((outputs, inputs))
        # The graph's dispatches are bound to the memory each caller's tensor had when captured. The tensor
        # object may stay and its memory move (`param.data = ...`), so a replay compares where the memory is,
        # not which object holds it.
        self.callers = [(i, *_address(s)) for i, (s, h) in enumerate(zip(inputs, how)) if h is CALLERS]
        self.pinned = [i for i, h in enumerate(how) if h is PINNED]
        self.copied_in = [i for i, h in enumerate(how) if h is PINNED or h is COPIED]
        # A caller's tensor is where the graph wrote it (matches checked); the others get the new values.
        self.written_back = [i for i in self.mutated if how[i] is not CALLERS]
        self.hand_out = [self._output_source(o, position) for position, o in enumerate(outputs)]

    def _output_source(self, o, position):
        """How to hand out output `o`, with its fixed geometry: ("input", i, ...) for an output in memory the
        graph reads in place (a view of a parameter: handed out as a view of the caller's input), ("lend",
        k, ...) for the graph's own memory (k: the first output sharing its storage, so that outputs sharing
        memory share one borrowed storage), None for the rest."""
        if not isinstance(o, WgpuTensor):
            return None
        geometry = (o.shape, o.stride(), o.dtype)
        for i, (static, how) in enumerate(zip(self.inputs, self.how)):
            if how in (CALLERS, PINNED) and static._ws is o._ws:
                return ("input", i, o.storage_offset() - static.storage_offset(), o.storage_offset(), *geometry)
        first = next(k for k, other in enumerate(self.outputs[:position + 1])
                     if isinstance(other, WgpuTensor) and other._ws is o._ws)
        return ("lend", first, 0, o.storage_offset(), *geometry)

    def matches(self, args) -> bool:
        for i, heap, address in self.callers:
            now_heap, now = _address(args[i])
            if now_heap is not heap or now != address:
                return False
        inputs = self.inputs
        for i in self.pinned:
            # Borrowed from another graph than the one captured (that one was captured again): capture
            # again too, rather than copying into memory only the old graph kept alive.
            lender = lender_of(args[i]._ws)
            if lender is not None and lender is not inputs[i]._ws.lender:
                return False
        return True

    def run(self, args):
        # Whatever the last replay lent is still someone's: copies of their own first, then the graph may write.
        stats["borrowed_copies"] += self.loans.call_back()
        inputs = self.inputs
        with torch.no_grad():
            moves = [i for i in self.copied_in if not _same_memory(args[i], inputs[i])]
            if moves:
                how = self.how
                lenders = {id(inputs[i]._ws.lender): inputs[i]._ws.lender for i in moves if how[i] is PINNED}
                for lender in lenders.values():
                    stats["borrowed_copies"] += lender.call_back()   # that graph's memory is about to be written
                for i in moves:
                    inputs[i].copy_(args[i])
                stats["input_copies"] += len(moves)
            self.graph.replay()
            for i in self.written_back:
                # The graph wrote its static copy: the caller's tensor gets the new values.
                if not _same_memory(args[i], inputs[i]):
                    args[i].copy_(inputs[i])
            return self._outputs(args)

    def _outputs(self, args) -> list:
        lent = {}
        out = []
        for o, source in zip(self.outputs, self.hand_out):
            if source is None:
                out.append(o)
                continue
            kind, k, delta, offset, shape, stride, dtype = source
            if kind == "input":
                a = args[k]
                moved = delta + a.storage_offset()
                if moved >= 0 and (self.how[k] is CALLERS or _same_memory(a, self.inputs[k])):
                    out.append(wrap(a._ws, shape, stride, moved, dtype))
                    continue
                static = self.inputs[k]
                if self.how[k] is CALLERS:   # reaches before the caller's view: the captured storage itself
                    out.append(wrap(static._ws, shape, stride, offset, dtype))
                    continue
                # Another graph's memory, this call's data copied in: borrow it from that graph.
                storage = static._ws.lender.lend(static._ws)
            else:
                storage = lent.get(k)
                if storage is None:
                    storage = lent[k] = self.loans.lend(o._ws)
            out.append(wrap(storage, shape, stride, offset, dtype))
        return out


class CapturedGraphModule:
    """An AOTAutograd graph run eagerly once per input signature, then captured and replayed."""

    _boxed_call = True  # AOTAutograd passes the arguments as one list

    def __init__(self, gm: torch.fx.GraphModule, kind: str, mutated: tuple[int, ...] | None = None):
        self.gm = gm
        # The graph is called from eager code that dynamo may be watching (loss.backward() between the
        # pieces of a compiled step runs the backward graph): dynamo must not trace it again as user
        # code (a second compile of the same ops; with fused calls, which it cannot trace, a graph break
        # at each one).
        self.run_graph = torch._dynamo.disable(lambda *args: gm(*args))
        self.kind = kind
        # Fusion may have folded the copy_ epilogue into kernels that write the inputs themselves: the
        # positions are taken before it (compile_graph passes them).
        self.mutated = _mutated_inputs(gm) if mutated is None else mutated
        self.uploads = _uploaded_inputs(gm)
        # 0-d CPU inputs the graph does not write (a scalar: an optimizer's tensor learning rate, DeBERTa's attention
        # scale): uploaded before the graph runs, so a replay reads each call's value, unless the graph returns
        # one (the caller would get it back on the device); those are captured per value instead.
        scalars = [i for i in _host_scalar_inputs(gm) if i not in self.mutated]
        returned = _returned_inputs(gm)
        self.scalar_uploads = tuple(i for i in scalars if i not in returned)
        self.host_scalars = tuple(i for i in scalars if i in returned)
        self.scalar_positions = frozenset(scalars)
        self.captures: dict[tuple, _Capture] = {}
        self.eager_only: set[tuple] = set()
        self.previous: dict[tuple, list] = {}   # where the last eager call's tensors were, per signature
        self.capture_count = 0
        self.uncapturable_warned = False

    def _eager(self, args, sig=None):
        stats[f"{self.kind}_eager"] += 1
        out = self.run_graph(*args)
        if sig is not None and sig not in self.eager_only:
            if len(self.previous) >= MAX_WARMED:   # (a host scalar whose value changes every call)
                self.previous.pop(next(iter(self.previous)))
            self.previous[sig] = [_where(a) for a in args]
        return list(out) if isinstance(out, (tuple, list)) else [out]

    def __call__(self, args):
        args = list(args)
        if is_capturing():
            # Inside the caller's own capture (navitrain.wgpu.graphed around a compiled step): record the
            # graph's ops into that one; captures cannot nest.
            out = self.run_graph(*args)
            return list(out) if isinstance(out, (tuple, list)) else [out]
        for i, device in self.uploads:
            a = args[i]
            if isinstance(a, torch.Tensor) and not isinstance(a, WgpuTensor) and a.device.type == "cpu":
                # A CPU tensor the graph only copies to the device (a batch moved inside the compiled step):
                # uploaded first, it is an input like any other, and the graph's copy of it is captured.
                args[i] = a.to(device)
                stats["inputs_uploaded"] += 1
        if not self._capturable(args):
            # CPU tensors in the graph (a non-capturable optimizer's step count): a capture would
            # freeze their values, so this graph runs eagerly.
            if not self.uncapturable_warned:
                self.uncapturable_warned = True
                log.info("navitrain wgpu compile: a %s graph takes CPU tensors and runs eagerly (for optimizers: "
                         "capturable=True keeps their step count on the device)", self.kind)
            stats[f"{self.kind}_uncapturable"] += 1
            return self._eager(args)
        if self.scalar_uploads:
            device = next(a.device for a in args if isinstance(a, WgpuTensor))
            for i in self.scalar_uploads:
                a = args[i]
                if isinstance(a, torch.Tensor) and not isinstance(a, WgpuTensor):
                    args[i] = a.to(device)
        sig = _signature(args)
        if self.host_scalars:
            # A capture keeps the value a CPU scalar had (ops read it on the host): replayed only for that value.
            sig += tuple(repr(args[i].item()) for i in self.host_scalars if isinstance(args[i], torch.Tensor))
        cap = self.captures.get(sig)
        if cap is not None:
            if cap.matches(args):
                stats[f"{self.kind}_replays"] += 1
                return cap.run(args)
            # A tensor read in place was replaced (param.data = ..., another optimizer): capture again. The old
            # graph's memory goes back once nothing borrows it (Loans keeps only what was lent alive).
            del self.captures[sig]
            self.previous.pop(sig, None)
        if sig in self.eager_only or sig not in self.previous:
            return self._eager(args, sig)   # first call of this signature: warm-up
        if self.capture_count >= MAX_CAPTURES * 2 or len(self.captures) >= MAX_CAPTURES:
            self.eager_only.add(sig)
            self.previous.pop(sig, None)
            _warn_once(f"limit-{id(self)}", f"navitrain wgpu compile: {self.kind} graph seen with more than "
                       f"{MAX_CAPTURES} input signatures (or captured too often); new ones run eagerly")
            return self._eager(args, sig)
        return self._capture(sig, args)

    def _capturable(self, args) -> bool:
        """Whether a capture can stand for this call: wgpu tensors, and CPU tensors only where the graph takes a
        0-d one it does not write (a scalar; its value joins the signature)."""
        wgpu = False
        scalars = self.scalar_positions
        for i, a in enumerate(args):
            if isinstance(a, WgpuTensor):
                wgpu = True
            elif isinstance(a, torch.Tensor) and not (i in scalars and a.device.type == "cpu" and a.dim() == 0):
                return False
        return wgpu

    def _capture(self, sig, args):
        previous = self.previous.pop(sig)
        inputs, how = [], []
        with torch.no_grad():
            for a, where in zip(args, previous):
                if not isinstance(a, WgpuTensor):
                    inputs.append(a)
                    how.append(None)
                elif lender_of(a._ws) is not None:
                    # Another replay's output (the forward's saved activations reaching the backward, gradients
                    # reaching the optimizer): read where that graph keeps it, with no copy per call.
                    inputs.append(wrap(lender_of(a._ws).pin(a._ws), a.shape, a.stride(), a.storage_offset(), a.dtype))
                    how.append(PINNED)
                elif _still_at(a, where):
                    inputs.append(a)
                    how.append(CALLERS)
                else:
                    static = a.clone(memory_format=torch.preserve_format)
                    if static.stride() != a.stride():  # overlapping or gapped views keep no layout
                        self.eager_only.add(sig)
                        return self._eager(args, sig)
                    inputs.append(static)
                    how.append(COPIED)
        self.capture_count += 1
        wgpu_graph = WgpuGraph()
        deferred_before = len(dispatch._deferred)
        try:
            with graph(wgpu_graph):
                out = self.run_graph(*inputs)
                # Inside backward, an op's error is deferred rather than raised (dispatch._defer): a
                # capture that met one is incomplete.
                if len(dispatch._deferred) > deferred_before:
                    failure = dispatch._deferred[-1][1]
                    del dispatch._deferred[deferred_before:]
                    raise failure
        except (WgpuError, NotImplementedError, RuntimeError) as exc:
            stats[f"{self.kind}_capture_failures"] += 1
            self.eager_only.add(sig)
            _warn_once(f"capture-{type(exc).__name__}-{exc}",
                       f"navitrain wgpu compile: a {self.kind} graph could not be captured and runs eagerly "
                       f"(correct, but with Python per op): {type(exc).__name__}: {exc}")
            return self._eager(args, sig)
        stats[f"{self.kind}_captures"] += 1
        outputs = list(out) if isinstance(out, (tuple, list)) else [out]
        cap = self.captures[sig] = _Capture(wgpu_graph, inputs, how, outputs, self.mutated)
        stats[f"{self.kind}_replays"] += 1
        return cap.run(args)


def _mutated_inputs(gm: torch.fx.GraphModule) -> tuple[int, ...]:
    """Positions of the inputs the graph writes: with keep_inference_input_mutations, AOTAutograd ends an
    inference graph (an optimizer step) with copy_ of each new value into its input."""
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    written = {n.args[0] for n in gm.graph.nodes if n.op == "call_function"
               and n.target is torch.ops.aten.copy_.default and n.args and n.args[0].op == "placeholder"}
    return tuple(i for i, n in enumerate(placeholders) if n in written)


def _host_scalar_inputs(gm: torch.fx.GraphModule) -> list[int]:
    """Positions of the inputs traced as 0-d CPU tensors (DeBERTa's attention scale, computed on the CPU and
    saved for the backward): ops take them as scalars, read on the host."""
    return [i for i, node in enumerate(n for n in gm.graph.nodes if n.op == "placeholder")
            if isinstance(node.meta.get("val"), torch.Tensor) and node.meta["val"].device.type == "cpu"
            and node.meta["val"].dim() == 0]


def _returned_inputs(gm: torch.fx.GraphModule) -> set[int]:
    """Positions of the inputs the graph returns, as they are or through views."""
    return {i for i, node in enumerate(n for n in gm.graph.nodes if n.op == "placeholder")
            if fusion_constants.escapes(node)}


def _uploaded_inputs(gm: torch.fx.GraphModule) -> tuple[tuple[int, torch.device], ...]:
    """(position, device) of the inputs that are CPU tensors when traced and that the graph only copies to the wgpu
    device (`x.to(device)` inside a compiled step). Given the wgpu tensor instead, each copy still has a
    meaning (a copy on the device), so the caller's CPU tensor can be uploaded before the graph runs."""
    positions = []
    for i, node in enumerate(n for n in gm.graph.nodes if n.op == "placeholder"):
        value = node.meta.get("val")
        if not isinstance(value, torch.Tensor) or value.device.type != "cpu" or not node.users:
            continue
        devices = {user.kwargs.get("device") if user.op == "call_function"
                   and user.target is torch.ops.aten._to_copy.default and user.args[0] is node
                   and len(user.args) == 1 else None for user in node.users}
        device = devices.pop() if len(devices) == 1 else None
        if isinstance(device, torch.device) and device.type == "wgpu":
            positions.append((i, device))
    return tuple(positions)


def _compiler(kind: str):
    def compile_graph(gm: torch.fx.GraphModule, example_inputs):
        mutated = _mutated_inputs(gm)
        if fusion.ENABLED:
            # An optimizer's list-op chain first (its copy_ epilogue into parameters and state), values that
            # depend on no input computed once, then batch norms and pointwise chains, then the remaining
            # copy_ of new values into inputs folded into the kernels that compute them, and the batch
            # norms' counter increments made one kernel. NAVITRAIN_WGPU_FUSION_OFF leaves passes out.
            off = _env.value(_env.WGPU_FUSION_OFF)
            if "foreach" not in off:
                stats["fused_foreach_ops"] += fusion_foreach.fuse(gm)
            if "constants" not in off:
                stats["constants_folded"] += fusion_constants.fold(gm)
            if "gemm" not in off:   # elementwise chains after matrix products, in the products' stores
                stats["gemm_epilogues"] += fusion_gemm.fuse(gm)
            if "norm" not in off:
                fused = fusion_norm.fuse(gm)
                stats["fused_batch_norms"] += fused.batch_norms
                stats["fused_groups"] += fused.groups
                stats["fused_ops"] += fused.ops
                stats["fused_dispatches_saved"] += fused.dispatches_saved
            if "conv_stats" not in off:   # batch norms' sums from their convolutions
                stats["conv_bn_stats"] += fusion_conv_stats.fuse(gm)
            if "conv_relu" not in off:   # a ReLU right after a convolution, in its store
                stats["conv_relus"] += fusion_conv_relu.fuse(gm)
            if "inplace" not in off:
                stats["copies_folded"] += fusion_inplace.fold_copies(gm)
            if "norm_pair" not in off:   # a downsample block's two batch norms in one pass
                stats["batch_norm_pairs"] += fusion_norm_pair.fuse(gm)
            if "counters" not in off:
                stats["counters_batched"] += fusion_counters.batch(gm)
        return CapturedGraphModule(gm, kind, mutated)
    return compile_graph


def backend(gm: torch.fx.GraphModule, example_inputs):
    """The dynamo backend "wgpu": AOTAutograd's forward and backward graphs, captured and replayed."""
    from torch._functorch.aot_autograd import aot_module_simplified
    from torch._guards import TracingContext, detect_fake_mode

    # Dynamo passes the real tensors. AOTAutograd takes a traceable subclass whose inner tensors are all
    # fake as already fake; a wgpu tensor has no inner tensors, so it would be traced as itself: hand it
    # the fakes dynamo made (the fake mode remembers each real tensor's fake).
    fake_mode = detect_fake_mode(example_inputs)
    if fake_mode is None:
        context = TracingContext.try_get()
        fake_mode = context.fake_mode if context is not None else None
    gm, lifted = _lift_tensor_attributes(gm)
    example_inputs = lifted + list(example_inputs)
    if fake_mode is not None:
        example_inputs = [fake_mode.from_tensor(x) if isinstance(x, WgpuTensor) else x for x in example_inputs]
    compiled = aot_module_simplified(gm, example_inputs, fw_compiler=_compiler("forward"),
                                     bw_compiler=_compiler("backward"), inference_compiler=_compiler("inference"),
                                     # An optimizer step's new parameters and state are written by the graph
                                     # itself (captured), not copied back one eager copy_ at a time after it.
                                     keep_inference_input_mutations=True)
    if not lifted:
        return compiled

    def run(*args):
        return compiled(*lifted, *args)
    return run


def _lift_tensor_attributes(gm: torch.fx.GraphModule):
    """(a graph module, tensors): the wgpu tensors dynamo stored on `gm` (a compiled optimizer's
    parameters, for one) turned into leading graph inputs of a copy. AOTAutograd would take them for
    fakes as they are (see `backend`); as inputs they get fakes like any other. Dynamo's own graph is
    left alone: it reads it again after the backend returns."""
    targets = [n.target for n in gm.graph.nodes if n.op == "get_attr"
               and isinstance(operator.attrgetter(n.target)(gm), WgpuTensor)]
    if not targets:
        return gm, []
    graph = torch.fx.Graph()
    values, lifted = [], {}
    for i, target in enumerate(dict.fromkeys(targets)):
        placeholder = graph.placeholder(f"navitrain_lifted_{i}")
        # AOTAutograd matches dynamo's graph inputs to their sources (for guards): keep the attribute's.
        placeholder._dynamo_source = getattr(gm, "_param_name_to_source", {}).get(target)
        lifted[target] = placeholder
        values.append(operator.attrgetter(target)(gm))
    env = {}
    for node in gm.graph.nodes:
        if node.op == "get_attr" and node.target in lifted:
            env[node] = lifted[node.target]
            lifted[node.target].meta.update(node.meta)
            continue
        env[node] = graph.node_copy(node, lambda n: env[n])
        if node.op == "placeholder":
            env[node]._dynamo_source = getattr(node, "_dynamo_source", None)
    new = torch.fx.GraphModule(gm, graph)
    new.meta.update(gm.meta)
    if hasattr(gm, "_param_name_to_source"):
        new._param_name_to_source = gm._param_name_to_source
    return new, values


def register() -> None:
    """Make backend="wgpu" known to torch.compile (imports torch._dynamo: call it lazily)."""
    from torch._dynamo import trace_rules
    from torch._dynamo.backends.registry import _COMPILER_FNS, register_backend

    # navitrain's handlers are the device's kernels, not user code: dynamo must not trace them when an
    # eager piece of a compiled function (a graph break, loss.backward()) runs ops on wgpu tensors.
    trace_rules.add("navitrain.wgpu")
    # torch 2.11 asserts on a traceable subclass with no inner tensors, which a wgpu tensor is.
    patch_fake_tensor_helpers(WgpuTensor)
    # an op on constants whose result is a wgpu tensor is traced, not folded into a constant
    patch_constant_folding(WgpuTensor)
    # a compiled backward's incoming gradient that AOTAutograd restrides must stay plain-looking
    patch_tangent_restride()
    # a compiled optimizer step keeps its step counts on the device, as dynamo arranges for CUDA
    patch_dynamo_capturable()
    # Where navitrain is installed with its torch_dynamo_backends entry point, dynamo registers the
    # backend itself when it loads this module through it (registering here too would be a duplicate).
    from importlib.metadata import entry_points

    if BACKEND_NAME not in _COMPILER_FNS and BACKEND_NAME not in entry_points(group="torch_dynamo_backends").names:
        register_backend(compiler_fn=backend, name=BACKEND_NAME)


register()
