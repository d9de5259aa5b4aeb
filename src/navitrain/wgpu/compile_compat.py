"""Older torch's fake-tensor helpers and a traceable subclass with no inner tensors.

A wgpu tensor announces the traceable-wrapper-subclass protocol with no inner tensors (its data is
ours: see WgpuTensor.__tensor_flatten__). torch 2.13 handles that; torch 2.11's `is_fake` asserts
`all(...) == any(...)` over the inner tensors, which for none is True != False ("got mixed fake and
real tensors!", run 11 on the H100's torch 2.11), and its `maybe_get_fake_mode` may index the first
one. Where a probe shows a helper failing on such a subclass, it is wrapped to answer for wgpu
tensors directly (real data, no fake mode) and to defer to torch for everything else. Torch versions
that handle the case are left untouched.
"""
from __future__ import annotations

import sys

import torch

# name of the helper -> what it must say of a real tensor with no inner tensors
_ANSWERS = {"is_fake": False, "maybe_get_fake_mode": None}


class _NoInnerTensors(torch.Tensor):
    """The smallest traceable wrapper subclass without inner tensors: what the probe asks about."""

    @staticmethod
    def __new__(cls):
        return torch.Tensor._make_wrapper_subclass(cls, (1,), dtype=torch.float32, device="meta")

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        raise NotImplementedError(f"{func}: the probe tensor runs no ops")

    def __tensor_flatten__(self):
        return [], None

    @staticmethod
    def __tensor_unflatten__(inner_tensors, ctx, outer_size, outer_stride):
        raise NotImplementedError


def _fails_on_no_inner_tensors(helper) -> bool:
    try:
        return helper(_NoInnerTensors()) != _ANSWERS[helper.__name__]
    except (AssertionError, IndexError):
        return True


def _wrapped(helper, answer, subclass: type):
    def for_wgpu(x, *args, **kwargs):
        if isinstance(x, subclass):
            return answer
        return helper(x, *args, **kwargs)

    for_wgpu.__name__ = helper.__name__
    for_wgpu.__wrapped__ = helper
    for_wgpu.navitrain_compat = True
    return for_wgpu


def patch_fake_tensor_helpers(subclass: type) -> list[str]:
    """Wrap each helper that fails on a subclass without inner tensors, in torch._subclasses.fake_tensor
    and in every loaded module that imported it by name. Returns the names wrapped (none on torch 2.13)."""
    from torch._subclasses import fake_tensor

    patched = []
    for name, answer in _ANSWERS.items():
        helper = getattr(fake_tensor, name, None)
        if helper is None or getattr(helper, "navitrain_compat", False) or not _fails_on_no_inner_tensors(helper):
            continue
        replacement = _wrapped(helper, answer, subclass)
        for module in list(sys.modules.values()):
            if module is not None and getattr(module, name, None) is helper:
                setattr(module, name, replacement)
        patched.append(name)
    return patched


def patch_constant_folding(subclass: type) -> bool:
    """Fake tensor mode folds an op whose inputs are all constants (a CPU scalar made in the traced code, moved
    with `.to("wgpu")`) by running it for real and turning the result into a constant fake. The fake of a real
    wgpu tensor is built through the subclass protocol, which records no constant, and torch asserts ("fake_tensor
    must be a FakeTensor with a constant": Mistral's sliding-window size failed to compile). Results that are
    wgpu tensors are not folded: they get an ordinary fake, as an op on traced inputs does. Returns whether it
    patched (once)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    may_turn_const = FakeTensorMode.may_turn_const
    if getattr(may_turn_const, "navitrain_compat", False):
        return False

    def not_for_subclass(self, t):
        return not isinstance(t, subclass) and may_turn_const(self, t)

    not_for_subclass.__wrapped__ = may_turn_const
    not_for_subclass.navitrain_compat = True
    FakeTensorMode.may_turn_const = not_for_subclass
    return True
