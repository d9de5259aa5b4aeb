"""Matrix products fused with the elementwise ops after them in compiled graphs (issue 19).

A transformer step's products are followed by cheap elementwise ops that read the product back from
memory: the residual add after an attention or MLP projection (`x + out_proj(h)`), the attention mask
added to the scores (`q @ k.T + mask`), the scale of a score gradient, and in the backward GELU's
gradient of the product that made it (`gelu_backward(dy @ w, h)`). Unfused, the product is written,
then read back and the result written again. Here the chain of elementwise ops that reads a product
(`mm`, `addmm`, `bmm`), when nothing else reads the product or the chain's intermediates, runs in the
GEMM's own store (kernels/gemm_operands.Tail): the product never goes to memory, and one dispatch does
what two did.

The chains are fusion.py's: the same rules and templates (fusion_ops.py), the same rounding of narrow
intermediates, and the product rounded to its dtype first, as the unfused product is stored. A chain may
follow views of the product that walk all of it in some order (`addmm` -> `view` to [tokens, batch,
features] -> `transpose` to batch first, as nn.TransformerEncoderLayer does); every other tensor it reads
must be indexable at the product's (row, col, batch), which is what viewing it, in that order, as the
product's shape decides (broadcast ones included: a mask shared by every head, a bias over columns). At
run time a layout other than the traced one takes the unfused ops instead.

Runs before fusion_norm.py (which fuses the remaining pointwise groups at its end).
"""
from __future__ import annotations

import operator

import torch
from torch._prims_common import make_contiguous_strides_for
from torch.fx import GraphModule, Node

from navitrain.wgpu import fusion, traffic
from navitrain.wgpu.kernels import gemm
from navitrain.wgpu.tensor import empty, wrap

aten = torch.ops.aten
PRODUCTS = (aten.mm.default, aten.addmm.default, aten.bmm.default)
VIEWS = (aten.view.default, aten._unsafe_view.default, aten.reshape.default, aten.transpose.int, aten.permute.default,
         aten.t.default)
# WGSL names of a chain's values: the product first, then the tensors read.
TAIL_NAMES = ("gemm_v", "in_b", "in_c", "in_d")


class FusedGemm(torch.nn.Module):
    """A product (mm, addmm or bmm; arguments as the aten op's, then the tensors the chain reads) whose
    values go through an elementwise chain before they are stored. Returns the chain's result with the
    traced shape, strides and dtype."""

    def __init__(self, op, alpha: float, beta: float, tail: gemm.Tail, product_shape: tuple, out_strides: tuple,
                 inputs: tuple, chain: fusion.FusedPointwise, start: tuple, out_batch_lo: tuple = (1, 0)):
        super().__init__()
        self.op, self.alpha, self.beta, self.tail = op, alpha, beta, tail
        self.product_shape = product_shape    # the product's [B?, M, N]
        self.out_strides = out_strides        # the result's strides over that shape
        self.out_batch_lo = out_batch_lo      # (1, 0), or its batch split in two (gemm.gemm's out_batch_lo)
        self.inputs = inputs                  # per tensor the chain reads: (shape, strides, (row, col, batch) strides)
        self.chain = chain                    # the chain alone, for layouts the fused kernel does not read
        # (shape, strides) of the view of the product the chain reads. With tail.keep_product the call
        # returns (chain result, that view), for the graph's other readers of it.
        self.start = start

    def forward(self, a, b, *rest):
        bias, extras = (rest[0], rest[1:]) if self.op is aten.addmm.default else (None, rest)
        cin_strides = gemm.strides_broadcast_to(bias, *self.product_shape) if bias is not None else None
        if (a.shape[-1] == 0 or (bias is not None and cin_strides is None)
                or any(tuple(t.shape) != shape or tuple(t.stride()) != strides
                       for t, (shape, strides, _) in zip(extras, self.inputs))):
            return self._unfused(a, b, bias, extras)
        chain = self.chain
        start = traffic.mark()
        out = empty(chain.shape, chain.dtype, chain.stride)
        product = wrap(out._ws, self.product_shape, self.out_strides, out.storage_offset(), chain.dtype)
        tail_inputs = tuple((t, over) for t, (_, _, over) in zip(extras, self.inputs))
        kept = kept_view = None
        if self.tail.keep_product:   # laid out as the view of a contiguous product is: contiguous over it
            dtype, (shape, strides) = self.tail.product_dtype, self.start
            kept = empty(shape, dtype, strides)
            over = make_contiguous_strides_for(self.product_shape)
            kept_view = wrap(kept._ws, self.product_shape, over, kept.storage_offset(), dtype)
        if bias is None:
            gemm.gemm(a, b, product, self.alpha, tail=self.tail, tail_inputs=tail_inputs, kept=kept_view,
                      out_batch_lo=self.out_batch_lo)
        else:
            gemm.gemm(a, b, product, self.alpha, self.beta, bias, cin_strides=(*cin_strides, 0), tail=self.tail,
                      tail_inputs=tail_inputs, kept=kept_view, out_batch_lo=self.out_batch_lo)
        flops = 2 * product.numel() * a.shape[-1] + out.numel() * len(chain.ops)
        written = (out,) if kept is None else (out, kept)
        traffic.note_traffic((a, b, *rest), written, flops=flops, since=start)
        return out if kept is None else (out, kept)

    def _unfused(self, a, b, bias, extras):
        """The traced ops one by one: the product, the view, the chain (PyTorch's errors included)."""
        if bias is None:
            product = self.op(a, b)
        else:
            product = self.op(bias, a, b, beta=self.beta, alpha=self.alpha)
        shape, strides = self.start
        viewed = aten.as_strided.default(product, list(shape), list(strides), product.storage_offset())
        out = self.chain(viewed, *extras)
        return (out, viewed) if self.tail.keep_product else out

    def extra_repr(self) -> str:
        return f"{self.op.__name__.split('.')[0]} -> {' -> '.join(self.chain.ops)}: {self.chain.extra_repr()}"


def fuse(gm: GraphModule) -> int:
    """Each product whose only reader is an elementwise chain made one FusedGemm call; returns how many."""
    done = 0
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    for node in list(gm.graph.nodes):
        if node.op == "call_function" and node.target in PRODUCTS and _fuse(gm, node, done, order):
            done += 1
            order = {n: i for i, n in enumerate(gm.graph.nodes)}
    if done:
        gm.graph.lint()
        gm.recompile()
    return done


def _fuse(gm: GraphModule, product: Node, index: int, order: dict) -> bool:
    """Fuse the chain after `product` into it (FusedGemm call number `index`); whether it did."""
    pv = fusion._value(product)
    if pv is None or pv.dtype not in fusion.FLOATS or not fusion._static(pv) or not pv.is_contiguous():
        return False
    alpha, beta = _scales(product)
    if alpha is None:
        return False
    # The chain starts at the product or at the last of the views that read it in turn (addmm -> view to
    # [tokens, batch, features] -> transpose to batch first), which must walk the product in some order.
    start, views = product, []
    while len(start.users) == 1:
        user = next(iter(start.users))
        uv = fusion._value(user)
        if user.op != "call_function" or user.target not in VIEWS or uv is None or not fusion._static(uv):
            break
        start = user
        views.append(user)
    sv = fusion._value(start)
    walk = _walk_order(sv, pv)
    if walk is None:
        return False
    shape = tuple(sv.shape)
    # Down from the product: each next op joins while it is the only reader of the chain so far. Where the
    # product (or its view) has other readers (GELU's input, saved for its backward), one elementwise
    # reader may still start a chain, and the product is kept (stored as well) for the others.
    members, inputs, rules, current = [], [start], {}, start
    users = list(start.users)
    readers = [u for u in users if _joins(u, current, shape, pv.shape, walk, inputs, members)]
    keep = len(users) > 1
    while readers and (len(users) == 1 or (keep and not members and len(readers) == 1)):
        user = readers[0]
        rule = fusion._fusable(user)
        members.append(user)
        rules[user] = rule
        inputs = inputs + [o for o in fusion._tensor_operands(rule) if o not in inputs and o not in members]
        current, users = user, list(user.users)
        readers = [u for u in users if _joins(u, current, shape, pv.shape, walk, inputs, members)]
    if not members:
        return False
    root = members[-1]
    if any(u.op == "call_function" and u.target is aten.copy_.default for u in root.users):
        return False   # written back into a graph input (a buffer update): fusion_inplace.py's, in place
    if keep and any(order[u] < order[root] for u in start.users if u is not members[0]):
        return False   # another reader of the product comes before the fused call: it could not read the kept one
    rv = fusion._value(root)
    out_over = _over_product(rv, shape, pv.shape, walk, split=True)
    if out_over is None:
        return False
    built = fusion._build(members, inputs, rules, names=TAIL_NAMES)
    tail = gemm.Tail(TAIL_NAMES[0], TAIL_NAMES[1:len(inputs)], built.load_types[1:], built.prelude, built.expr,
                     pv.dtype, keep_product=keep)
    chain = fusion._build(members, inputs, rules)
    extras = tuple((tuple(fusion._value(o).shape), tuple(fusion._value(o).stride()),
                    _over_product(fusion._value(o), shape, pv.shape, walk)[:3]) for o in inputs[1:])
    module = FusedGemm(product.target, alpha, beta, tail, tuple(pv.shape), _product_order(out_over, pv.dim()),
                       extras, chain, (tuple(sv.shape), tuple(sv.stride())), out_over[3:])
    name = f"navitrain_gemm_{index}"
    gm.add_submodule(name, module)
    graph = gm.graph
    with graph.inserting_before(root):
        operands = product.args[1:] + product.args[:1] if product.target is aten.addmm.default else product.args
        call = graph.call_module(name, (*operands, *inputs[1:]))
        if keep:
            result = graph.call_function(operator.getitem, (call, 0))
            kept_node = graph.call_function(operator.getitem, (call, 1))
    if keep:
        call.meta["val"] = (root.meta.get("val"), start.meta.get("val"))
        result.meta.update(root.meta)
        kept_node.meta.update(start.meta)
        start.replace_all_uses_with(kept_node, delete_user_cb=lambda user: user is not members[0])
    else:
        call.meta.update(root.meta)
        result = call
    root.replace_all_uses_with(result)
    for node in reversed(members):
        graph.erase_node(node)
    for node in reversed(views):
        graph.erase_node(node)
    graph.erase_node(product)
    return True


def _joins(user: Node, current: Node, shape: tuple, product_shape, walk: tuple, inputs: list, members: list) -> bool:
    """Whether `user` may join the chain that has made `current`: an elementwise op of the chain's
    shape that reads it as a float, leaving at most len(TAIL_NAMES) tensors read, each indexable at the
    product's elements."""
    rule = fusion._fusable(user)
    if rule is None or tuple(fusion._value(user).shape) != shape or not fusion._reads_as_float(rule, current):
        return False
    grown = inputs + [o for o in fusion._tensor_operands(rule) if o not in inputs and o not in members]
    return len(grown) <= len(TAIL_NAMES) and all(
        _over_product(fusion._value(o), shape, product_shape, walk) is not None for o in grown[1:])


def _walk_order(view: torch.Tensor, product: torch.Tensor) -> tuple | None:
    """The order of `view`'s dimensions in which it walks the (contiguous) product it views element by
    element, outermost first; None where it is not such a view (a slice, a broadcast)."""
    if view.numel() != product.numel() or view.storage_offset() != product.storage_offset():
        return None
    dims = sorted(range(view.dim()), key=lambda d: (view.shape[d] == 1, -view.stride()[d]))
    step = 1
    for d in reversed(dims):
        if view.shape[d] != 1:
            if view.stride()[d] != step:
                return None
            step *= view.shape[d]
    return tuple(dims)


def _scales(product: Node) -> tuple:
    """(alpha, beta) of an addmm with float scales ((1, 0) for mm and bmm); (None, None) otherwise."""
    if product.target is not aten.addmm.default:
        return 1.0, 0.0
    beta, alpha = product.kwargs.get("beta", 1), product.kwargs.get("alpha", 1)
    if not all(type(v) in (int, float) for v in (alpha, beta)) or len(product.args) != 3:
        return None, None
    return float(alpha), float(beta)


def _over_product(val: torch.Tensor | None, shape: tuple, product_shape, walk: tuple,
                  split: bool = False) -> tuple | None:
    """The (row, col, batch) strides at which `val`, broadcast to the chain's `shape`, holds the element
    of the product at (row, col, batch), the chain's dimensions taken in the order `walk` in which its
    start walks the product; None where no strides do (or `val` is not a static tensor). With `split`,
    a batch that needs two strides (heads inside sequences) is allowed too: (row, col, outer batch stride,
    inner batch count, inner batch stride); otherwise the last two are (1, 0)."""
    if val is None or not fusion._static(val):
        return None
    try:
        walked = torch.empty_strided(val.shape, val.stride(), device="meta").expand(shape).permute(walk)
    except (RuntimeError, ValueError):   # it does not broadcast to the chain's shape
        return None
    s = _strides_as(walked, tuple(product_shape))
    if s is not None:
        return (s[-2], s[-1], s[0] if len(s) == 3 else 0, 1, 0)
    outer = walked.shape[0]
    if not split or len(product_shape) != 3 or product_shape[0] % outer or outer in (1, product_shape[0]):
        return None
    B, M, N = product_shape
    s = _strides_as(walked, (outer, B // outer, M, N))
    return None if s is None else (s[2], s[3], s[0], B // outer, s[1])


def _strides_as(t: torch.Tensor, shape: tuple) -> tuple | None:
    """The strides of t viewed as `shape`, or None where its layout does not fold into those dimensions."""
    try:
        return t.view(shape).stride()
    except (RuntimeError, ValueError):   # (ValueError: fake mode's reference implementation of view)
        return None


def _product_order(over: tuple, dims: int) -> tuple:
    """(row, col, batch) strides as a tensor's strides over the product's [B?, M, N]."""
    row, col, batch = over[:3]
    return (batch, row, col) if dims == 3 else (row, col)
