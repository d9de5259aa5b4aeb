"""Moving a module off the wgpu device keeps its Parameter objects, as a move from CUDA to the CPU does.

`Module._apply` (behind `.cpu()`, `.to(...)`, `.double()`) changes a parameter in place with `param.data =`
when the old and new tensors are of compatible kinds (CUDA and CPU tensors are), or swaps the two objects'
contents (`torch.utils.swap_tensors`) when the new one is a tensor subclass: either way the Parameter object
stays, so an optimizer holding it goes on updating the module. A wgpu parameter moving to the CPU is neither
case (its new tensor is a plain one), so PyTorch makes a new Parameter: `model.cpu(); model.to("wgpu")` in
the middle of training (to save or evaluate on the CPU) left the optimizer updating orphaned tensors, and the
model silently stopped learning.

So for a module holding wgpu parameters `_apply` runs with PyTorch's own switch for swapping
(`torch.__future__.set_swap_module_params_on_conversion`) turned on for that call. swap_tensors refuses
tensors that weak references point to (dynamo's guards hold some on a compiled model's parameters); there
PyTorch's default is kept and a warning says that optimizers must be made again after the move.
"""
from __future__ import annotations

import warnings
import weakref

import torch
from torch import nn

from navitrain.wgpu.tensor import WgpuTensor

_original_apply = nn.Module._apply
_warned = False


def _apply(self, fn, recurse=True):
    if torch.__future__.get_swap_module_params_on_conversion():
        return _original_apply(self, fn, recurse)   # already swapping (the user's setting, or an outer call)
    params = list(self.parameters(recurse=recurse))
    if not any(isinstance(p, WgpuTensor) for p in params):
        return _original_apply(self, fn, recurse)
    if any(weakref.getweakrefs(p) for p in params):
        out = _original_apply(self, fn, recurse)
        if any(old is not new for old, new in zip(params, self.parameters(recurse=recurse))):
            _warn_replaced()
        return out
    torch.__future__.set_swap_module_params_on_conversion(True)
    try:
        return _original_apply(self, fn, recurse)
    finally:
        torch.__future__.set_swap_module_params_on_conversion(False)


def _warn_replaced() -> None:
    global _warned
    if not _warned:
        _warned = True
        warnings.warn("navitrain wgpu: a module's parameters are moved with new Parameter objects (weak references "
                      "to them, such as a compiled model's, prevent keeping the old ones): create its optimizer "
                      "again after the move, or it updates the old tensors", RuntimeWarning, stacklevel=4)


def register() -> None:
    nn.Module._apply = _apply
