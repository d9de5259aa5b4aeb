"""Fusion of pointwise chains in the graphs `torch.compile(backend="wgpu")` hands to compile.py.

Unfused, every elementwise aten op of a graph is one dispatch that reads its inputs from memory and
writes its result back; on a card with little memory bandwidth per FLOP (the RX 5600 XT of issue 19)
those passes cost far more of a training step than their arithmetic. `fuse(gm)` finds groups of
elementwise nodes (the ops of fusion_ops.RULES) whose intermediate values nothing outside the group
reads, and replaces each group by one `FusedPointwise` call: one pointwise kernel (kernels/pointwise.py)
that loads the group's inputs once, computes every member as a WGSL `let`, and stores only the result.

Correct first; anything not understood stays as it was:
- every member has the group's output shape; inputs may broadcast to it (a bias, a per-channel scale);
- values are float32/float16/bfloat16 on the wgpu device, computed in f32 as the handlers compute them;
  an intermediate of a narrower dtype is rounded to it (store, then load: exactly what the unfused op
  writes and the next one reads), so only float32 rounding of contracted arithmetic (a * b + c may
  become one fma) can differ from the unfused ops;
- inputs: float or bool tensors on the device, at most len(pointwise.NAMES); scalars become WGSL
  literals of the f32 the unfused handlers would have packed;
- shapes that dynamo made symbolic (a recompile for a new batch size) are left unfused: the output's
  layout must be the traced one (a later view of it relies on it), and a symbolic one is not known
  without adding guards.
NAVITRAIN_WGPU_FUSION=0 turns fusion off (to compare, or to rule it out).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.fx import GraphModule, Node

from navitrain import _env
from navitrain.wgpu import traffic
from navitrain.wgpu.fusion_ops import Rule, f32_literal, rule_for
from navitrain.wgpu.kernels import pointwise
from navitrain.wgpu.runtime import runtime
from navitrain.wgpu.tensor import DEVICE, WgpuTensor, empty

ENABLED = bool(_env.value(_env.WGPU_FUSION))
MAX_INPUTS = len(pointwise.NAMES)
FLOATS = (torch.float32, torch.float16, torch.bfloat16)


@dataclass
class FusionResult:
    groups: int = 0            # fused calls put into the graph
    ops: int = 0               # aten ops they replace
    dispatches_saved: int = 0  # ops - groups: one kernel each instead of one per op
    batch_norms: int = 0       # of the groups, those run inside a batch norm's passes (fusion_norm.py)
    graph_changed: bool = False


class FusedPointwise(torch.nn.Module):
    """One generated pointwise kernel computing a fused group of aten ops into a new tensor with the
    traced output's shape and strides."""

    def __init__(self, name: str, expr: str, prelude: str, load_types: tuple, dtype: torch.dtype,
                 shape: tuple, stride: tuple, ops: tuple):
        super().__init__()
        self.name, self.expr, self.prelude, self.load_types = name, expr, prelude, load_types
        self.dtype, self.shape, self.stride, self.ops = dtype, shape, stride, ops
        # Set by fusion_inplace.py: the last argument is a graph input the result is stored into (its
        # copy_ folded away); the kernel reads every input at the index it writes, so it may be read too.
        self.into_last_input = False

    def forward(self, *inputs):
        if self.into_last_input:
            *inputs, dest = inputs
            if isinstance(dest, WgpuTensor) and tuple(dest.stride()) == self.stride and dest.dtype == self.dtype:
                return self._run(inputs, dest)
            return dest.copy_(self._run(inputs, empty(self.shape, self.dtype, self.stride)))
        return self._run(inputs, empty(self.shape, self.dtype, self.stride))

    def _run(self, inputs, out):
        start = traffic.mark()
        out = pointwise.run(self.name, self.expr, inputs, self.dtype, "f32", out=out, load_types=self.load_types,
                            shape=self.shape, prelude=self.prelude)
        traffic.note_traffic(inputs, (out,), flops=out.numel() * len(self.ops), since=start)
        return out

    def extra_repr(self) -> str:
        return f"{' -> '.join(self.ops)}: {self.prelude.strip()} result {self.expr}"


def fuse(gm: GraphModule, result: FusionResult | None = None) -> FusionResult:
    """Replace the fusable pointwise groups of `gm` (in place) by FusedPointwise calls (counted into
    `result` when given: fusion_norm.fuse has put batch norms' groups there first)."""
    result = result if result is not None else FusionResult()
    rules = {n: r for n in gm.graph.nodes if (r := _fusable(n)) is not None}
    for members, inputs in _groups(gm.graph, rules):
        root = members[-1]
        module = _build(members, inputs, rules)
        name = f"navitrain_fused_{result.groups}"
        gm.add_submodule(name, module)
        with gm.graph.inserting_before(root):
            call = gm.graph.call_module(name, tuple(inputs))
        call.meta.update(root.meta)
        root.replace_all_uses_with(call)
        for node in reversed(members):
            gm.graph.erase_node(node)
        result.groups += 1
        result.ops += len(members)
    result.dispatches_saved = result.ops - result.groups
    if result.groups or result.graph_changed:
        gm.graph.lint()
        gm.recompile()
    return result


def _value(node) -> torch.Tensor | None:
    val = node.meta.get("val") if isinstance(node, Node) else None
    return val if isinstance(val, torch.Tensor) else None


def _static(val: torch.Tensor) -> bool:
    return all(type(s) is int for s in (*val.shape, *val.stride()))


def _fusable(node: Node) -> Rule | None:
    """The node's rule where the node can be a member of a group: a float result on the device, float
    or bool tensor operands there, scalars that have an f32 literal."""
    rule = rule_for(node) if node.op == "call_function" else None
    val = _value(node)
    if rule is None or val is None or val.dtype not in FLOATS or val.device.type != DEVICE.type or not _static(val):
        return None
    for operand, kind in zip(rule.operands, rule.kinds):
        if isinstance(operand, Node):
            v = _value(operand)
            if v is None or v.device != val.device or (v.dtype not in FLOATS and v.dtype != torch.bool):
                return None
            if kind == "b" and v.dtype != torch.bool:
                return None
        elif kind != "f" or f32_literal(operand) is None:
            return None
    return rule


def _tensor_operands(rule: Rule) -> list[Node]:
    return list(dict.fromkeys(o for o in rule.operands if isinstance(o, Node)))


def _groups(graph: torch.fx.Graph, rules: dict) -> list[tuple[list[Node], list[Node]]]:
    """(members in graph order, the last being the result; external tensor inputs) per group of two or
    more. Roots are taken from the end of the graph; a producer joins a group when all its users are
    members (so the group has one result and nothing outside needs an intermediate), it has the
    group's shape, it is read as a float, and the group keeps at most MAX_INPUTS inputs."""
    order = {n: i for i, n in enumerate(graph.nodes)}
    assigned: set[Node] = set()
    found = []
    for root in reversed(list(graph.nodes)):
        if root not in rules or root in assigned:
            continue
        shape = tuple(_value(root).shape)
        members = {root}
        inputs = _tensor_operands(rules[root])
        grew = True
        while grew:
            grew = False
            for candidate in inputs:
                if candidate in assigned or candidate not in rules or tuple(_value(candidate).shape) != shape:
                    continue
                if not all(user in members and _reads_as_float(rules[user], candidate) for user in candidate.users):
                    continue
                grown = [i for i in inputs if i is not candidate]
                grown += [o for o in _tensor_operands(rules[candidate]) if o not in grown]
                if len(grown) > MAX_INPUTS:
                    continue
                members.add(candidate)
                inputs = grown
                grew = True
                break
        if len(members) > 1:
            assigned |= members
            found.append((sorted(members, key=order.__getitem__), inputs))
    return found


def _reads_as_float(rule: Rule, operand: Node) -> bool:
    return all(kind == "f" for o, kind in zip(rule.operands, rule.kinds) if o is operand)


def _build(members: list[Node], inputs: list[Node], rules: dict, names=pointwise.NAMES) -> FusedPointwise:
    """The kernel of one group: inputs as `names` (a, b, c, d); each member but the last a `let`, rounded
    to its dtype where that is narrower than f32; the last member the stored expression."""
    stypes = runtime().stypes
    env, load_types = {}, []
    for k, node in enumerate(inputs):
        is_bool = _value(node).dtype == torch.bool
        env[node] = (names[k], "b" if is_bool else "f")
        load_types.append("bool" if is_bool else "f32")
    lets, expr = [], ""
    for i, node in enumerate(members):
        rule = rules[node]
        slots = {}
        for slot, operand, kind in zip("abc", rule.operands, rule.kinds):
            if isinstance(operand, Node):
                name, has = env[operand]
                # A bool read as a number is 0 or 1, as the unfused ops load it (f32 of the stored 0/1).
                slots[slot] = f"select(0.0, 1.0, {name})" if kind == "f" and has == "b" else name
            else:
                slots[slot] = f32_literal(operand)
        expr = rule.template.format(**slots)
        if node is not members[-1]:
            dtype = _value(node).dtype
            if dtype != torch.float32:
                st = stypes[dtype]
                expr = st.load(st.store(expr), "f32")
            lets.append(f"  let v{i} = {expr};")
            env[node] = (f"v{i}", "f")
    ops = tuple(_op_name(n) for n in members)
    val = _value(members[-1])
    name = "fused_" + "_".join(dict.fromkeys(ops))[:60]
    return FusedPointwise(name, expr, "\n".join(lets), tuple(load_types), val.dtype, tuple(val.shape),
                          tuple(val.stride()), ops)


def _op_name(node: Node) -> str:
    return getattr(node.target, "__name__", str(node.target)).split(".")[0]
