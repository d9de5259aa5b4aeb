"""Operator handlers of the wgpu device, one module per family; importing registers them all."""
from navitrain.wgpu.ops import copy, elementwise, factory, matmul, random, reductions, views  # noqa: F401
