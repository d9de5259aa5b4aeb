"""A ResNet downsample block's two batch norms in one elementwise pass (compiled graphs, issue 19).

In out = relu(bn2(conv2(h)) + bn_d(conv_d(x))), fusion_norm.py runs the add and the ReLU in bn2's
elementwise pass, which reads bn_d's result: bn_d's own pass writes it and bn2's reads it back. Here
the two batch norm calls become one (FusedBatchNormPair): both sets of statistics as before (from the
convolutions' moments where fusion_conv_stats.py gave them, the running statistics updated in place
where fusion_inplace.py made them so), then one pass reads both convolution outputs and writes the
block output (kernels/batch_norm_pair.py).

In the backward, the gradient of the add is read by both batch norm backwards: fusion_norm.py makes
the first one run dy's chain and store dy (keep_dy), and the second reads it in its two passes. Here
the two become one (FusedBatchNormBackwardPair): a sums pass and an elementwise pass that make dy
from the chain's inputs and serve both batch norms; dy is never stored.

Runs after fusion_conv_stats.py and fusion_inplace.py (it keeps what they set up). At run time a
layout the kernels do not read in place takes the two calls as they were.
"""
from __future__ import annotations

import operator

import torch
from torch.fx import GraphModule, Node

from navitrain.wgpu import fusion, traffic
from navitrain.wgpu.fusion_inplace import BN_IN_PLACE
from navitrain.wgpu.fusion_norm import BN_BACKWARD, BN_FORWARD, FusedBatchNorm, FusedBatchNormBackward
from navitrain.wgpu.kernels import batch_norm_pair
from navitrain.wgpu.kernels.batch_norm_layout import geometry, stats_dtype
from navitrain.wgpu.tensor import empty

aten = torch.ops.aten


def _running(bn: FusedBatchNorm, running_mean, running_var) -> tuple:
    """The new running statistics' tensors, as FusedBatchNorm makes them (updated in place or copies)."""
    if bn.stats_in_place:
        return aten.alias.default(running_mean), aten.alias.default(running_var)
    return aten.clone.default(running_mean), aten.clone.default(running_var)


class FusedBatchNormPair(torch.nn.Module):
    """`main` (a FusedBatchNorm with an epilogue) whose epilogue input number `joined` is the result of
    `side` (a FusedBatchNorm with none). Returns main's five outputs, then side's four statistics."""

    def __init__(self, main: FusedBatchNorm, side: FusedBatchNorm, joined: int):
        super().__init__()
        self.main, self.side, self.joined = main, side, joined

    def forward(self, x1, w1, b1, rm1, rv1, x2, w2, b2, rm2, rv2, *inputs, moments1=None, moments2=None):
        if self._in_place(x1, x2, inputs):
            return self._paired(x1, w1, b1, rm1, rv1, x2, w2, b2, rm2, rv2, inputs, moments1, moments2)
        y2, *side_stats = self.side(x2, w2, b2, rm2, rv2, moments=moments2)
        extra = list(inputs)
        extra.insert(self.joined - 1, y2)
        return (*self.main(x1, w1, b1, rm1, rv1, *extra, moments=moments1), *side_stats)

    def _in_place(self, x1, x2, inputs) -> bool:
        xs, *_ = geometry(x1)
        return (xs is x1 and x1.numel() > 0 and tuple(x1.stride()) == self.main.stride
                and len(inputs) <= batch_norm_pair.MAX_EXTRA
                and all(t.shape == x1.shape and t.stride() == x1.stride() for t in (x2, *inputs)))

    def _paired(self, x1, w1, b1, rm1, rv1, x2, w2, b2, rm2, rv2, inputs, moments1, moments2):
        _, _, A, C, B = geometry(x1)
        start = traffic.mark()
        sides = []
        for bn, x, w, b, rm, rv, moments in ((self.main, x1, w1, b1, rm1, rv1, moments1),
                                             (self.side, x2, w2, b2, rm2, rv2, moments2)):
            new_mean, new_var = _running(bn, rm, rv)
            stat = stats_dtype(x, w, b, new_mean, new_var)
            sides.append(dict(weight=w, bias=b, running_mean=new_mean, running_var=new_var, momentum=bn.momentum,
                              eps=bn.eps, save_mean=empty([C], stat), save_invstd=empty([C], stat), moments=moments))
        out = batch_norm_pair.forward(x1, x2, A, C, B, sides[0], sides[1], self.main.epilogue, self.joined, inputs)
        stats = [s[k] for s in sides for k in ("save_mean", "save_invstd", "running_mean", "running_var")]
        read = tuple(m.partials for m in (moments1, moments2) if m is not None)
        params = tuple(t for t in (w1, b1, w2, b2) if t is not None)
        traffic.note_traffic((x1, x2, *params, *inputs, *read, *stats[2:4], *stats[6:8]), (out, *stats),
                             flops=out.numel() * (len(self.main.ops) + 2), since=start)
        return (out, *stats)

    def extra_repr(self) -> str:
        return f"joined={self.joined}"


class FusedBatchNormBackwardPair(torch.nn.Module):
    """`first` (a FusedBatchNormBackward storing dy for others) and the one other reader of that dy, a
    training native_batch_norm_backward (eps, output_mask): (gi1, gw1, gb1, gi2, gw2, gb2)."""

    def __init__(self, first: FusedBatchNormBackward, eps: float, output_mask: tuple):
        super().__init__()
        self.first, self.eps, self.output_mask = first, eps, output_mask

    def forward(self, x1, w1, rm1, rv1, sm1, si1, x2, w2, rm2, rv2, sm2, si2, *inputs):
        xs, _, A, C, B = geometry(x1)
        if not (xs is x1 and x1.numel() > 0 and all(t.shape == x1.shape and t.stride() == x1.stride()
                                                    for t in (x2, *inputs))):
            gi1, gw1, gb1, dy = self.first(x1, w1, rm1, rv1, sm1, si1, *inputs)
            return (gi1, gw1, gb1, *BN_BACKWARD(dy, x2, w2, rm2, rv2, sm2, si2, True, self.eps,
                                                list(self.output_mask)))
        grads = []
        for x, w, sm, si in ((x1, w1, sm1, si1), (x2, w2, sm2, si2)):
            param_dtype = w.dtype if w is not None else x.dtype
            grads.append(dict(weight=w, save_mean=sm, save_invstd=si, gw=empty([C], param_dtype),
                              gb=empty([C], param_dtype)))
        start = traffic.mark()
        gi1, gi2 = batch_norm_pair.backward(x1, x2, A, C, B, grads[0], grads[1], self.first.eps, self.first.prologue,
                                            inputs)
        out = [gi1, grads[0]["gw"], grads[0]["gb"], gi2, grads[1]["gw"], grads[1]["gb"]]
        for k, wanted in enumerate((*self.first.output_mask, *self.output_mask)):
            if not wanted:
                out[k] = None
        params = tuple(t for t in (w1, w2) if t is not None)
        traffic.note_traffic((x1, x2, *params, sm1, si1, sm2, si2, *inputs), tuple(t for t in out if t is not None),
                             flops=x1.numel() * (len(self.first.ops) + 2), since=start)
        return tuple(out)


def fuse(gm: GraphModule) -> int:
    """Pairs of batch norms (forward and backward) made one call; returns how many pairs."""
    done = 0
    for node in list(gm.graph.nodes):
        if node.op == "call_module":
            module = getattr(gm, node.target, None)
            if isinstance(module, FusedBatchNorm) and module.epilogue is not None:
                done += _pair_forward(gm, node)
            elif isinstance(module, FusedBatchNormBackward) and module.keep_dy:
                done += _pair_backward(gm, node)
    if done:
        gm.graph.lint()
        gm.recompile()
    return done


def _getitems(node: Node) -> dict:
    return {u.args[1]: u for u in node.users if u.target is operator.getitem}


def _side_module(gm: GraphModule, node: Node) -> FusedBatchNorm | None:
    """A training batch norm with no epilogue as a FusedBatchNorm (the plain functional or in-place op too)."""
    if node.op == "call_module":
        module = getattr(gm, node.target, None)
        return module if isinstance(module, FusedBatchNorm) and module.epilogue is None else None
    if node.op != "call_function" or node.target not in (BN_FORWARD, BN_IN_PLACE) or node.args[5] is not True:
        return None
    xv = fusion._value(node.args[0])
    side = FusedBatchNorm(None, tuple(xv.shape), tuple(xv.stride()), float(node.args[6]), float(node.args[7]), ())
    side.stats_in_place = node.target is BN_IN_PLACE
    return side


def _same(a: Node, b: Node) -> bool:
    va, vb = fusion._value(a), fusion._value(b)
    return va is not None and vb is not None and fusion._static(va) and fusion._static(vb) \
        and tuple(va.shape) == tuple(vb.shape) and tuple(va.stride()) == tuple(vb.stride()) and va.dim() >= 2


def _pair_forward(gm: GraphModule, main: Node) -> int:
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    extra = list(main.args[5:])
    for j, y2 in enumerate(extra):
        if not (isinstance(y2, Node) and y2.target is operator.getitem and y2.args[1] == 0
                and set(y2.users) == {main}):
            continue
        side_node = y2.args[0]
        side = _side_module(gm, side_node) if isinstance(side_node, Node) else None
        if side is None or len(extra) - 1 > batch_norm_pair.MAX_EXTRA or not _same(main.args[0], side_node.args[0]):
            continue
        side_items = _getitems(side_node)
        if len(side_items) != len(side_node.users) or \
                any(order[u] < order[main] for k, g in side_items.items() if k != 0 for u in g.users):
            continue
        _replace_forward(gm, main, side_node, side, y2, j, side_items)
        return 1
    return 0


def _replace_forward(gm, main: Node, side_node: Node, side: FusedBatchNorm, y2: Node, j: int, side_items) -> None:
    name = f"navitrain_bn_pair_{main.target}"
    gm.add_submodule(name, FusedBatchNormPair(getattr(gm, main.target), side, j + 1))
    graph = gm.graph
    others = [a for k, a in enumerate(main.args[5:]) if k != j]
    kwargs = {"moments1": main.kwargs.get("moments"), "moments2": side_node.kwargs.get("moments")}
    main_items = _getitems(main)
    with graph.inserting_before(main):
        call = graph.call_module(name, (*main.args[:5], *side_node.args[:5], *others),
                                 {k: v for k, v in kwargs.items() if v is not None})
    main_vals = list(main.meta.get("val", (None,) * 5))
    side_vals = list(side_node.meta.get("val", (None,) * 5)) + [None] * 2
    call.meta["val"] = (*main_vals[:5], *side_vals[1:5])
    with graph.inserting_after(call):
        for k, g in [(k, g) for k, g in main_items.items()] + [(4 + k, g) for k, g in side_items.items() if k]:
            new = graph.call_function(operator.getitem, (call, k))
            new.meta.update(g.meta)
            g.replace_all_uses_with(new)
    for node in (*main_items.values(), main, *side_items.values(), side_node):   # each after its readers
        graph.erase_node(node)


def _pair_backward(gm: GraphModule, first: Node) -> int:
    items = _getitems(first)
    kept = items.get(3)
    if kept is None or len(kept.users) != 1:
        return 0
    second = next(iter(kept.users))
    if second.op != "call_function" or second.target is not BN_BACKWARD or second.args[0] is not kept:
        return 0
    _, x2, w2, rm2, rv2, sm2, si2, train, eps, mask = second.args
    if train is not True or not _same(first.args[0], x2):
        return 0
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    second_inputs = [a for a in second.all_input_nodes if a is not kept]
    if all(order[a] < order[first] for a in second_inputs):
        where = first
    elif all(order[u] > order[second] for k, g in items.items() if k != 3 for u in g.users):
        where = second
    else:
        return 0
    name = f"navitrain_bn_pair_{first.target}"
    gm.add_submodule(name, FusedBatchNormBackwardPair(getattr(gm, first.target), float(eps),
                                                      tuple(bool(m) for m in mask)))
    graph = gm.graph
    x1, w1, rm1, rv1, sm1, si1, *inputs = first.args
    with graph.inserting_before(where):
        call = graph.call_module(name, (x1, w1, rm1, rv1, sm1, si1, x2, w2, rm2, rv2, sm2, si2, *inputs))
    call.meta["val"] = (*first.meta["val"][:3], *second.meta["val"][:3])
    second_items = _getitems(second)
    with graph.inserting_after(call):
        for k, g in [(k, g) for k, g in items.items() if k != 3] + [(3 + k, g) for k, g in second_items.items()]:
            new = graph.call_function(operator.getitem, (call, k))
            new.meta.update(g.meta)
            g.replace_all_uses_with(new)
    for node in (*second_items.values(), second, *items.values(), first):   # each after its readers
        graph.erase_node(node)
    return 1
