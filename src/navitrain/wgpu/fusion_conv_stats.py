"""Batch norm statistics from the convolution that makes the batch norm's input (compiled graphs, issue 19).

A training batch norm reads its input twice: once to sum it per channel, once to normalize it. When the
input is a convolution's output, the first read is avoidable: the convolution's forward kernel has
every output value in registers before it stores it, and there it also reduces them per channel and
column tile (kernels/conv/channel_stats.py). This pass finds each training batch norm (after
fusion_norm.py: a FusedBatchNorm call, or the plain functional op) whose input is an
`aten.convolution` node, replaces that node by a `ConvWithStats` call returning (output, moments),
and hands the moments to the batch norm, a FusedBatchNorm (the plain op becomes one with no epilogue).
The convolution stays where it was; its output is still stored for its other readers (the backward).

At run time a layer whose forward is not the NCHW implicit GEMM (Winograd, depthwise, grouped,
channels_last) returns moments None, and the batch norm computes its statistics itself.
"""
from __future__ import annotations

import operator

import torch
from torch.fx import GraphModule, Node

from navitrain.wgpu import fusion, traffic
from navitrain.wgpu.dtypes import NoKernelForDtype
from navitrain.wgpu.fusion_norm import BN_FORWARD, FusedBatchNorm
from navitrain.wgpu.kernels.conv import Geometry
from navitrain.wgpu.kernels.conv.channel_stats import forward_with_stats
from navitrain.wgpu.tensor import WgpuTensor, empty

aten = torch.ops.aten
CONVOLUTION = aten.convolution.default
FLOATS = (torch.float32, torch.float16, torch.bfloat16)


def _out_size(n, k, s, p, d):
    return (n + 2 * p - d * (k - 1) - 1) // s + 1


class ConvWithStats(torch.nn.Module):
    """aten.convolution (2-D, not transposed, one group, an NCHW result) that also returns the per-tile
    statistics of its output (kernels/conv/channel_stats.ConvMoments), or None where its forward cannot
    write them."""

    def __init__(self, stride, padding, dilation, output_padding):
        super().__init__()
        self.stride, self.padding, self.dilation = tuple(stride), tuple(padding), tuple(dilation)
        self.output_padding = list(output_padding)

    def forward(self, x, w, bias):
        if not self._fits(x, w, bias):
            return self._plain(x, w, bias), None
        out, g = self._output(x, w)
        start = traffic.mark()
        try:
            moments = forward_with_stats(x, w, bias, g, out)
        except NoKernelForDtype:    # (nothing was launched) the aten op takes its counted CPU fallback
            return self._plain(x, w, bias), None
        written = (out, moments.partials) if moments is not None else (out,)
        traffic.note_traffic((x, w) + ((bias,) if bias is not None else ()), written,
                             flops=2 * out.numel() * g.C * g.KH * g.KW, since=start)
        return out, moments

    def _output(self, x, w) -> tuple:
        """(a new NCHW output, the layer's Geometry) for 4-D operands x and w."""
        N, C, H, W = x.shape
        OC, _, KH, KW = w.shape
        OH = _out_size(H, KH, self.stride[0], self.padding[0], self.dilation[0])
        OW = _out_size(W, KW, self.stride[1], self.padding[1], self.dilation[1])
        g = Geometry(N, C, H, W, OC, OH, OW, KH, KW, self.stride, self.padding, self.dilation, 1)
        return empty([N, OC, OH, OW], x.dtype), g

    def _plain(self, x, w, bias):
        return CONVOLUTION(x, w, bias, list(self.stride), list(self.padding), list(self.dilation), False,
                           self.output_padding, 1)

    @staticmethod
    def _fits(x, w, bias) -> bool:
        """NCHW operands (the result is NCHW only when neither operand is channels_last), one dtype."""
        return (isinstance(x, WgpuTensor) and isinstance(w, WgpuTensor) and x.dim() == 4 and w.dim() == 4
                and x.is_contiguous() and w.is_contiguous() and x.numel() > 0
                and x.dtype == w.dtype and (bias is None or bias.dtype == x.dtype))

    def extra_repr(self) -> str:
        return f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}"


def fuse(gm: GraphModule) -> int:
    """Convolutions that feed a training batch norm made to write its statistics; returns how many."""
    done = 0
    for node in list(gm.graph.nodes):
        fused = node.op == "call_module" and isinstance(getattr(gm, node.target), FusedBatchNorm)
        plain = node.op == "call_function" and node.target is BN_FORWARD and node.args[5] is True
        if (fused or plain) and "moments" not in node.kwargs and _convolution(node.args[0]):
            if plain:
                node = _as_fused(gm, node)
            _give_moments(gm, node.args[0], node, done)
            done += 1
    if done:
        gm.graph.lint()
        gm.recompile()
    return done


def _convolution(node) -> bool:
    """A 2-D, non-transposed, one-group convolution with a static, contiguous (NCHW) float result."""
    if not isinstance(node, Node) or node.op != "call_function" or node.target is not CONVOLUTION:
        return False
    x, w, bias, stride, padding, dilation, transposed, output_padding, groups = node.args
    val, xv, wv = fusion._value(node), fusion._value(x), fusion._value(w)
    return (val is not None and xv is not None and wv is not None and transposed is False and groups == 1
            and val.dim() == 4 and xv.dim() == 4 and wv.dim() == 4 and fusion._static(val) and fusion._static(xv)
            and val.dtype in FLOATS and val.is_contiguous() and xv.is_contiguous() and wv.is_contiguous()
            and len(stride) == len(padding) == len(dilation) == 2)


def _as_fused(gm: GraphModule, bn: Node) -> Node:
    """The plain functional batch norm as a FusedBatchNorm with no epilogue (same five outputs)."""
    x, weight, bias, running_mean, running_var, _, momentum, eps = bn.args
    xv = fusion._value(x)
    module = FusedBatchNorm(None, tuple(xv.shape), tuple(xv.stride()), float(momentum), float(eps), ())
    name = f"navitrain_conv_bn_{len([n for n, _ in gm.named_children() if n.startswith('navitrain_conv_bn_')])}"
    gm.add_submodule(name, module)
    with gm.graph.inserting_before(bn):
        call = gm.graph.call_module(name, (x, weight, bias, running_mean, running_var))
    call.meta.update(bn.meta)
    bn.replace_all_uses_with(call)
    gm.graph.erase_node(bn)
    return call


def _give_moments(gm: GraphModule, conv: Node, bn: Node, k: int) -> None:
    x, w, bias, stride, padding, dilation, _, output_padding, _ = conv.args
    name = f"navitrain_conv_stats_{k}"
    while hasattr(gm, name):
        name += "_"
    gm.add_submodule(name, ConvWithStats(stride, padding, dilation, output_padding))
    graph = gm.graph
    with graph.inserting_before(conv):
        call = graph.call_module(name, (x, w, bias))
        out = graph.call_function(operator.getitem, (call, 0))
        moments = graph.call_function(operator.getitem, (call, 1))
    call.meta["val"] = (conv.meta["val"], None)
    out.meta.update(conv.meta)
    conv.replace_all_uses_with(out)
    graph.erase_node(conv)
    bn.kwargs = {**bn.kwargs, "moments": moments}
