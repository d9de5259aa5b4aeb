"""An optimizer step's `_foreach_*` chain, compiled, as a few in-place multi-tensor kernels.

AOTAutograd hands over an optimizer step (torch.optim's multi-tensor SGD, Adam, AdamW) as functional
list ops followed by a `copy_` of every new value back into its parameter or state tensor (with
keep_inference_input_mutations). Run as traced, SGD with momentum is three list kernels that each
write a new copy of every tensor, then one `copy_` kernel per parameter and per momentum buffer:
~12x the parameters' bytes and over a hundred dispatches for a ResNet-18. Here a chain of list ops
becomes one kernel over all tensors (multi_tensor.apply_lists) that loads each tensor's element once,
computes the whole chain as WGSL `let`s, and stores the new values straight into the tensors the
copies wrote: SGD momentum reads parameter, gradient and buffer and writes parameter and buffer.

Per list index the chain has two kinds of values: "full" ones, of the parameter's shape, and
"scalar" ones, single elements (capturable Adam's step counts and what is computed from them). The
full values are one kernel, reading the scalar inputs as single elements (their chain recomputed per
element, a few flops); the scalar outputs (the new step counts) are a second kernel, after the first,
since the first reads their old values.

Only what is known safe is rewritten, anything else stays as traced:
- float32 values; list ops with rules below (the expressions ops/foreach.py runs, NaN-safe helpers
  where those could lose a NaN); full_like of a list value (Adam's lerp, decomposed) as a constant;
- a copy_ folds only into a graph input, written once, whose elements no list reads at another index
  and which no node reads after the copy;
- a node outside the chain that reads one of its values, or an input it has written, ends the chain
  before that node: the fused call goes there and the node reads its outputs.
At run time, tensors the kernel cannot index (non-contiguous, another dtype) run the traced ops.
"""
from __future__ import annotations

import operator

import torch
from torch.fx import Graph, GraphModule, Node

from navitrain.wgpu import traffic
from navitrain.wgpu.fusion_ops import f32_literal, is_number
from navitrain.wgpu.kernels import multi_tensor
from navitrain.wgpu.tensor import WgpuTensor, empty

aten = torch.ops.aten
FULL, SCALAR = "full", "scalar"
traced_runs = 0   # fused chains that ran their traced ops instead (tensors the kernel cannot index): for tests

_BINARY = {"add": "{a} + {b}", "sub": "{a} - {b}", "mul": "{a} * {b}", "div": "{a} / {b}",
           "maximum": "fmax_nan({a}, {b})", "minimum": "fmin_nan({a}, {b})"}
_UNARY = {"sqrt": "keep_nan({a}, sqrt({a}))", "neg": "(-{a})", "reciprocal": "1.0 / {a}",
          "exp": "keep_nan({a}, exp({a}))", "abs": "abs({a})"}


def _rule(node: Node):
    """(WGSL template over {a}, {b}, {c}; its operands: lists of nodes or Python numbers), or None."""
    name = getattr(node.target, "__name__", "")
    if node.op != "call_function" or not name.startswith("_foreach_") or name.split(".")[0].endswith("_"):
        return None
    base, overload = name[len("_foreach_"):].split(".")
    args, kwargs = list(node.args), dict(node.kwargs)
    if base in ("add", "sub") and overload in ("List", "Scalar"):
        alpha = kwargs.pop("alpha", args[2] if len(args) > 2 else 1)
        if kwargs or not is_number(alpha):
            return None
        op = "+" if base == "add" else "-"
        if alpha == 1:
            return f"{{a}} {op} {{b}}", args[:2]
        return f"{{a}} {op} {{c}} * {{b}}", [args[0], args[1], alpha]   # ops/foreach.py: a + alpha * b
    if base in _BINARY and overload in ("List", "Scalar") and not kwargs and len(args) == 2:
        return _BINARY[base], args
    if base in _UNARY and overload == "default" and not kwargs and len(args) == 1:
        return _UNARY[base], args
    if base in ("addcmul", "addcdiv") and overload == "Scalar":
        value = kwargs.pop("value", args[3] if len(args) > 3 else 1)
        if kwargs or not is_number(value):
            return None
        op = "*" if base == "addcmul" else "/"
        return f"{{a}} + {{d}} * {{b}} {op} {{c}}", [*args[:3], value]   # ops/foreach.py: a + v * b op c
    if base == "pow" and not kwargs and len(args) == 2:
        if overload == "ScalarAndTensor":
            return "pow_f({a}, {b})", args
        if overload == "Scalar" and is_number(args[1]) and args[1] == 2:
            return "{a} * {a}", args[:1]
        if overload in ("Scalar", "List"):
            return "pow_f({a}, {b})", args
    if base == "lerp" and overload == "Scalar" and not kwargs and len(args) == 3:
        return "lerp_f({a}, {b}, {c})", args
    return None


def _val(node):
    return node.meta.get("val") if isinstance(node, Node) else None


def _f32(node) -> bool:
    v = _val(node)
    return isinstance(v, torch.Tensor) and v.dtype == torch.float32 and all(type(s) is int for s in v.shape)


def _constant_like(node) -> str | None:
    """The literal of a float32 full_like (Adam's lerp weight, decomposed), else None."""
    if node.op != "call_function" or node.target is not aten.full_like.default or not is_number(node.args[1]):
        return None
    if node.kwargs.get("dtype") not in (None, torch.float32) or not _f32(node):
        return None
    return f32_literal(node.args[1])


class _Chain:
    """The list ops gathered so far and how each reads its operands."""

    def __init__(self):
        self.n = None
        # foreach node -> (template, operands): ("m", member), ("leaf", nodes read) or ("lit", WGSL literal)
        self.members: dict[Node, tuple] = {}
        self.constants: list[Node] = []        # full_like nodes folded into literals
        self.dests: dict[tuple, Node] = {}     # (member, index) -> the graph input its value is copied into
        self.copies: list[Node] = []
        self.written: set[Node] = set()

    def value(self, node) -> tuple | None:
        """(member, index) where `node` is an element of a member's result."""
        if isinstance(node, Node) and node.target is operator.getitem and node.args[0] in self.members:
            return node.args[0], node.args[1]
        return None

    def reads(self, node: Node) -> bool:
        """Whether `node` reads one of the chain's values or an input the chain writes."""
        return any(self.value(a) is not None or a in self.constants or a in self.written or a in self.members
                   for a in node.all_input_nodes)

    def operand(self, op):
        if is_number(op):
            lit = f32_literal(op)
            return ("lit", lit) if lit is not None else None
        if not isinstance(op, (list, tuple)) or len(op) != self.n or not all(isinstance(e, Node) for e in op):
            return None
        values = [self.value(e) for e in op]
        if all(v is not None for v in values):
            members = {m for m, _ in values}
            if len(members) == 1 and [i for _, i in values] == list(range(self.n)):
                return ("m", values[0][0])
            return None
        if any(v is not None for v in values):
            return None
        literals = {_constant_like(e) for e in op}
        if len(literals) == 1 and None not in literals:
            return ("lit", literals.pop())
        if any(e in self.written or not _f32(e) for e in op):
            return None
        return ("leaf", tuple(op))

    def take(self, node: Node) -> bool:
        rule = _rule(node)
        val = _val(node)
        if rule is None or not isinstance(val, (list, tuple)) or not val or not all(_f32_fake(v) for v in val):
            return False
        if self.n is not None and len(val) != self.n:
            return False
        n_before, self.n = self.n, len(val)
        operands = [self.operand(op) for op in rule[1]]
        if None in operands:
            self.n = n_before
            return False
        for op, (kind, _) in zip(rule[1], operands):
            if kind == "lit" and isinstance(op, (list, tuple)):
                self.constants += [e for e in op if e not in self.constants]
        self.members[node] = (rule[0], operands)
        return True

    def take_copy(self, node: Node, placeholders: set) -> bool:
        if node.target is not aten.copy_.default or len(node.args) != 2 or node.kwargs or node.users:
            return False
        dest, src = node.args
        where = self.value(src)
        if where is None or dest not in placeholders or dest in self.written:
            return False
        dv, sv = _val(dest), _val(src)
        if not _f32(dest) or tuple(dv.shape) != tuple(sv.shape) or where in self.dests:
            return False
        self.dests[where] = dest
        self.copies.append(node)
        self.written.add(dest)
        return True


def _f32_fake(v) -> bool:
    return isinstance(v, torch.Tensor) and v.dtype == torch.float32 and all(type(s) is int for s in v.shape)


class FusedForeach(torch.nn.Module):
    """A fused list-op chain: `kernels` run in order over the bound lists; returns, per output, the list
    of tensors written (graph inputs in place, or new tensors). `fallback` runs the traced ops."""

    def __init__(self, kernels: list, modes: list, shapes: dict, outputs: list, fallback: GraphModule,
                 fallback_dests: list, ops: tuple):
        super().__init__()
        self.kernels, self.modes, self.shapes, self.outputs = kernels, modes, shapes, outputs
        self.fallback, self.fallback_dests, self.ops = fallback, fallback_dests, ops

    def forward(self, *lists):
        lists = [list(lst) for lst in lists]
        if not self._indexable(lists):
            return self._traced(lists)
        for binding, cls in self.outputs:
            lst = lists[binding]
            for i, t in enumerate(lst):
                if t is None:
                    lst[i] = empty(list(self.shapes[cls][i]), torch.float32)
        start = traffic.mark()
        for name, prelude, stores, bindings, modes, size in self.kernels:
            multi_tensor.apply_lists(name, prelude, stores, [lists[b] for b in bindings], modes, size)
        if start is not None:   # profiling or capturing: bytes and FLOPs (one per element and op)
            written = [lists[b] for b, _ in self.outputs]
            read = [lst for lst, (mode, _) in zip(lists, self.modes) if mode != "w"]
            flops = sum(t.numel() for t in written[0]) * len(self.ops)
            traffic.note_traffic([t for lst in read for t in lst], [t for lst in written for t in lst], flops,
                                 since=start)
        return tuple(lists[binding] for binding, _ in self.outputs)

    def _indexable(self, lists) -> bool:
        for lst, (mode, cls) in zip(lists, self.modes):
            for i, t in enumerate(lst):
                if t is None:
                    continue
                if not isinstance(t, WgpuTensor) or t.dtype != torch.float32 or not t.is_contiguous():
                    return False
                if mode == "s" and t.numel() != 1:
                    return False
                if mode != "s" and tuple(t.shape) != tuple(self.shapes[cls][i]):
                    return False
        return True

    def _traced(self, lists):
        """The ops as traced (one kernel each), new values copied into the inputs after all are computed."""
        global traced_runs
        traced_runs += 1
        flat = [t for lst, (mode, _) in zip(lists, self.modes) if mode != "w" for t in lst]
        values = self.fallback(*flat)
        out = []
        for (binding, _), vals, dests in zip(self.outputs, values, self.fallback_dests):
            written = []
            for t, v, is_dest in zip(lists[binding], vals, dests):
                if is_dest:
                    t.copy_(v)
                written.append(t if is_dest else v)
            out.append(written)
        return tuple(out)

    def extra_repr(self) -> str:
        return " -> ".join(self.ops)


def fuse(gm: GraphModule) -> int:
    """Rewrite the list-op chains of `gm` in place; returns the aten ops replaced."""
    graph = gm.graph
    placeholders = {n for n in graph.nodes if n.op == "placeholder"}
    replaced = 0
    chain = _Chain()
    for node in list(graph.nodes):
        if chain.take(node) or node.target is operator.getitem and chain.value(node) is not None:
            continue
        if chain.members and _constant_like(node) is not None and chain.value(node.args[0]) is not None:
            chain.constants.append(node)   # only its shape is read; a member will take it as a literal
            continue
        if chain.members and chain.take_copy(node, placeholders):
            continue
        if chain.members and (node.op == "output" or chain.reads(node) or _writes(node, chain)):
            replaced += _close(gm, chain, node)
            chain = _Chain()
            chain.take(node)
    if replaced:
        graph.lint()
        gm.recompile()
    return replaced


def _writes(node: Node, chain: _Chain) -> bool:
    """An in-place op outside the chain on an input the chain reads (its read must stay before it)."""
    target = getattr(node.target, "__name__", "")
    if node.op != "call_function" or not (target.split(".")[0].endswith("_")) or not node.args:
        return False
    first = node.args[0]
    return any(kind == "leaf" and first in what for _, operands in chain.members.values() for kind, what in operands)


def _close(gm: GraphModule, chain: _Chain, before: Node) -> int:
    """Replace the chain by one FusedForeach call before `before` (0 where it is not worth or not safe)."""
    members = list(chain.members)
    if not chain.copies and len(members) < 2:
        return 0
    if any(u not in chain.members for c in chain.constants for u in c.users):
        return 0
    plan = _plan(chain)
    if plan is None:
        return 0
    module, args, outputs = plan
    serial = 0
    while hasattr(gm, f"navitrain_foreach_{serial}"):
        serial += 1
    name = f"navitrain_foreach_{serial}"
    gm.add_submodule(name, module)
    graph = gm.graph
    with graph.inserting_before(before):
        call = graph.call_module(name, tuple(args))
    gone = set(chain.copies) | set(members) | set(chain.constants)
    gone |= {g for m in members for g in m.users}
    for k, member in enumerate(outputs):
        out = None
        for g in [u for u in member.users if u.target is operator.getitem]:
            outside = [u for u in g.users if u not in gone]
            if outside:
                with graph.inserting_before(before):
                    if out is None:
                        out = graph.call_function(operator.getitem, (call, k))
                    element = graph.call_function(operator.getitem, (out, g.args[1]))
                element.meta.update(g.meta)
                for u in outside:
                    u.replace_input_with(g, element)
    for node in reversed(list(graph.nodes)):
        if node in gone:
            graph.erase_node(node)
    return len(members) + len(chain.copies)


def _plan(chain: _Chain):
    """(module, call arguments, members whose values are returned) or None."""
    n = chain.n
    members = list(chain.members)
    cls = {}
    for m in members:
        _, operands = chain.members[m]
        full = any((k == "m" and cls[w] == FULL) or (k == "leaf" and not _scalar_leaf(w)) for k, w in operands)
        cls[m] = FULL if full else SCALAR
    shapes = {SCALAR: [()] * n, FULL: [None] * n}
    for m in members:
        for i, v in enumerate(_val(m)):
            want = shapes[cls[m]][i]
            if cls[m] == FULL and want is None:
                shapes[FULL][i] = want = tuple(v.shape)
            if tuple(v.shape) != want:
                return None
    leaves = list(dict.fromkeys(w for m in members for k, w in chain.members[m][1] if k == "leaf"))
    for leaf in leaves:
        if not _scalar_leaf(leaf) and any(tuple(_val(e).shape) != shapes[FULL][i] for i, e in enumerate(leaf)):
            return None
    # Values needed after the chain: copied into inputs (dests) or read by other nodes (new tensors).
    needed = []
    for m in members:
        getitems = {u.args[1]: u for u in m.users if u.target is operator.getitem}
        outside = any(u not in chain.copies and u not in chain.constants and u not in chain.members
                      for g in getitems.values() for u in g.users)
        dests = [chain.dests.get((m, i)) for i in range(n)]
        if any(d is not None for d in dests) or outside:
            if outside and any(d is not None for d in dests):
                return None   # read outside and copied: kept simple, left as traced
            needed.append((m, dests))
    if not needed:
        return None
    written = {d: i for _, dests in needed for i, d in enumerate(dests) if d is not None}
    for leaf in leaves:
        for i, e in enumerate(leaf):
            if e in written and (written[e] != i or _scalar_leaf(leaf) != (_cls_of_dest(needed, e, cls) == SCALAR)):
                return None   # read at another index (or as a single element) than the one written: a race
            if e.op != "placeholder" and _view_root(e) in written:
                return None
    # Bindings: leaves (read), then output lists (written; a dest list that is also a leaf is one binding).
    bindings, modes = [], []
    index = {}
    for leaf in leaves:
        index[leaf] = len(bindings)
        bindings.append(list(leaf))
        modes.append(["s" if _scalar_leaf(leaf) else "c", SCALAR if _scalar_leaf(leaf) else FULL])
    outputs = []
    for m, dests in needed:
        key = tuple(dests)
        if None not in dests and key in index:
            outputs.append((index[key], cls[m]))
            continue
        index[key if None not in dests else ("new", m)] = len(bindings)
        outputs.append((len(bindings), cls[m]))
        bindings.append(list(dests))
        modes.append(["w", cls[m]])
    kernels = []
    for kind in (FULL, SCALAR):   # the scalar outputs last: the full kernel reads their old values
        outs = [(m, b) for (m, _), (b, c) in zip(needed, outputs) if c == kind]
        if outs:
            kernels.append(_kernel(chain, cls, kind, outs, index, bindings, modes))
    fallback, fallback_dests = _fallback(chain, leaves, needed)
    ops = tuple(dict.fromkeys(str(m.target).split("::")[-1] for m in members))
    module = FusedForeach(kernels, [tuple(m) for m in modes], shapes, outputs, fallback, fallback_dests, ops)
    return module, bindings, [m for m, _ in needed]


def _cls_of_dest(needed, dest, cls) -> str:
    return next(cls[m] for m, dests in needed if dest in dests)


def _scalar_leaf(leaf) -> bool:
    return all(_val(e).dim() == 0 for e in leaf)


def _view_root(node: Node) -> Node:
    while node.op == "call_function" and getattr(node.target, "is_view", False) and node.args:
        node = node.args[0]
    return node


def _kernel(chain: _Chain, cls: dict, kind: str, outs: list, index: dict, bindings: list, modes: list):
    """(name, prelude, stores, bindings used, their modes, the binding that sizes each tensor)."""
    needed, stack = [], [m for m, _ in outs]
    while stack:
        m = stack.pop()
        if m in needed:
            continue
        needed.append(m)
        stack += [w for k, w in chain.members[m][1] if k == "m"]
    order = [m for m in chain.members if m in needed]
    used = {}   # global binding -> local position

    def load(leaf):
        b = index[leaf]
        if b not in used:
            used[b] = len(used)
        return f"x{used[b]}"

    names, lets = {}, []
    for k, m in enumerate(order):
        template, operands = chain.members[m]
        slots = {}
        for slot, (what, w) in zip("abcd", operands):
            slots[slot] = names[w] if what == "m" else load(w) if what == "leaf" else w
        lets.append(f"  let v{k} = {template.format(**slots)};")
        names[m] = f"v{k}"
    for m, b in outs:
        if b not in used:
            used[b] = len(used)
    local = sorted(used, key=used.get)
    local_modes = "".join(modes[b][0] if kind == FULL or modes[b][0] == "w" else "c" for b in local)
    stores = tuple((used[b], names[m]) for m, b in outs)
    size = used[outs[0][1]]
    name = "foreach_" + "_".join(dict.fromkeys(getattr(m.target, "__name__", "op").split(".")[0][9:]
                                               for m in order))[:48]
    return name, "\n".join(lets), stores, local, local_modes, size


def _fallback(chain: _Chain, leaves: list, needed: list):
    """The chain as traced, over the leaves' tensors flattened, returning each needed value's list."""
    flat_leaves = [e for leaf in leaves for e in leaf]
    # Placeholders one per flattened position (the module passes every read list element, repeats included).
    graph = Graph()
    env = {}
    slots = [graph.placeholder(f"in_{k}") for k in range(len(flat_leaves))]
    for e, slot in zip(flat_leaves, slots):
        env.setdefault(e, slot)
    for node in chain.members:
        _copy_with_inputs(graph, node, env, chain)
    results = []
    for m, _ in needed:
        results.append([graph.call_function(operator.getitem, (env[m], i)) for i in range(chain.n)])
    graph.output(tuple(results))
    return GraphModule(torch.nn.Module(), graph), [[d is not None for d in dests] for _, dests in needed]


def _copy_with_inputs(graph: Graph, node: Node, env: dict, chain: _Chain) -> None:
    def mapped(a):
        if isinstance(a, Node):
            if a in env:
                return env[a]
            where = chain.value(a)
            if where is not None:
                return graph.call_function(operator.getitem, (env[where[0]], where[1]))
            if a in chain.constants:   # full_like of a chain value: the same constant, shaped by that value
                return graph.call_function(aten.full_like.default, (mapped(a.args[0]), a.args[1]),
                                           {k: v for k, v in a.kwargs.items()})
            raise KeyError(a)
        return a
    env[node] = graph.call_function(node.target, torch.fx.node.map_aggregate(node.args, mapped),
                                    torch.fx.node.map_aggregate(node.kwargs, mapped))
