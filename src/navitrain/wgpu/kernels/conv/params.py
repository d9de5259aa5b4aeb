"""The parameter block of every implicit-GEMM convolution kernel, by name (codegen.ParamBlock).

One block serves all passes and layouts, so a kernel compiled for one layer serves every layer of the
same pass, orientation, dtype and tile: the GEMM's own fields, then the geometry, the four tensors a
pass may touch (offset and four strides each), a bias, BK written in each mixed radix the K index is
walked in (see operands.py), and a weight read as a plain matrix. The kernel body reads the geometry
and tensor fields through PREAMBLE's `let`s (cN, x_off, x_s1, ...), the others through CONV_PARAMS.ref.
"""
from __future__ import annotations

from navitrain.wgpu.kernels import codegen
from navitrain.wgpu.kernels.conv.geometry import Geometry
from navitrain.wgpu.kernels.gemm import (
    GEMM_DEFAULTS,
    GEMM_FIELDS,
    operand_fields,
)

GEOMETRY_FIELDS = ("cN", "cCg", "cH", "cW", "cOH", "cOW", "cKH", "cKW", "csh", "csw", "cph: i32", "cpw: i32",
                   "cdh", "cdw", "cOCg")
# x: the input image, w: the weight, y: the output's gradient (dy), o: what the pass writes.
TENSORS = ("x", "w", "y", "o")


def tensor_fields(t: str) -> tuple[str, ...]:
    return (f"{t}_off", f"{t}_s0", f"{t}_s1", f"{t}_s2", f"{t}_s3")


# K indices walked without divisions (operands.py): each radix's digits, least significant first.
RADICES = ("ckk", "kkc_fwd", "kkc_dgrad", "nhw")
WEIGHT_MATRIX = "wm"   # a weight whose K block is contiguous, read as a plain [rows, K] matrix (gemm.Strided)

_TENSOR_FIELDS = tuple(f for t in TENSORS for f in tensor_fields(t))
CONV_PARAMS = codegen.ParamBlock(
    *GEMM_FIELDS, *GEOMETRY_FIELDS, *_TENSOR_FIELDS, "bias_off", *(f"radix_{r}[3]" for r in RADICES),
    *operand_fields(WEIGHT_MATRIX),
    defaults={**GEMM_DEFAULTS, **dict.fromkeys(_TENSOR_FIELDS, 0), "bias_off": 0,
              **dict.fromkeys(operand_fields(WEIGHT_MATRIX), 0)})

_LET_NAMES = tuple(f.split(":")[0] for f in GEOMETRY_FIELDS) + _TENSOR_FIELDS
PREAMBLE = tuple(f"let {name} = {CONV_PARAMS.ref(name)};" for name in _LET_NAMES)


def radix_steps(g: Geometry, BK: int) -> list[int]:
    """BK written in each radix of RADICES, three digits per radix."""
    words = []
    for b0, b1 in ((g.KW, g.KH), (g.Cg, g.KW), (g.OCg, g.KW), (g.OW, g.OH)):
        words += [BK % b0, (BK // b0) % b1, BK // (b0 * b1)]
    return words


_PACK = CONV_PARAMS.pack_words
NO_WEIGHT_MATRIX = (0, 0, 0, 0)   # the weight is gathered (operands.Weight), not read as a matrix
_ABSENT = (0, 0, 0, 0, 0)


def _tensor_words(t) -> tuple:
    if t is None:
        return _ABSENT
    strides = t.stride()
    return (t.elem_offset, *strides, *(0,) * (4 - len(strides)))


def pack(g: Geometry, BK: int, M: int, N: int, K: int, x=None, w=None, y=None, o=None, bias=None,
         ksplit: int = 0, weight_matrix: tuple = NO_WEIGHT_MATRIX) -> bytes:
    """The values of CONV_PARAMS for one launch, in its declaration order (CONV_PARAMS.pack_words: this
    runs on every convolution). `weight_matrix`: (offset, row stride, k stride, group stride)."""
    return _PACK(M, N, K, 1.0, 0.0, ksplit, 0, 0,
                 g.N, g.Cg, g.H, g.W, g.OH, g.OW, g.KH, g.KW, g.stride[0], g.stride[1], g.padding[0], g.padding[1],
                 g.dilation[0], g.dilation[1], g.OCg,
                 *_tensor_words(x), *_tensor_words(w), *_tensor_words(y), *_tensor_words(o),
                 0 if bias is None else bias.elem_offset, *radix_steps(g, BK), *weight_matrix)
