"""Batch norm fused with the elementwise ops around it in compiled graphs (issue 19).

A ResNet training step moves most of its bytes in passes over activations around the convolutions.
Unfused, a BatchNorm + ReLU reads its input twice (statistics, then the normalization) and writes y,
then ReLU reads y and writes its result; a residual block's second BatchNorm is followed by an add
and a ReLU (read y and the shortcut, write). Here the elementwise chain that follows a training
batch norm (`_native_batch_norm_legit_functional`, as AOTAutograd writes it), when nothing else reads
the intermediates, runs in the batch norm's own elementwise pass (kernels/batch_norm.Epilogue): the
normalized value never goes to memory. In the backward, the chain that makes a batch norm's dy
(threshold_backward: ReLU's gradient, and any adds before it) runs where the batch norm reads dy, in
its sums pass and its elementwise pass (kernels/batch_norm.Prologue), when nothing else reads dy.

The chains are fusion.py's: the same rules and templates (fusion_ops.py), the same rounding of narrow
intermediates. Other tensors the chains read (the shortcut, the ReLU's saved output) must have the
batch norm input's shape and strides, so every tensor is read at the same index; at run time anything
else (a layout the kernels do not read in place, an empty batch) takes the unfused ops instead.

When the chain's result has other readers too (a residual block's output gradient, read by its last
batch norm and passed on along the shortcut), the first batch norm backward that reads it still runs
the chain in its passes and also stores dy for the others (kernels/shared_dy_batch_norm.py): written
once, as the unfused chain wrote it, and not read back by that batch norm.
"""
from __future__ import annotations

import operator

import torch
from torch.fx import GraphModule, Node

from navitrain.wgpu import fusion, traffic
from navitrain.wgpu.kernels import batch_norm as kernels
from navitrain.wgpu.kernels import pointwise, shared_dy_batch_norm
from navitrain.wgpu.kernels.batch_norm_layout import geometry, stats_dtype
from navitrain.wgpu.tensor import empty

aten = torch.ops.aten
BN_FORWARD = aten._native_batch_norm_legit_functional.default
BN_BACKWARD = aten.native_batch_norm_backward.default
# WGSL names of a chain's values: the normalized value first (forward), then the tensors read.
EPILOGUE_NAMES = ("bn_y", "in_b", "in_c", "in_d")
PROLOGUE_NAMES = ("in_a", "in_b", "in_c")


def _binds(names, k: int = 0) -> str:
    """`let` lines naming pointwise.run's inputs a, b, ... (from the k-th on) as a chain's names."""
    return "\n".join(f"  let {name} = {pointwise.NAMES[k + j]};" for j, name in enumerate(names))


class FusedBatchNorm(torch.nn.Module):
    """A training batch norm (functional form: new running statistics returned) whose normalized value
    goes through an elementwise chain before it is stored (`epilogue`; None: y itself is stored).
    Returns (chain result, save_mean, save_invstd, new running mean, new running var). Where x is a
    convolution's output, the call may get `moments` (fusion_conv_stats.py): x's statistics written by
    the convolution, used instead of a sums pass over x (None: the convolution could not write them)."""

    def __init__(self, epilogue: kernels.Epilogue | None, shape: tuple, stride: tuple, momentum: float, eps: float,
                 ops: tuple):
        super().__init__()
        self.epilogue, self.shape, self.stride = epilogue, shape, stride
        self.momentum, self.eps, self.ops = momentum, eps, ops
        # Set by fusion_inplace.py where the new statistics were only copied back into the running ones:
        # the kernels update those in place (no clones, no copies back).
        self.stats_in_place = False

    def forward(self, x, weight, bias, running_mean, running_var, *inputs, moments=None):
        if self.stats_in_place:
            # Returned as aliases, not as the inputs themselves: AOTAutograd does not take a graph input
            # object back as a saved tensor (the backward saves them; in training it does not read them).
            new_mean, new_var = aten.alias.default(running_mean), aten.alias.default(running_var)
        else:
            new_mean, new_var = aten.clone.default(running_mean), aten.clone.default(running_var)
        xs, _, A, C, B = geometry(x)
        if xs is x and x.numel() > 0 and tuple(x.stride()) == self.stride and _laid_out_as(x, inputs):
            stat = stats_dtype(x, weight, bias, new_mean, new_var)
            save_mean, save_invstd = empty([C], stat), empty([C], stat)
            start = traffic.mark()
            out = kernels.forward(x, A, C, B, weight, bias, new_mean, new_var, True, self.momentum, self.eps,
                                  save_mean, save_invstd, self.epilogue, inputs, moments)
            read = (moments.partials,) if moments is not None else ()
            traffic.note_traffic((x, weight, bias, new_mean, new_var, *inputs, *read),
                                 (out, save_mean, save_invstd, new_mean, new_var),
                                 flops=out.numel() * (len(self.ops) + 1), since=start)
            return out, save_mean, save_invstd, new_mean, new_var
        y, save_mean, save_invstd = aten._native_batch_norm_legit.default(x, weight, bias, new_mean, new_var, True,
                                                                        self.momentum, self.eps)
        e = self.epilogue
        if e is None:
            return y, save_mean, save_invstd, new_mean, new_var
        out = pointwise.run("fused_bn_epilogue", e.expr, [y, *inputs], e.out_dtype, "f32",
                            out=empty(self.shape, e.out_dtype, self.stride), load_types=e.load_types,
                            shape=self.shape, prelude=_binds(e.names) + "\n" + e.prelude)
        return out, save_mean, save_invstd, new_mean, new_var

    def extra_repr(self) -> str:
        if self.epilogue is None:
            return "batch_norm"
        return f"batch_norm -> {' -> '.join(self.ops)}: {self.epilogue.prelude.strip()} result {self.epilogue.expr}"


class FusedBatchNormBackward(torch.nn.Module):
    """native_batch_norm_backward (training) whose dy is made by an elementwise chain from `inputs`
    where it is read. Returns (grad_input, grad_weight, grad_bias) as the aten op does."""

    def __init__(self, prologue: kernels.Prologue, eps: float, output_mask: tuple, ops: tuple, keep_dy: bool = False):
        super().__init__()
        self.prologue, self.eps, self.output_mask, self.ops = prologue, eps, output_mask, ops
        # dy has other readers: returned as a fourth output (the input gradient must be wanted, and the
        # parameters float32: see kernels/shared_dy_batch_norm.py).
        self.keep_dy = keep_dy

    def forward(self, x, weight, running_mean, running_var, save_mean, save_invstd, *inputs):
        xs, _, A, C, B = geometry(x)
        mask = self.output_mask
        in_place = xs is x and x.numel() > 0 and _laid_out_as(x, inputs)
        if self.keep_dy:
            return self._keeping_dy(x, weight, running_mean, running_var, save_mean, save_invstd, inputs, in_place,
                                    A, C, B)
        if in_place:
            param_dtype = weight.dtype if weight is not None else x.dtype
            gw = empty([C], param_dtype) if mask[1] else None
            gb = empty([C], param_dtype) if mask[2] else None
            start = traffic.mark()
            gi = kernels.backward(None, x, A, C, B, weight, save_mean, save_invstd, True, self.eps, gw, gb, mask[0],
                                  self.prologue, inputs)
            traffic.note_traffic((x, weight, save_mean, save_invstd, *inputs), (gi, gw, gb),
                                 flops=x.numel() * (len(self.ops) + 1), since=start)
            return gi, gw, gb
        return self._unfused(x, weight, running_mean, running_var, save_mean, save_invstd, inputs)[:3]

    def _unfused(self, x, weight, running_mean, running_var, save_mean, save_invstd, inputs):
        p = self.prologue
        dy = pointwise.run("fused_bn_prologue", p.expr, list(inputs), p.dtype, "f32",
                           out=empty(x.shape, p.dtype, x.stride()), load_types=p.load_types, shape=tuple(x.shape),
                           prelude=_binds(p.names) + "\n" + p.prelude)
        return (*BN_BACKWARD(dy, x, weight, running_mean, running_var, save_mean, save_invstd, True, self.eps,
                             list(self.output_mask)), dy)

    def _keeping_dy(self, x, weight, running_mean, running_var, save_mean, save_invstd, inputs, in_place, A, C, B):
        """(grad_input, grad_weight, grad_bias, dy)."""
        mask = self.output_mask
        params_f32 = (weight.dtype if weight is not None else x.dtype) == torch.float32
        if not (in_place and params_f32):
            return self._unfused(x, weight, running_mean, running_var, save_mean, save_invstd, inputs)
        gw, gb = empty([C], torch.float32), empty([C], torch.float32)
        start = traffic.mark()
        gi, dy = shared_dy_batch_norm.backward_keeping_dy(x, A, C, B, weight, save_mean, save_invstd, self.eps, gw,
                                                          gb, self.prologue, inputs)
        gw, gb = (gw if mask[1] else None), (gb if mask[2] else None)
        traffic.note_traffic((x, weight, save_mean, save_invstd, *inputs), (gi, gw, gb, dy),
                             flops=x.numel() * (len(self.ops) + 1), since=start)
        return gi, gw, gb, dy

    def extra_repr(self) -> str:
        p = self.prologue
        return f"{' -> '.join(self.ops)} -> batch_norm_backward: {p.prelude.strip()} dy {p.expr}"


def _laid_out_as(x, inputs) -> bool:
    return all(t.shape == x.shape and t.stride() == x.stride() for t in inputs)


def fuse(gm: GraphModule) -> fusion.FusionResult:
    """Batch norms' chains into the batch norms (this module), then the other pointwise groups (fusion.py)."""
    result = fusion.FusionResult()
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    for node in list(gm.graph.nodes):
        if node.op == "call_function" and node.target is BN_FORWARD:
            _fuse_forward(gm, node, order, result)
        elif node.op == "call_function" and node.target is BN_BACKWARD:
            _fuse_backward(gm, node, result)
    result.graph_changed = result.batch_norms > 0
    return fusion.fuse(gm, result)


def _same_layout(node, like) -> bool:
    v, w = fusion._value(node), like
    return v is not None and w is not None and v.dtype in fusion.FLOATS and tuple(v.shape) == tuple(w.shape) \
        and tuple(v.stride()) == tuple(w.stride()) and v.device == w.device


def _fuse_forward(gm: GraphModule, bn: Node, order: dict, result) -> None:
    x, weight, bias, running_mean, running_var, training, momentum, eps = bn.args
    xv = fusion._value(x)
    getitems = {u.args[1]: u for u in bn.users if u.target is operator.getitem}
    y = getitems.get(0)
    if training is not True or xv is None or not fusion._static(xv) or len(getitems) != len(bn.users) \
            or y is None or len(y.users) != 1:
        return
    # Down from y: each next op joins while it is the only reader of the chain so far.
    members, inputs, rules, current = [], [y], {}, y
    while len(current.users) == 1:
        user = next(iter(current.users))
        rule = fusion._fusable(user)
        if rule is None or not _same_layout(user, xv) or not fusion._reads_as_float(rule, current):
            break
        grown = inputs + [o for o in fusion._tensor_operands(rule) if o not in inputs and o not in members]
        if len(grown) > len(EPILOGUE_NAMES) or not all(_same_layout(o, xv) for o in grown[1:]):
            break
        members.append(user)
        rules[user] = rule
        inputs, current = grown, user
    if not members:
        return
    root = members[-1]
    # The other outputs (statistics) move after the fused call: nothing may read them before it.
    if any(order[u] < order[root] for k, g in getitems.items() if k != 0 for u in g.users):
        return
    built = fusion._build(members, inputs, rules, names=EPILOGUE_NAMES)
    epilogue = kernels.Epilogue(built.prelude, built.expr, EPILOGUE_NAMES[:len(inputs)], built.load_types,
                                built.dtype)
    module = FusedBatchNorm(epilogue, built.shape, built.stride, float(momentum), float(eps), built.ops)
    name = f"navitrain_bn_{result.batch_norms}"
    gm.add_submodule(name, module)
    graph = gm.graph
    with graph.inserting_before(root):
        call = graph.call_module(name, (x, weight, bias, running_mean, running_var, *inputs[1:]))
        outs = {0: graph.call_function(operator.getitem, (call, 0))}
        for k in range(1, 5):
            outs[k] = graph.call_function(operator.getitem, (call, k))
    vals = list(bn.meta.get("val", (None,) * 5))
    vals[0] = root.meta.get("val")
    call.meta["val"] = tuple(vals)
    outs[0].meta.update(root.meta)
    root.replace_all_uses_with(outs[0])
    for k, g in getitems.items():
        if k != 0:
            outs[k].meta.update(g.meta)
            g.replace_all_uses_with(outs[k])
    for node in reversed(members):
        graph.erase_node(node)
    for node in getitems.values():
        graph.erase_node(node)
    graph.erase_node(bn)
    for k, node in outs.items():
        if not node.users:
            graph.erase_node(node)
    _count(result, len(members))


def _fuse_backward(gm: GraphModule, bn: Node, result) -> None:
    grad, x, weight, running_mean, running_var, save_mean, save_invstd, train, eps, mask = bn.args
    xv = fusion._value(x)
    rule = fusion._fusable(grad) if isinstance(grad, Node) else None
    if train is not True or xv is None or rule is None or not _same_layout(grad, xv):
        return
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    keep_dy = len(grad.users) > 1
    if keep_dy and not _can_keep_dy(bn, grad, weight, mask, xv, order):
        return
    # Up from dy: a producer joins when the chain is its only reader (fusion.py's rule for groups).
    members, inputs, rules = {grad}, fusion._tensor_operands(rule), {grad: rule}
    grew = True
    while grew:
        grew = False
        for candidate in inputs:
            cand_rule = fusion._fusable(candidate)
            if cand_rule is None or not _same_layout(candidate, xv) \
                    or not all(u in members and fusion._reads_as_float(rules[u], candidate) for u in candidate.users):
                continue
            grown = [i for i in inputs if i is not candidate]
            grown += [o for o in fusion._tensor_operands(cand_rule) if o not in grown]
            if len(grown) > len(PROLOGUE_NAMES):
                continue
            members.add(candidate)
            rules[candidate] = cand_rule
            inputs, grew = grown, True
            break
    if len(inputs) > len(PROLOGUE_NAMES) or not all(_same_layout(i, xv) for i in inputs):
        return
    if any(fusion._value(i).dtype == torch.bool for i in inputs):   # the sums pass loads every input as f32
        return
    ordered = sorted(members, key=order.__getitem__)
    built = fusion._build(ordered, inputs, rules, names=PROLOGUE_NAMES)
    prologue = kernels.Prologue(built.prelude, built.expr, PROLOGUE_NAMES[:len(inputs)], built.load_types,
                                built.dtype)
    module = FusedBatchNormBackward(prologue, float(eps), tuple(bool(m) for m in mask), built.ops, keep_dy)
    name = f"navitrain_bn_{result.batch_norms}"
    gm.add_submodule(name, module)
    # Before dy's first reader when others read it (they read the call's fourth output instead).
    first = min((u for u in grad.users), key=order.__getitem__)
    with gm.graph.inserting_before(first):
        call = gm.graph.call_module(name, (x, weight, running_mean, running_var, save_mean, save_invstd, *inputs))
        kept = gm.graph.call_function(operator.getitem, (call, 3)) if keep_dy else None
    call.meta.update(bn.meta)
    if keep_dy:
        call.meta["val"] = (*bn.meta["val"], grad.meta["val"])
        kept.meta.update(grad.meta)
        grad.replace_all_uses_with(kept, delete_user_cb=lambda user: user is not bn)
    bn.replace_all_uses_with(call)
    gm.graph.erase_node(bn)
    for node in reversed(ordered):
        gm.graph.erase_node(node)
    _count(result, len(members))


def _can_keep_dy(bn: Node, grad: Node, weight, mask, xv, order: dict) -> bool:
    """Whether bn may run grad's chain and store dy for grad's other readers: the input gradient is
    wanted (dy is stored by its pass), parameters are float32, and every operand of bn is there before
    grad's first reader (where the call goes)."""
    wv = fusion._value(weight) if isinstance(weight, Node) else None
    params_f32 = (wv.dtype if wv is not None else xv.dtype) == torch.float32
    if not mask[0] or not params_f32 or (weight is not None and wv is None) or "val" not in bn.meta:
        return False
    first = min(order[u] for u in grad.users)
    return all(order[a] < first for a in bn.all_input_nodes if a is not grad)


def _count(result, members: int) -> None:
    result.batch_norms += 1
    result.groups += 1
    result.ops += members + 1
