"""A compiled graph's counter increments (each training batch norm's num_batches_tracked += 1) in one
dispatch.

fusion_inplace.py turns every `copy_(counter, counter + 1)` into an in-place add, but that is still one
dispatch per batch norm: twenty of a ResNet-18 forward's ~110, for 8 bytes each. `batch(gm)` gathers
every in-place add of the constant 1 to an integer graph input that nothing else in the graph reads
(so the moment it happens does not matter) into one `CounterIncrements` call, a multi-tensor kernel
(kernels/multi_tensor.apply_lists) adding 1 to all of them in the integer type the device stores them
in, as the single adds do.
"""
from __future__ import annotations

import torch
from torch.fx import GraphModule, Node

from navitrain.wgpu import traffic
from navitrain.wgpu.kernels import multi_tensor
from navitrain.wgpu.runtime import runtime
from navitrain.wgpu.tensor import WgpuTensor

aten = torch.ops.aten
_ADDS = (aten.add_.Tensor, aten.add_.Scalar)
_INTEGERS = (torch.int64, torch.int32)


class CounterIncrements(torch.nn.Module):
    """counter += 1 for every argument, in place, in one dispatch per heap and dtype."""

    def forward(self, *counters):
        rt = runtime()
        if not all(isinstance(c, WgpuTensor) and c.dtype in _INTEGERS and c.is_contiguous() for c in counters):
            for c in counters:
                aten.add_.Tensor(c, 1)
            return None
        start = traffic.mark()
        for dtype in dict.fromkeys(c.dtype for c in counters):
            same = [c for c in counters if c.dtype is dtype]
            compute = rt.stypes[dtype].wgsl   # what the single add computes in (i32 where int64 is stored so)
            multi_tensor.apply_lists("counter_increment", "", ((0, f"x0 + {compute}(1)"),), [same], "c", 0,
                                     compute=compute)
        traffic.note_traffic(counters, counters, flops=sum(c.numel() for c in counters), since=start)
        return None


def _increment(node: Node) -> Node | None:
    """The counter a node adds 1 to in place, where the graph reads that counter nowhere else."""
    if node.op != "call_function" or node.target not in _ADDS or node.kwargs or len(node.args) != 2 \
            or node.users or node.args[1] != 1 or type(node.args[1]) is not int:
        return None
    counter = node.args[0]
    val = counter.meta.get("val") if isinstance(counter, Node) else None
    if counter.op != "placeholder" or not isinstance(val, torch.Tensor) or val.dtype not in _INTEGERS \
            or len(counter.users) != 1:
        return None
    return counter


def batch(gm: GraphModule) -> int:
    """Replace two or more counter increments of `gm` (in place) by one CounterIncrements call; returns
    how many increments it replaced."""
    found = [(node, counter) for node in gm.graph.nodes if (counter := _increment(node)) is not None]
    if len(found) < 2:
        return 0
    name = "navitrain_counters"
    while hasattr(gm, name):
        name += "_"
    gm.add_submodule(name, CounterIncrements())
    with gm.graph.inserting_before(found[0][0]):
        gm.graph.call_module(name, tuple(counter for _, counter in found))
    for node, _ in found:
        gm.graph.erase_node(node)
    gm.graph.lint()
    gm.recompile()
    return len(found)
