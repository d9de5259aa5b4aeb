"""resize_as_: resize_ to another tensor's shape (it ran on the CPU, which cannot keep the device storage)."""
from __future__ import annotations

import torch

from navitrain.memory_format import suggest_memory_format
from navitrain.wgpu.dispatch import implements

aten = torch.ops.aten


@implements(aten.resize_as_.default)
def resize_as_(x, the_template, *, memory_format=None):
    if memory_format == torch.preserve_format:
        # as aten: the template's own layout
        memory_format = suggest_memory_format(the_template)
    return aten.resize_.default(x, list(the_template.shape), memory_format=memory_format)
