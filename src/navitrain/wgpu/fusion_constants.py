"""Values of a compiled graph that depend on none of its inputs, computed once instead of every replay.

AOTAutograd's graphs rebuild constants on every call: a decomposed causal attention makes its mask
(ones -> tril -> where(mask, 0, -inf)) in every layer, a GPT its position indices (arange). Replayed,
each is a dispatch per step, and eager attention needs none of them (its kernel masks by index).
`fold(gm)` replaces each such value, where something that is not itself a constant reads it, by a
`ConstantValue` call that computes it with the traced ops the first time and returns the same tensor
after that. Only what is safe to keep:
- ops with no tensor inputs or only constant ones, neither random (PyTorch's nondeterministic_seeded
  tag) nor mutating, with one static-shaped tensor result on the wgpu device, at most MAX_ELEMENTS;
  CPU tensors the trace keeps as attributes, and such ops on them with CPU results, lead to them
  (`torch.tensor(data, device="wgpu")` traced: a CPU constant copied to the device);
- not a graph output (a caller could hold and modify it); nothing in these functional graphs writes
  a non-input tensor in place, so the kept tensor stays as computed.
"""
from __future__ import annotations

import operator

import torch
from torch.fx import Graph, GraphModule, Node

from navitrain.wgpu.graphs import is_capturing
from navitrain.wgpu.tensor import DEVICE

MAX_ELEMENTS = 1 << 20


class ConstantValue(torch.nn.Module):
    """A constant of the graph: computed by `compute` on first use, then kept."""

    def __init__(self, compute: GraphModule, ops: tuple):
        super().__init__()
        self.compute, self.ops, self.value = compute, ops, None

    def forward(self):
        if self.value is not None:
            return self.value
        value = self.compute()
        if not is_capturing():   # inside someone's capture the kernels are recorded, not run: no value yet
            self.value = value
        return value

    def extra_repr(self) -> str:
        return " -> ".join(self.ops)


def _constant_op(node: Node, constants: set) -> bool:
    target = node.target
    if node.op == "get_attr":
        # A CPU tensor the trace kept as a constant (torch.tensor(data, device="wgpu") in the traced code: it
        # reaches the device through a copy, which a captured graph cannot make, and need not remake).
        value = operator.attrgetter(target)(node.graph.owning_module)
        return type(value) is torch.Tensor and value.device.type == "cpu" and value.numel() <= MAX_ELEMENTS
    if node.op != "call_function" or not isinstance(target, torch._ops.OpOverload):
        return False
    if target._schema.is_mutable or torch.Tag.nondeterministic_seeded in target.tags:
        return False
    if not all(a in constants for a in node.all_input_nodes):
        return False
    val = node.meta.get("val")
    return isinstance(val, torch.Tensor) and val.device.type in (DEVICE.type, "cpu") \
        and all(type(s) is int for s in val.shape) and val.numel() <= MAX_ELEMENTS


def _on_device(node: Node) -> bool:
    val = node.meta.get("val")
    return isinstance(val, torch.Tensor) and val.device.type == DEVICE.type


def fold(gm: GraphModule) -> int:
    """Replace the graph's constants read by other nodes with ConstantValue calls; returns how many."""
    graph = gm.graph
    constants: set[Node] = set()
    for node in graph.nodes:
        if _constant_op(node, constants):
            constants.add(node)
    # (Only values on the device are kept: a CPU value read by a device op stays as the trace made it.)
    boundary = [n for n in graph.nodes if n in constants and any(u not in constants for u in n.users)
                and _on_device(n) and not escapes(n)]
    for k, node in enumerate(boundary):
        name = f"navitrain_constant_{k}"
        while hasattr(gm, name):
            name += "_"
        compute, ops = _subgraph(node)
        gm.add_submodule(name, ConstantValue(compute, ops))
        with graph.inserting_before(node):
            call = graph.call_module(name, ())
        call.meta.update(node.meta)
        node.replace_all_uses_with(call, delete_user_cb=lambda user: user not in constants)
    for node in reversed(list(graph.nodes)):
        if node in constants and not node.users:
            graph.erase_node(node)
    if boundary:
        graph.lint()
        gm.recompile()
    return len(boundary)


def escapes(node: Node) -> bool:
    """Whether the graph returns `node` or a view of it."""
    return any(u.op == "output" or (getattr(u.target, "is_view", False) and escapes(u)) for u in node.users)


def _subgraph(root: Node) -> tuple[GraphModule, tuple]:
    """A graph with no inputs computing `root` from its constant ancestors, and their op names."""
    needed, stack = set(), [root]
    while stack:
        node = stack.pop()
        if node not in needed:
            needed.add(node)
            stack += node.all_input_nodes
    graph = Graph()
    env = {}
    ordered = [n for n in root.graph.nodes if n in needed]
    for node in ordered:
        env[node] = graph.node_copy(node, lambda n: env[n])
    graph.output(env[root])
    ops = tuple(str(n.target).split("::")[-1] for n in ordered)
    # (The graph module as the root: get_attr constants are copied from it.)
    return GraphModule(root.graph.owning_module, graph), ops
