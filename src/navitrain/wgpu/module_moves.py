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
tensors that weak references point to (dynamo's guards hold some on a compiled model's parameters) and
breaks a backward still pending on them; there the whole move keeps PyTorch's default and a warning says
that optimizers must be made again after it.
"""
from __future__ import annotations

import threading
import warnings
import weakref

import torch
from torch import nn

from navitrain.wgpu.tensor import WgpuTensor

_original_apply = nn.Module._apply
_warned = False
_decided = threading.local()   # an outer module's _apply decided for its submodules (they recurse into this)


def _apply(self, fn, recurse=True):
    if _has_uninitialized(self):
        pending = self.__dict__.pop("_navitrain_lazy_move", None)
        if pending is not None:   # a later move replaces an earlier one still waiting for the first forward
            pending.remove()
            self.__dict__.pop("_infer_parameters", None)
        if _moves_to_wgpu(fn):
            return _apply_lazy(self, fn, recurse)
    if torch.__future__.get_swap_module_params_on_conversion() or getattr(_decided, "active", False):
        return _original_apply(self, fn, recurse)   # the user's setting, or an outer call's decision
    params = list(self.parameters(recurse=recurse))
    if not any(isinstance(p, WgpuTensor) for p in params):
        return _original_apply(self, fn, recurse)
    # swap_tensors refuses a tensor with weak references, or one held by more than its Parameter and its
    # gradient accumulator (which the graph of the last step, still referenced by its loss, keeps). A
    # pending backward's saved tensors hold its weights too: then the whole move (every submodule) keeps
    # PyTorch's default, rather than swapping a bias whose accumulator the swap would make fail in that
    # backward, an error that would end the process there (dispatch.py, "errors inside backward").
    if any(weakref.getweakrefs(p) or p._use_count() > 2 for p in params):
        _decided.active = True
        try:
            out = _original_apply(self, fn, recurse)
        finally:
            _decided.active = False
        if any(old is not new for old, new in zip(params, self.parameters(recurse=recurse))):
            _warn_replaced()
        return out
    torch.__future__.set_swap_module_params_on_conversion(True)
    try:
        return _original_apply(self, fn, recurse)
    finally:
        torch.__future__.set_swap_module_params_on_conversion(False)


# -- lazy modules ---------------------------------------------------------------------------------------
# nn.LazyLinear and its kin make their parameters at the first forward, in place: the UninitializedParameter
# object becomes a Parameter (so an optimizer made before that forward holds the right objects). A wgpu tensor
# is another Python class, which that in-place change cannot give. So a move to wgpu leaves the uninitialized
# tensors where they are and moves them right after the module makes them (on the CPU, with the CPU's
# initialization), before that first forward runs: PyTorch's move to a tensor subclass swaps contents, so the
# objects stay, as they do for CUDA.
_Uninitialized = torch.nn.parameter.UninitializedTensorMixin


def _has_uninitialized(module) -> bool:
    """Whether the module's own parameters or buffers include ones a lazy module has not made yet."""
    return any(isinstance(t, _Uninitialized) for t in (*module._parameters.values(), *module._buffers.values()))


def _moves_to_wgpu(fn) -> bool:
    try:
        return isinstance(fn(torch.zeros(())), WgpuTensor)
    except Exception:   # a conversion that a scalar cannot take is not a device move
        return False


def _apply_lazy(module, fn, recurse):
    def keep_uninitialized(t):
        return t if isinstance(t, _Uninitialized) else fn(t)

    out = _original_apply(module, keep_uninitialized, recurse=False)
    if recurse:
        for child in module.children():
            child._apply(fn)

    def move_once_made(mod) -> None:
        if _has_uninitialized(mod):
            return   # (not made yet: the module's own hook had nothing to infer from)
        handle = mod.__dict__.pop("_navitrain_lazy_move", None)
        if handle is None:
            return
        handle.remove()
        mod.__dict__.pop("_infer_parameters", None)
        mod._apply(fn, recurse=False)

    # Eager: the module's initializing forward pre-hook runs, then this one (registered after it).
    module.__dict__["_navitrain_lazy_move"] = module.register_forward_pre_hook(
        lambda mod, args, kwargs: move_once_made(mod), with_kwargs=True)
    # torch.compile: dynamo calls the module's _infer_parameters itself before tracing it, and a hook left on the
    # module would break the graph there (and dynamo rewinds the RNG after each traced piece, so later lazy
    # modules were initialized from the same draws again). The move follows the initialization directly.
    infer = module._infer_parameters

    def infer_then_move(mod, args, kwargs=None):
        result = infer(mod, args, kwargs)
        move_once_made(mod)
        return result

    module.__dict__["_infer_parameters"] = infer_then_move
    return out


def _warn_replaced() -> None:
    global _warned
    if not _warned:
        _warned = True
        warnings.warn("navitrain wgpu: a module's parameters are moved with new Parameter objects (references to "
                      "them, such as a compiled model's or a pending backward's, prevent keeping the old ones): "
                      "create its optimizer again after the move, or it updates the old tensors",
                      RuntimeWarning, stacklevel=4)


def register() -> None:
    nn.Module._apply = _apply
