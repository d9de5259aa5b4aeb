"""A convolution's ReLU in its own store, in compiled graphs (issue 19, issue 23).

Networks without batch norm put a ReLU straight after each convolution (AlexNet, VGG, SqueezeNet). Unfused,
the ReLU reads the convolution's whole output back and writes it again; at 224 px VGG's first layers
write 200 MB per activation at batch 16. Here a ReLU that is the only reader of a 2-D convolution's
output (the ReLU's own output is what the backward keeps) becomes one call that runs the convolution
with the formulation the eager handler would choose, and the ReLU in the implicit GEMM's epilogue where
that formulation is the one that runs (kernels/conv/choose.forward_relu); Winograd, 1x1 and depthwise
or grouped layers apply it in one pass after, as before.

Runs after fusion_norm.py and fusion_conv_stats.py: a convolution followed by a batch norm is theirs.
"""
from __future__ import annotations

import torch
from torch.fx import GraphModule

from navitrain.wgpu import fusion, traffic
from navitrain.wgpu.dtypes import NoKernelForDtype
from navitrain.wgpu.fusion_conv_stats import CONVOLUTION, ConvWithStats, _convolution
from navitrain.wgpu.kernels.conv import forward_relu

aten = torch.ops.aten


class ConvReLU(ConvWithStats):
    """relu(aten.convolution(x, w, bias)) for 2-D, not transposed, one-group convolutions of NCHW
    operands; other operands take the two aten ops."""

    def forward(self, x, w, bias):
        if not self._fits(x, w, bias):
            return aten.relu.default(self._plain(x, w, bias))
        out, g = self._output(x, w)
        start = traffic.mark()
        try:
            forward_relu(x, w, bias, g, out)
        except NoKernelForDtype:    # (nothing was launched) the aten ops take their counted CPU fallback
            return aten.relu.default(self._plain(x, w, bias))
        traffic.note_traffic((x, w) + ((bias,) if bias is not None else ()), (out,),
                             flops=2 * out.numel() * g.C * g.KH * g.KW + out.numel(), since=start)
        return out


def fuse(gm: GraphModule) -> int:
    """Each convolution read only by a ReLU made one ConvReLU call; returns how many."""
    done = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target is not CONVOLUTION or len(node.users) != 1:
            continue
        relu = next(iter(node.users))
        if relu.op != "call_function" or relu.target is not aten.relu.default or not _convolution(node):
            continue
        rv = fusion._value(relu)
        if rv is None or not rv.is_contiguous():
            continue
        _, _, _, stride, padding, dilation, _, output_padding, _ = node.args
        name = f"navitrain_conv_relu_{done}"
        gm.add_submodule(name, ConvReLU(stride, padding, dilation, output_padding))
        with gm.graph.inserting_before(relu):
            call = gm.graph.call_module(name, node.args[:3])
        call.meta.update(relu.meta)
        relu.replace_all_uses_with(call)
        gm.graph.erase_node(relu)
        gm.graph.erase_node(node)
        done += 1
    if done:
        gm.graph.lint()
        gm.recompile()
    return done
