"""The GEMM and convolution kernels' named parameters (issue 16): the hot paths pack their blocks
positionally (MATRIX_PARAMS.pack_words: keyword packing would double a small product's host time), so
check here that those bytes are exactly what packing by name gives."""
from __future__ import annotations

import random

import pytest
import torch

from navitrain.wgpu.kernels import gemm
from navitrain.wgpu.kernels.conv import params as conv_params
from navitrain.wgpu.kernels.conv.geometry import Geometry

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def test_matrix_block_packs_the_same_by_position_and_by_name():
    rng = random.Random()
    names = [n for n, *_ in gemm.MATRIX_PARAMS.fields if n not in ("alpha", "beta", "reserved")]
    values = {n: rng.randrange(2**31) for n in names}
    values.update(alpha=rng.uniform(-2, 2), beta=rng.uniform(-2, 2), reserved=(0, 0))
    flat = []
    for name, _, count, _ in gemm.MATRIX_PARAMS.fields:
        flat.extend(values[name] if count else [values[name]])
    assert gemm.MATRIX_PARAMS.pack_words(*flat) == gemm.MATRIX_PARAMS.pack(**values)


def test_conv_pack_is_the_block_packed_by_name():
    """conv.params.pack (every convolution launch) against CONV_PARAMS.pack with each field named."""
    import navitrain.wgpu  # noqa: F401
    from navitrain.wgpu.tensor import empty

    g = Geometry(2, 6, 9, 11, 8, 5, 6, 3, 2, (2, 2), (1, 0), (1, 2), 2)
    x = empty([2, 6, 9, 11], torch.float32)
    w = empty([8, 3, 3, 2], torch.float32)
    o = empty([2, 8, 5, 6], torch.float32).permute(0, 2, 3, 1)   # a 4-D view with other strides
    bias = empty([9], torch.float32)[1:]
    named = dict(M=8, N=60, K=18, kslice=16, bias_off=bias.elem_offset, wm_off=5, wm_srow=18, wm_sk=1, wm_sbatch=72,
                 cN=g.N, cCg=g.Cg, cH=g.H, cW=g.W, cOH=g.OH, cOW=g.OW, cKH=g.KH, cKW=g.KW, csh=2, csw=2, cph=1,
                 cpw=0, cdh=1, cdw=2, cOCg=g.OCg)
    for t, tensor in (("x", x), ("w", w), ("o", o)):
        named.update(zip(conv_params.tensor_fields(t), (tensor.elem_offset, *tensor.stride())))
    steps = conv_params.radix_steps(g, 16)
    for i, radix in enumerate(conv_params.RADICES):
        named[f"radix_{radix}"] = steps[3 * i:3 * i + 3]
    by_name = conv_params.CONV_PARAMS.pack(**named)
    assert conv_params.pack(g, 16, 8, 60, 18, x=x, w=w, o=o, bias=bias, ksplit=16,
                            weight_matrix=(5, 18, 1, 72)) == by_name


def test_radix_steps_write_bk_in_each_radix():
    g = Geometry(2, 6, 9, 11, 8, 5, 6, 3, 2, (1, 1), (0, 0), (1, 1), 2)
    steps = conv_params.radix_steps(g, 16)
    for i, (b0, b1) in enumerate(((g.KW, g.KH), (g.Cg, g.KW), (g.OCg, g.KW), (g.OW, g.OH))):
        d0, d1, d2 = steps[3 * i:3 * i + 3]
        assert d0 < b0 and d1 < b1 and d0 + b0 * (d1 + b1 * d2) == 16
