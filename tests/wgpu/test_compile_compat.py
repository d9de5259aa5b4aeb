"""compile_compat: torch 2.11's fake-tensor helpers assert on a traceable subclass with no inner tensors
(a wgpu tensor). CI runs torch 2.13, which handles it: these tests plant 2.11's behaviour and check the
wrap, and check that a torch that handles it is left alone."""
from __future__ import annotations

import sys
import types

import pytest
import torch

from navitrain.wgpu import compile_compat


def _old_is_fake(x):
    """torch 2.11's rule for traceable subclasses: all(...) must equal any(...) over the inner tensors."""
    from torch.utils._python_dispatch import is_traceable_wrapper_subclass

    if is_traceable_wrapper_subclass(x):
        attrs, _ = type(x).__tensor_flatten__(x)
        inner = [getattr(x, a) for a in attrs]
        all_fake, any_fake = all(_old_is_fake(t) for t in inner), any(_old_is_fake(t) for t in inner)
        assert all_fake == any_fake, "got mixed fake and real tensors!"
        return all_fake
    return False


def _old_maybe_get_fake_mode(t):
    from torch.utils._python_dispatch import is_traceable_wrapper_subclass

    if is_traceable_wrapper_subclass(t):
        names, _ = t.__tensor_flatten__()
        modes = [_old_maybe_get_fake_mode(getattr(t, n)) for n in names]
        return modes[0]
    return None


@pytest.fixture
def old_torch(monkeypatch):
    from torch._subclasses import fake_tensor

    monkeypatch.setattr(fake_tensor, "is_fake", _old_is_fake)
    monkeypatch.setattr(fake_tensor, "maybe_get_fake_mode", _old_maybe_get_fake_mode)
    user = types.ModuleType("navitrain_test_importer")  # a module that did `from ... import is_fake`
    user.is_fake, user.maybe_get_fake_mode = _old_is_fake, _old_maybe_get_fake_mode
    monkeypatch.setitem(sys.modules, user.__name__, user)
    return fake_tensor, user


def test_old_helpers_fail_as_on_the_h100(old_torch):
    with pytest.raises(AssertionError, match="mixed fake and real"):
        _old_is_fake(compile_compat._NoInnerTensors())


def test_old_helpers_are_wrapped_everywhere(old_torch):
    fake_tensor, user = old_torch
    subject = compile_compat._NoInnerTensors
    assert sorted(compile_compat.patch_fake_tensor_helpers(subject)) == ["is_fake", "maybe_get_fake_mode"]
    for module in (fake_tensor, user):
        assert module.is_fake(subject()) is False
        assert module.maybe_get_fake_mode(subject()) is None
        assert module.is_fake.__wrapped__ is _old_is_fake
    # everything else still goes to torch's own helper
    assert fake_tensor.is_fake(torch.ones(2)) is False
    with pytest.raises(AssertionError):
        fake_tensor.is_fake.__wrapped__(subject())
    assert compile_compat.patch_fake_tensor_helpers(subject) == []  # idempotent


def test_a_torch_that_handles_it_is_left_alone():
    from torch._subclasses import fake_tensor

    if compile_compat._fails_on_no_inner_tensors(fake_tensor.is_fake):
        pytest.skip("this torch has the old helpers (2.11): covered by the tests above")
    before = (fake_tensor.is_fake, fake_tensor.maybe_get_fake_mode)
    assert compile_compat.patch_fake_tensor_helpers(compile_compat._NoInnerTensors) == []
    assert (fake_tensor.is_fake, fake_tensor.maybe_get_fake_mode) == before


def test_constant_folding_leaves_wgpu_results_unfolded_and_other_tensors_to_torch():
    from torch._subclasses.fake_tensor import FakeTensorMode

    import navitrain.wgpu.compile  # noqa: F401  (installs the patch)
    from navitrain.wgpu.compile_compat import patch_constant_folding
    from navitrain.wgpu.tensor import WgpuTensor

    assert not patch_constant_folding(WgpuTensor)   # once
    mode = FakeTensorMode()
    assert FakeTensorMode.may_turn_const(mode, torch.tensor(2.0))           # a CPU scalar: torch folds it
    assert not FakeTensorMode.may_turn_const(mode, torch.tensor(2.0).to("wgpu"))
