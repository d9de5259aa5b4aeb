"""benchmarks/opinfo_coverage.py's float64 rule for float16 and bfloat16 results that differ from the CPU's.

PyTorch's CPU kernels for the half types often round intermediate results to the dtype, or overflow in it
(soft_margin_loss's exp), while wgpu computes in float32 and rounds once. Where the two differ beyond the
dtype's tolerance the CPU is then a poor judge, so both are measured against the float64 result of the same
inputs (every half value is exactly a float64 value), rounded to the dtype: the best answer the dtype holds.
wgpu's result still passes when it is within the dtype's tolerance of that reference AND its largest error is
no larger than the CPU's. A result further from float64 than the tolerance stays a mismatch.
"""
from __future__ import annotations

import math

import torch
from torch.utils._pytree import tree_map

REDUCED = (torch.float16, torch.bfloat16)


def upcast(obj, dtype: torch.dtype):
    """obj with every tensor (and dtype argument) of `dtype` as float64. A tensor that occurs twice becomes one
    float64 tensor, and leaves that require grad stay leaves that do, so gradients line up with the CPU's."""
    seen: dict[int, torch.Tensor] = {}

    def one(x):
        if isinstance(x, torch.Tensor) and x.dtype == dtype:
            if id(x) not in seen:
                seen[id(x)] = x.detach().to(torch.float64).requires_grad_(x.requires_grad)
            return seen[id(x)]
        if isinstance(x, torch.dtype) and x == dtype:
            return torch.float64
        return x

    return tree_map(one, obj)


def max_error(x: torch.Tensor, ref: torch.Tensor) -> float:
    """Largest |x - ref|, in float64. Equal values (infinities of one sign included) and NaN where ref has NaN
    count 0; NaN or an infinity where ref has another value counts inf."""
    x, ref = x.detach().cpu().to(torch.float64), ref.detach().cpu().to(torch.float64)
    if x.numel() == 0:
        return 0.0
    same = (x == ref) | (x.isnan() & ref.isnan())
    err = torch.where(same, torch.zeros_like(x), (x - ref).abs())
    err = torch.where(err.isnan(), math.inf, err)  # NaN against a number: nan_to_num would make inf finite
    return err.max().item()


def judge(got: torch.Tensor, cpu: torch.Tensor, ref64: torch.Tensor, dtype: torch.dtype,
          rtol: float, atol: float) -> tuple[bool, float, float]:
    """(does wgpu's `got` pass by the float64 rule, wgpu's largest error, the CPU's largest error); errors are
    measured against `ref64` (the float64 result) rounded to `dtype`."""
    got, cpu = got.detach().cpu(), cpu.detach().cpu()
    if dtype not in REDUCED or got.dtype != dtype or ref64.shape != got.shape or not ref64.dtype.is_floating_point:
        return False, math.nan, math.nan
    ref = ref64.detach().cpu().to(dtype)
    wgpu_err, cpu_err = max_error(got, ref), max_error(cpu, ref)
    try:
        torch.testing.assert_close(got, ref, rtol=rtol, atol=atol, equal_nan=True)
    except AssertionError:
        return False, wgpu_err, cpu_err
    return wgpu_err <= cpu_err, wgpu_err, cpu_err


def describe(wgpu_err: float, cpu_err: float) -> str:
    return f"wgpu err {wgpu_err:.3g}, CPU err {cpu_err:.3g}"
