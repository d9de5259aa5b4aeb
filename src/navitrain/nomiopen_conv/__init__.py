"""The `nomiopen` route's convolution engine: aten::convolution and its backward built from vendor-BLAS
GEMMs (im2col, 1x1 GEMMs, Winograd, depthwise) and memory operations, so a GPU trains without MIOpen.

Importing this package imports torch; `import navitrain` does not import it.
"""
from navitrain.nomiopen_conv.gemm_conv import convolution, convolution_backward

__all__ = ["convolution", "convolution_backward"]
