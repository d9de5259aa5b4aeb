"""2-D convolution on the GPU: forward, grad-input and grad-weight, mostly as implicit GEMM.

No im2col buffer is ever written: the GEMM operand that would be im2col is gathered tile by tile into
workgroup memory (navitrain.wgpu.kernels.gemm). Shapes, strides, padding and dilation all come from the
parameter block (params.py): one compiled kernel per (pass, orientation, dtype, tile), whatever the layer.

Where things are:
- choose.py: which formulation runs a pass (1x1 product, depthwise kernel, output phases, Winograd,
  implicit GEMM) -- start here;
- forward.py, grad_input.py, grad_weight.py: the implicit-GEMM passes;
- onebyone.py: 1x1 layers as plain products;
- operands.py, epilogues.py: how the GEMM reads images and weights and writes its result;
- geometry.py (the layer's shape), params.py (the kernels' named parameters), layouts.py (what the
  tensors' memory layouts allow).
"""
from navitrain.wgpu.kernels.conv.choose import (
           forward,
           forward_relu,
           grad_input,
           grad_weight,
           use_winograd,
)
from navitrain.wgpu.kernels.conv.forward import implicit_forward
from navitrain.wgpu.kernels.conv.geometry import Geometry, pointwise_geometry
from navitrain.wgpu.kernels.conv.grad_input import implicit_grad_input
from navitrain.wgpu.kernels.conv.grad_weight import implicit_grad_weight

__all__ = ["Geometry", "forward", "forward_relu", "grad_input", "grad_weight", "implicit_forward",
           "implicit_grad_input", "implicit_grad_weight", "pointwise_geometry", "use_winograd"]
