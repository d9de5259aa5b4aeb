"""Device-agnostic operators built from GEMMs and memory operations (used by the nomiopen route).

Importing this package imports torch; `import navitrain` does not import it.
"""
from navitrain.ops.gemm_conv import convolution, convolution_backward

__all__ = ["convolution", "convolution_backward"]
