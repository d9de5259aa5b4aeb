"""Integer division by zero raises, as on the CPU (`torch.tensor([7]) // 0` raises ZeroDivisionError).

WGSL's integer `/` and `%` by zero are defined to return a number (the dividend, or 0), which would be a
silent wrong value. A divisor known on the host (a Python number, a CPU scalar) is checked for free. A
divisor tensor on the device is checked with one reduction and a read-back (a sync): integer tensor
division is index arithmetic, rare in a training step, and a wrong index is worse than a sync. Inside a
captured graph no read-back is possible; those divisions run unchecked and are counted per op in
`unchecked_counts` (and say so in a warning, once).
"""
from __future__ import annotations

import warnings
from collections import Counter

import torch

unchecked_counts: Counter = Counter()


def zero_division() -> RuntimeError:
    # The CPU's exception and message exactly, so code that handles one handles the other.
    return RuntimeError("ZeroDivisionError")


def check_divisor(divisor, op_name: str) -> None:
    """Raise if the integer `divisor` (a number or a tensor, on the host or the device) holds a zero."""
    from navitrain.wgpu import graphs
    from navitrain.wgpu.tensor import WgpuTensor

    if not isinstance(divisor, WgpuTensor):
        value = divisor.item() if isinstance(divisor, torch.Tensor) else divisor
        if value == 0:
            raise zero_division()
        return
    if divisor.numel() == 0:
        return
    if graphs.is_capturing():
        if not unchecked_counts:
            warnings.warn(f"navitrain wgpu: {op_name} by an integer tensor inside a captured graph is not checked "
                          "for zero divisors (counted in navitrain.wgpu.kernels.int_division.unchecked_counts)",
                          stacklevel=4)
        unchecked_counts[op_name] += 1
        return
    aten = torch.ops.aten
    if aten._local_scalar_dense.default(aten.any.default(aten.eq.Scalar(divisor, 0))):
        raise zero_division()
