"""Hypothesis strategies and reference helpers for the GEMM convolution tests.

A case is everything aten::convolution takes, drawn so that aten accepts it (valid output size,
output_padding < max(stride, dilation)), plus the layout the input arrives in. References are
aten's own CPU kernels in float64.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from hypothesis import strategies as st


@dataclass
class Case:
    nd: int
    batch: int
    groups: int
    in_per_group: int  # channels per group of the regular convolution's input
    out_per_group: int
    kernel: list
    stride: list
    padding: list
    dilation: list
    transposed: bool
    output_padding: list
    spatial: list
    bias: bool
    layout: str  # contiguous, channels_last, strided (a slice of a bigger tensor), permuted (odd strides)
    weight_layout: str
    seed: int

    @property
    def aten_args(self):
        return (self.stride, self.padding, self.dilation, self.transposed, self.output_padding, self.groups)


def _reach(d, k):
    return d * (k - 1) + 1


@st.composite
def conv_cases(draw, nd=None, transposed=None, winograd=False):
    """Valid aten::convolution cases. winograd=True draws only 3x3 stride-1 undilated ungrouped ones."""
    nd = draw(st.sampled_from([1, 2, 2, 2, 3])) if nd is None else nd
    transposed = draw(st.booleans()) if transposed is None else transposed
    if winograd:
        groups, cin, cout = 1, draw(st.integers(1, 5)), draw(st.integers(1, 5))
        kernel, stride, dilation = [3] * nd, [1] * nd, [1] * nd
        padding = [draw(st.integers(0, 4)) for _ in range(nd)]
    else:
        groups = draw(st.sampled_from([1, 1, 2, 3]))
        depthwise = groups > 1 and draw(st.booleans())
        cin = 1 if depthwise else draw(st.integers(1, 3))
        cout = draw(st.integers(1, 3))
        kmax = 3 if nd == 3 else 4
        kernel = [draw(st.integers(1, kmax)) for _ in range(nd)]
        stride = [draw(st.integers(1, 5)) for _ in range(nd)]  # includes stride > kernel
        dilation = [draw(st.integers(1, 3)) for _ in range(nd)]
        padding = [draw(st.integers(0, 5)) for _ in range(nd)]  # includes padding > kernel / 2
    output_padding = [0] * nd
    if transposed:
        output_padding = [draw(st.integers(0, max(s, d) - 1)) for s, d in zip(stride, dilation)]
    smax = 6 if nd == 3 else 11
    spatial = []
    for k, s, p, d, op in zip(kernel, stride, padding, dilation, output_padding):
        if transposed:
            low = 1
            while (low - 1) * s - 2 * p + _reach(d, k) + op <= 0:
                low += 1
        else:
            low = max(1, _reach(d, k) - 2 * p)
        spatial.append(draw(st.integers(low, max(low, smax) + (2 if winograd else 0))))
    layouts = ["contiguous", "strided", "permuted"] + (["channels_last"] if nd in (2, 3) else [])
    weight_layouts = ["contiguous"] + (["channels_last"] if nd in (2, 3) else [])
    return Case(nd, draw(st.integers(1, 3)), groups, cin, cout, kernel, stride, padding, dilation, transposed,
                output_padding, spatial, draw(st.booleans()), draw(st.sampled_from(layouts)),
                draw(st.sampled_from(weight_layouts)), draw(st.integers(0, 2**31 - 1)))


def arrange(t: torch.Tensor, layout: str) -> torch.Tensor:
    """The same values in another memory layout."""
    if layout == "channels_last":
        return t.contiguous(memory_format=torch.channels_last if t.dim() == 4 else torch.channels_last_3d)
    if layout == "strided":  # every other element of the last dim of a bigger tensor
        big = torch.empty(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype)
        big[..., ::2] = t
        return big[..., ::2]
    if layout == "permuted":  # batch and channel dims swapped in memory
        return t.transpose(0, 1).contiguous().transpose(0, 1)
    return t.contiguous()


def tensors(case: Case, dtype=torch.float64):
    """(input, weight, bias, grad_output) of the case, random, in the case's layout."""
    g = torch.Generator().manual_seed(case.seed)
    regular_in, regular_out = case.groups * case.in_per_group, case.groups * case.out_per_group
    weight = torch.randn(regular_out, case.in_per_group, *case.kernel, generator=g, dtype=torch.float64)
    in_channels = regular_out if case.transposed else regular_in
    out_channels = regular_in if case.transposed else regular_out
    x = torch.randn(case.batch, in_channels, *case.spatial, generator=g, dtype=torch.float64)
    bias = torch.randn(out_channels, generator=g, dtype=torch.float64) if case.bias else None
    y = torch.ops.aten.convolution(x, weight, bias, *case.aten_args)
    gy = torch.randn(y.shape, generator=g, dtype=torch.float64)
    cast = lambda t: None if t is None else t.to(dtype)  # noqa: E731
    return arrange(cast(x), case.layout), arrange(cast(weight), case.weight_layout), cast(bias), cast(gy)


def reference(case: Case, x, w, b, gy, mask=(True, True, True)):
    """aten's forward and backward in float64."""
    d = lambda t: None if t is None else t.detach().double()  # noqa: E731
    y = torch.ops.aten.convolution(d(x), d(w), d(b), *case.aten_args)
    grads = torch.ops.aten.convolution_backward(d(gy), d(x), d(w), [w.shape[0]] if b is not None else None,
                                                *case.aten_args, list(mask))
    return y, grads


def assert_close(actual, expected, rtol, what=""):
    """|actual - expected| <= rtol * max|expected| (a tolerance relative to the result's scale)."""
    assert actual is not None and expected is not None, what
    assert tuple(actual.shape) == tuple(expected.shape), f"{what}: {tuple(actual.shape)} != {tuple(expected.shape)}"
    scale = max(float(expected.abs().max()), 1e-12)
    err = float((actual.double() - expected).abs().max())
    assert err <= rtol * scale, f"{what}: max error {err:.3g} > {rtol:g} * {scale:.3g}"
