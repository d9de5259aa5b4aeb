"""A compiled graph's new values of its inputs written where the inputs are, not copied there.

With keep_inference_input_mutations, AOTAutograd ends a graph that updates an input (a batch norm's
running statistics and num_batches_tracked in a training forward) with `copy_(input, new value)`, the
new value computed into a fresh tensor first: a clone of each running statistic, the kernel writing
the clone, then a copy kernel back, three dispatches and three passes where the update itself is one.
`fold_copies(gm)` lets the kernel that computes the value write the input's memory itself:
- a batch norm (fused, fusion_norm.FusedBatchNorm, or not) updates its running statistics in place;
- a fused pointwise kernel (fusion.FusedPointwise) stores into the input;
- an aten op with an in-place form whose first operand is that input (num_batches_tracked + 1)
  becomes the in-place op.
Only where no node reads the input between the value's computation and the copy (those would see the
new value early); the list ops of an optimizer are fusion_foreach.py's.
"""
from __future__ import annotations

import operator

import torch
from torch.fx import GraphModule, Node

from navitrain.wgpu import fusion
from navitrain.wgpu.fusion_norm import BN_FORWARD, FusedBatchNorm

aten = torch.ops.aten
BN_IN_PLACE = aten._native_batch_norm_legit.default
# Functional ops and their in-place forms (same dtype and layout as the first operand: checked per node).
IN_PLACE = {aten.add.Tensor: aten.add_.Tensor, aten.add.Scalar: aten.add_.Scalar,
            aten.sub.Tensor: aten.sub_.Tensor, aten.sub.Scalar: aten.sub_.Scalar,
            aten.mul.Tensor: aten.mul_.Tensor, aten.mul.Scalar: aten.mul_.Scalar}


def fold_copies(gm: GraphModule) -> int:
    """Fold the foldable `copy_` of new values into graph inputs (in place); returns how many."""
    graph = gm.graph
    order = {n: i for i, n in enumerate(graph.nodes)}
    copies = {}   # value node -> copy_ node, for copies into a graph input that nothing reads back
    for node in graph.nodes:
        if node.op == "call_function" and node.target is aten.copy_.default and len(node.args) == 2 \
                and not node.kwargs and not node.users and isinstance(node.args[1], Node) \
                and node.args[0].op == "placeholder":
            copies[node.args[1]] = node
    folded = 0
    for value, copy in list(copies.items()):
        if value in copies:   # else erased with a batch norm's other statistic
            folded += _fold(gm, value, copy, copies, order)
    if folded:
        graph.lint()
        gm.recompile()
    return folded


def _quiet_between(dest: Node, start: Node, copy: Node, order: dict, allowed=()) -> bool:
    """No node reads `dest` after `start` and before `copy` (those would see the new value early), and no
    view of it exists (a view read by the kernel, or later, would alias the memory now written early)."""
    return all(u is copy or u in allowed or (not getattr(u.target, "is_view", False)
                                             and (order[u] <= order[start] or order[u] > order[copy]))
               for u in dest.users)


def _same_layout(a: Node, b: Node) -> bool:
    va, vb = fusion._value(a), fusion._value(b)
    return va is not None and vb is not None and va.dtype == vb.dtype and tuple(va.shape) == tuple(vb.shape) \
        and tuple(va.stride()) == tuple(vb.stride())


def _fold(gm: GraphModule, value: Node, copy: Node, copies: dict, order: dict) -> int:
    dest = copy.args[0]
    if not _same_layout(value, dest):
        return 0
    if value.target is operator.getitem:
        return _fold_batch_norm(gm, value.args[0], copies, order)
    # Other readers of the value read the input instead from now on: nothing may write it after the copy.
    if len(value.users) > 1 and not all(u is copy or u.op == "output" or order[u] < order[copy] for u in dest.users):
        return 0
    if value.op == "call_module" and isinstance(getattr(gm, value.target), fusion.FusedPointwise):
        module = getattr(gm, value.target)
        if module.into_last_input or not _quiet_between(dest, value, copy, order, allowed=(value,)):
            return 0
        module.into_last_input = True
        value.args = (*value.args, dest)
        gm.graph.erase_node(copies.pop(value))
        return 1
    if value.op == "call_function" and value.target in IN_PLACE and value.args and value.args[0] is dest \
            and _quiet_between(dest, value, copy, order, allowed=(value,)):
        value.target = IN_PLACE[value.target]
        gm.graph.erase_node(copies.pop(value))
        return 1
    return 0


def _fold_batch_norm(gm: GraphModule, bn: Node, copies: dict, order: dict) -> int:
    """Both running statistics of a training batch norm, or neither."""
    fused = bn.op == "call_module" and isinstance(getattr(gm, bn.target), FusedBatchNorm)
    if not fused and not (bn.op == "call_function" and bn.target is BN_FORWARD and bn.args[5] is True):
        return 0
    getitems = {u.args[1]: u for u in bn.users if u.target is operator.getitem}
    stats = [(getitems.get(k), bn.args[k]) for k in (3, 4)]
    pairs = []
    for g, dest in stats:
        copy = copies.get(g)
        # Besides the copy, the new statistics may be returned (saved for the backward, which in training
        # does not read them): the running statistics themselves hold those values from here on.
        if g is None or copy is None or copy.args[0] is not dest \
                or not all(u is copy or u.op == "output" for u in g.users) \
                or not _quiet_between(dest, bn, copy, order, allowed=(bn,)):
            return 0
        pairs.append((g, copy))
    graph = gm.graph
    for g, copy in pairs:
        dest = copy.args[0]
        graph.erase_node(copies.pop(g))
        if fused:   # the module returns aliases of the running statistics
            continue
        if g.users:   # an alias of the statistics (see FusedBatchNorm.stats_in_place)
            with graph.inserting_before(g):
                alias = graph.call_function(aten.alias.default, (dest,))
            alias.meta.update(g.meta)
            g.replace_all_uses_with(alias)
        graph.erase_node(g)
    if fused:
        getattr(gm, bn.target).stats_in_place = True
        return 2
    # The functional form's clones go: the in-place op updates the statistics it is given.
    with graph.inserting_before(bn):
        in_place = graph.call_function(BN_IN_PLACE, tuple(bn.args[:8]))
    order[in_place] = order[bn]
    in_place.meta["val"] = tuple(bn.meta["val"][:3]) if "val" in bn.meta else None
    for k, g in getitems.items():
        if k < 3:
            g.args = (in_place, k)
    graph.erase_node(bn)
    return 2
