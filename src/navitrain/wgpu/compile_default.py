"""`torch.compile(model)` with no backend named, on wgpu tensors: the wgpu backend instead of Inductor.

PyTorch's default backend is Inductor, which generates Triton or C++ code and has no code generation for this
device: a script's unchanged `model = torch.compile(model)` failed deep inside it ("expected FakeTensor for
arg, got WgpuTensor"). torch.compile hands the default backend's graphs to `torch._TorchCompileInductorWrapper`;
here that wrapper passes a graph with wgpu tensors among its inputs or attributes to `backend="wgpu"`
(navitrain.wgpu.compile), saying so once, and every other graph to Inductor as before. Inductor's `mode` and
`options` do not apply to the wgpu backend and are ignored.
"""
from __future__ import annotations

import operator
import warnings

import torch

_said = False


def _holds_wgpu(gm, inputs) -> bool:
    def on_wgpu(t):
        return isinstance(t, torch.Tensor) and t.device.type == "wgpu"

    if any(on_wgpu(x) for x in inputs):
        return True
    graph = getattr(gm, "graph", None)
    if graph is None:
        return False
    return any(node.op == "get_attr" and on_wgpu(operator.attrgetter(node.target)(gm)) for node in graph.nodes)


def register() -> None:
    wrapper = getattr(torch, "_TorchCompileInductorWrapper", None)
    if wrapper is None or getattr(wrapper.__call__, "_navitrain_routes_wgpu", False):
        return
    inductor_call = wrapper.__call__

    def __call__(self, model_, inputs_, **kwargs):
        if not _holds_wgpu(model_, inputs_):
            return inductor_call(self, model_, inputs_, **kwargs)
        global _said
        if not _said:
            _said = True
            warnings.warn('navitrain wgpu: torch.compile with the default backend (Inductor) on wgpu tensors uses '
                          'backend="wgpu" instead (Inductor has no code generation for this device; its mode and '
                          'options do not apply); pass backend="wgpu" to say so', UserWarning, stacklevel=2)
        from navitrain.wgpu.compile import backend

        return backend(model_, inputs_)

    __call__._navitrain_routes_wgpu = True
    wrapper.__call__ = __call__
