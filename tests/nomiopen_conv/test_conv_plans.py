"""The per-shape convolution plans: built once and reused, rebuilt when the policy changes, lean in
tensor operations (host time bounds small layers on a GPU), and never holding on to tensors."""
from __future__ import annotations

import gc
import weakref

import pytest
import torch
from gemm_conv_cases import assert_close
from torch.utils._python_dispatch import TorchDispatchMode

from navitrain.nomiopen_conv import conv_plan, gemm_conv, plan_cache, policy

CL = torch.channels_last


class _OpLog(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


def _args(stride, padding):
    return [stride] * 2, [padding] * 2, [1, 1], False, [0, 0], 1


def _reference(x, w, gy, args):
    d = lambda t: t.detach().double()  # noqa: E731
    y = torch.ops.aten.convolution(d(x), d(w), None, *args)
    return y, torch.ops.aten.convolution_backward(d(gy), d(x), d(w), None, *args, [True, True, False])


def test_a_plan_is_built_once_per_shape_and_reused_with_new_data(monkeypatch):
    builds = []
    for name in ("build_forward", "build_backward"):
        real = getattr(plan_cache, name)
        monkeypatch.setattr(plan_cache, name, lambda *a, _real=real, _name=name: builds.append(_name) or _real(*a))
    args = _args(2, 1)
    for seed in range(3):  # fresh values every call: a plan must not remember the tensors it was built with
        torch.manual_seed(seed)
        x, w = torch.randn(3, 5, 9, 9, dtype=torch.float64), torch.randn(4, 5, 3, 3, dtype=torch.float64)
        y = gemm_conv.convolution(x, w, None, *args)
        gy = torch.randn_like(y)
        gi, gw, _ = gemm_conv.convolution_backward(gy, x, w, None, *args, [True, True, False])
        y_ref, (gi_ref, gw_ref, _) = _reference(x, w, gy, args)
        assert_close(y, y_ref, 1e-12, "output")
        assert_close(gi, gi_ref, 1e-12, "grad_input")
        assert_close(gw, gw_ref, 1e-12, "grad_weight")
    assert builds == ["build_forward", "build_backward"]


def test_policy_and_workspace_changes_select_new_plans(monkeypatch):
    torch.manual_seed(0)
    x, w = torch.randn(4, 6, 8, 8, dtype=torch.float64), torch.randn(5, 6, 3, 3, dtype=torch.float64)
    args = _args(1, 1)
    results = []
    for name in ("im2col", "winograd4"):
        before = dict(conv_plan.stats)
        with policy.use_policy(name):
            results.append(gemm_conv.convolution(x, w, None, *args))
        assert conv_plan.stats[f"forward:{name}"] == before.get(f"forward:{name}", 0) + 1
    chunks = []
    real = policy.batch_chunks
    monkeypatch.setattr(policy, "batch_chunks", lambda n, b: chunks.append(real(n, b)) or real(n, b))
    monkeypatch.setenv("NAVITRAIN_CONV_WORKSPACE_MB", "0")  # one image per chunk
    with policy.use_policy("im2col"):
        results.append(gemm_conv.convolution(x, w, None, *args))
    assert chunks and len(chunks[-1]) == 4
    assert len(plan_cache.forward_plans) == 3
    for got in results[1:]:
        assert_close(got, results[0], 1e-12)


def test_invalid_arguments_raise_on_every_call_and_leave_no_plan():
    x, w = torch.randn(2, 5, 8, 8), torch.randn(4, 3, 3, 3)
    for _ in range(2):
        with pytest.raises(RuntimeError, match="to have 3 channels"):
            gemm_conv.convolution(x, w, None, *_args(1, 1))
    assert not plan_cache.forward_plans


# (layout, policy, kernel, stride, most aten ops forward, most aten ops backward): a training step of a
# ResNet calls these every step; on a GPU each operation costs host time whether or not it launches
# a kernel, so the budgets guard against regressions (measured: im2col 7-9 / 11-14, Winograd 16 / 31).
BUDGETS = [
    ("nchw", "im2col", 3, 1, 9, 15), ("nchw", "im2col", 3, 2, 10, 15), ("nchw", "im2col", 1, 2, 9, 14),
    ("cl", "im2col", 3, 1, 9, 14), ("cl", "im2col", 3, 2, 9, 14), ("cl", "im2col", 1, 2, 8, 12),
    ("nchw", "winograd4", 3, 1, 16, 32), ("cl", "winograd4", 3, 1, 16, 32),
]


@pytest.mark.parametrize("layout,name,kernel,stride,fwd_budget,bwd_budget", BUDGETS)
def test_resnet_layers_issue_few_tensor_operations(layout, name, kernel, stride, fwd_budget, bwd_budget):
    fmt = CL if layout == "cl" else torch.contiguous_format
    x = torch.randn(4, 8, 8, 8).contiguous(memory_format=fmt)
    w = torch.randn(16, 8, kernel, kernel).contiguous(memory_format=fmt)
    args = _args(stride, kernel // 2)
    with policy.use_policy(name):
        y = gemm_conv.convolution(x, w, None, *args)  # builds the plans
        gy = torch.randn_like(y)
        gemm_conv.convolution_backward(gy, x, w, None, *args, [True, True, False])
        with _OpLog() as fwd:
            y = gemm_conv.convolution(x, w, None, *args)
        with _OpLog() as bwd:
            gi, gw, _ = gemm_conv.convolution_backward(gy, x, w, None, *args, [True, True, False])
    assert len(fwd.ops) <= fwd_budget, fwd.ops
    assert len(bwd.ops) <= bwd_budget, bwd.ops
    # aten's im2col (F.unfold) launches one CUDA kernel per image: never on these paths
    assert not any("im2col" in op for op in fwd.ops + bwd.ops)
    y_ref, (gi_ref, gw_ref, _) = _reference(x, w, gy, args)
    assert_close(y, y_ref, 1e-5, "output")
    assert_close(gi, gi_ref, 1e-5, "grad_input")
    assert_close(gw, gw_ref, 1e-5, "grad_weight")
    for t in (y, gi, gw):
        assert t.is_contiguous(memory_format=fmt)


@pytest.mark.parametrize("name", ["im2col", "winograd4", "tune"])
@pytest.mark.parametrize("cap", ["512", "0"])
def test_plans_do_not_keep_the_tensors_they_were_built_from(monkeypatch, name, cap):
    # A plan lives as long as the process; holding its first input would pin a batch of activations.
    monkeypatch.setenv("NAVITRAIN_CONV_WORKSPACE_MB", cap)
    tensors = []
    with policy.use_policy(name):
        for fmt in (torch.contiguous_format, CL):
            for kernel, stride in ((3, 1), (3, 2), (1, 2)):
                x = torch.randn(3, 4, 9, 9).contiguous(memory_format=fmt)
                w = torch.randn(5, 4, kernel, kernel).contiguous(memory_format=fmt)
                args = _args(stride, kernel // 2)
                y = gemm_conv.convolution(x, w, None, *args)
                gy = torch.randn_like(y)
                grads = gemm_conv.convolution_backward(gy, x, w, None, *args, [True, True, False])
                tensors += [x, w, y, gy, *grads[:2]]
    refs = [weakref.ref(t) for t in tensors]
    del tensors, x, w, y, gy, grads
    gc.collect()
    assert plan_cache.forward_plans and plan_cache.backward_plans
    assert not [r for r in refs if r() is not None]
