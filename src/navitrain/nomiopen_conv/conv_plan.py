"""Choosing an algorithm for each of the three convolution problems, and the general (any
dimensionality, any groups) way of running them.

The problems, all stated for a regular (not transposed) convolution with weight [K, C/g, *k]:
  forward       y = conv(x, w)                         (also the input gradient of a stride-1
                                                        convolution: conv of gy with the flipped kernel)
  input grad    dx = conv_transpose(gy, w)             (col2im, or Winograd with the flipped kernel)
  weight grad   dw = correlate(x, gy)

Candidates: `gemm1x1`, `depthwise` (always taken where they apply), `winograd2`, `winograd4` (3x3
stride 1, undilated, ungrouped; F(4x4) only in fp32/fp64) and `im2col` (everything). The policy
(NAVITRAIN_CONV_ALGO or policy.use_policy) picks among them: `auto` uses a cost model (FLOPs, bytes,
kernels on the GPU against tensor operations issued by the host), `tune` times each candidate once
per shape on this device and remembers the fastest.

Ungrouped 2-d convolutions run as precomputed plans (plan_cache.py with im2col2d.py and
winograd2d.py); the functions at the end of this module serve every other case.
"""
from __future__ import annotations

import collections
import functools
import math
import time
from typing import Callable

import torch

from navitrain.conv_args import Geometry
from navitrain.nomiopen_conv import depthwise, gemm1x1, im2col, policy, winograd
from navitrain.nomiopen_conv.layout import is_channels_last_dense, prod

# What ran, by problem and algorithm ("forward:winograd4": 12): lets tests and benchmarks check that
# the intended path was taken.
stats: collections.Counter = collections.Counter()
# Shape key -> (chosen algorithm, {algorithm: milliseconds}) for the `tune` policy.
tuned: dict[tuple, tuple[str, dict[str, float]]] = {}

_HALF = (torch.float16, torch.bfloat16)
# Cost model constants, in FLOPs of an H100 in fp32 (51.5 TFLOPS, ~3 TB/s): FLOPs per byte moved, the
# GPU-side cost of one kernel (~3 us), and the host cost of one tensor operation issued from Python
# (~15 us with PyTorch's dispatcher, measured on the benchmark host: a layer whose plan issues many
# operations is bound by the CPU, not the GPU).
_FLOPS_PER_BYTE = 17.0
_LAUNCH_FLOPS = 1.5e8
_HOST_FLOPS_PER_CALL = 7.5e8
# aten operations and kernels of each plan (measured on the 2-d plans, tests/nomiopen_conv/test_conv_plans.py)
_CALLS = {"im2col": (8, 3), "gemm1x1": (7, 2), "col2im": (6, 2), "winograd2": (16, 7), "winograd4": (16, 7)}


def _winograd_fits(weight_shape, dtype: torch.dtype, geom: Geometry) -> bool:
    return (geom.groups == 1 and all(k == 3 for k in weight_shape[2:]) and all(s == 1 for s in geom.stride)
            and all(d == 1 for d in geom.dilation) and dtype.is_floating_point)


def _is_depthwise(weight_shape, geom: Geometry) -> bool:
    return geom.groups > 1 and weight_shape[1] == 1


def _is_plain_1x1(weight_shape, geom: Geometry, lo, in_spatial, out_spatial) -> bool:
    # no padding at either end: the output is exactly the (subsampled) input grid
    return (all(k == 1 for k in weight_shape[2:]) and not any(lo)
            and all(o == (i - 1) // s + 1 for o, i, s in zip(out_spatial, in_spatial, geom.stride)))


def _winograd_names(dtype: torch.dtype) -> list[str]:
    return ["winograd2", "winograd4"] if dtype in (torch.float32, torch.float64) else ["winograd2"]


def _candidates(weight_shape, dtype: torch.dtype, geom: Geometry, lo, in_spatial, out_spatial) -> list[str]:
    """Algorithms for the forward and weight-gradient problems."""
    if _is_depthwise(weight_shape, geom):
        return ["depthwise"]
    if _is_plain_1x1(weight_shape, geom, lo, in_spatial, out_spatial):
        return ["gemm1x1"]
    return ["im2col"] + (_winograd_names(dtype) if _winograd_fits(weight_shape, dtype, geom) else [])


def input_grad_candidates(weight_shape, dtype: torch.dtype, geom: Geometry, lo) -> list[str]:
    """Algorithms of the fast 2-d input gradient: col2im always; Winograd with the flipped kernel
    where the equivalent stride-1 convolution has no negative padding."""
    names = ["col2im"]
    if _winograd_fits(weight_shape, dtype, geom) and all(p <= 2 for p in lo):
        names += _winograd_names(dtype)
    return names


def _cost(algo: str, problem: str, x_shape, elt: int, k: int, out_spatial, kernel, gy_rows_copy: bool) -> float:
    """Estimated time in FLOP units: the larger of the GPU's work (FLOPs + bytes moved + kernels)
    and the host's (tensor operations issued). x is the problem's input ([N, C, *S]), k its output
    channels."""
    n, c = x_shape[:2]
    p_in, p = n * prod(x_shape[2:]), n * prod(out_spatial)
    calls, kernels = _CALLS.get(algo, (12, 6))
    if algo in ("im2col", "gemm1x1", "col2im"):
        kk = prod(kernel)
        cols = 0 if algo == "gemm1x1" else p * kk * c
        moved = 2 * p_in * c + 2 * cols + p * k * (3 if gy_rows_copy else 1)
        flops = 2 * p * kk * c * k
    else:
        m = 4 if algo == "winograd4" else 2
        nd = len(out_spatial)
        alpha_n = (m + 2) ** nd
        r = alpha_n / m**nd
        waste = prod(m * math.ceil(o / m) / o for o in out_spatial)
        pw = p * waste
        if problem == "weight_grad":
            moved = 2 * p_in * c + 5 * r * pw * c + p * k + (2 + 2 * r) * pw * k
        else:
            moved = 2 * p_in * c + 5 * r * pw * c + (2 * r + 3) * pw * k
        flops = 2 * r * pw * c * k + 2 * alpha_n * r * pw * c + 2 * alpha_n * pw * k
    gpu = flops + moved * elt * _FLOPS_PER_BYTE + kernels * _LAUNCH_FLOPS
    host = calls * _HOST_FLOPS_PER_CALL
    # the two overlap (the GPU runs behind the host), never perfectly: a little of the faster one shows
    return max(gpu, host) + 0.1 * min(gpu, host)


def _estimate(names, problem, dtype, x_shape, elt, k, out_spatial, kernel, gy_rows_copy) -> str:
    if len(names) == 1 or dtype in _HALF:
        return names[0]  # half precision: BLAS is fast enough that im2col's fewer bytes win
    return min(names, key=lambda a: _cost(a, problem, x_shape, elt, k, out_spatial, kernel, gy_rows_copy))


def _heuristic(names, problem, x, k, out_spatial, kernel, gy_rows_copy=False) -> str:
    """What `auto` picks among `names` for input x (the cost model on its own, for tests and tools)."""
    return _estimate(names, problem, x.dtype, tuple(x.shape), x.element_size(), k, tuple(out_spatial),
                     tuple(kernel), gy_rows_copy)


def _policy_pick(pol: str, names: tuple, estimate: str) -> str:
    """The algorithm a policy asks for among `names` ("" when the candidates must be timed)."""
    if len(names) == 1:
        return names[0]
    if pol in names:
        return pol
    if pol == "winograd4" and "winograd2" in names:
        return "winograd2"
    if pol in ("im2col", "winograd2", "winograd4"):
        return names[0]  # im2col, or col2im for the input gradient
    return "" if pol == "tune" else estimate


@functools.lru_cache(maxsize=4096)  # pure function of shapes: decided once per layer, not every step
def _policy_choice(pol: str, problem: str, weight_shape, dtype, geom: Geometry, lo, x_shape, elt: int, k: int,
                   out_spatial, gy_rows_copy: bool) -> tuple[str, tuple[str, ...], str]:
    """(algorithm, candidates, cost-model pick) for the generic path; algorithm "" means: time them."""
    names = tuple(_candidates(weight_shape, dtype, geom, lo, x_shape[2:], out_spatial))
    estimate = _estimate(names, problem, dtype, x_shape, elt, k, out_spatial, weight_shape[2:], gy_rows_copy)
    return _policy_pick(pol, names, estimate), names, estimate


def _layout_tag(t: torch.Tensor) -> str:
    return "cl" if is_channels_last_dense(t) else "c" if t.is_contiguous() else "s"


def _choose(problem: str, x: torch.Tensor, weight_shape, geom: Geometry, lo, k: int, out_spatial, key_extra,
            run: Callable[[str], object], gy_rows_copy: bool = False) -> str:
    algo, names, estimate = _policy_choice(policy.current(), problem, tuple(weight_shape), x.dtype, geom, tuple(lo),
                                           tuple(x.shape), x.element_size(), k, tuple(out_spatial), gy_rows_copy)
    if algo:
        return algo
    key = (problem, tuple(x.shape), _layout_tag(x), tuple(weight_shape), geom, tuple(lo), *key_extra(), x.dtype,
           x.device)
    return _tuned_choice(key, names, estimate, run, x.device)


def pick(problem: str, names, x: torch.Tensor, k: int, out_spatial, kernel, key, run: Callable[[str], object],
         gy_rows_copy: bool = False) -> str:
    """The algorithm the current policy gives one problem of a plan being built: `names` are the
    candidates, x the problem's input, `key` identifies the problem for `tune`, run(name) runs a
    candidate once (for timing)."""
    names = tuple(names)
    estimate = _estimate(names, problem, x.dtype, tuple(x.shape), x.element_size(), k, tuple(out_spatial),
                         tuple(kernel), gy_rows_copy)
    algo = _policy_pick(policy.current(), names, estimate)
    return algo or _tuned_choice((problem, *key), names, estimate, run, x.device)


def _tuned_choice(key, names, estimate: str, run, device) -> str:
    chosen = tuned.get(key)
    if chosen is None:
        chosen = _tune(names, run, device)
        if chosen is None:  # cannot time now (e.g. during CUDA graph capture)
            return estimate
        tuned[key] = chosen
    return chosen[0]


def _tune(names, run, device):
    if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        return None
    times = {}
    for name in names:
        try:
            times[name] = _time(lambda: run(name), device)
        except RuntimeError:  # out of memory, or a BLAS refusing the shape: no candidate then
            times[name] = math.inf
    best = min(times, key=times.get)
    return (best, times) if times[best] < math.inf else None


def _time(fn, device, reps: int = 3) -> float:
    fn()  # warm-up: allocator, cuBLAS heuristics
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(reps):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / reps
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) * 1e3 / reps


def _run_forward(algo: str, x, w, bias, geom: Geometry, lo, out) -> None:
    if algo == "gemm1x1":
        gemm1x1.forward(x, w, bias, geom, out)
    elif algo == "depthwise":
        depthwise.forward(x, w, bias, geom, lo, out)
    elif algo.startswith("winograd"):
        winograd.forward(x, w, bias, lo, out, m=int(algo[-1]))
    else:
        im2col.forward(x, w, bias, geom, lo, out)


def conv_forward(x: torch.Tensor, w: torch.Tensor, bias, geom: Geometry, lo, out: torch.Tensor) -> str:
    """out[N, K, *So] = conv(x, w) + bias, x zero-padded by `lo` at the start of each spatial dim."""
    algo = _choose("forward", x, w.shape, geom, lo, w.shape[0], out.shape[2:],
                   lambda: (tuple(out.shape), _layout_tag(out)),
                   run=lambda a: _run_forward(a, x, w, bias, geom, lo, torch.empty_like(out)))
    stats["forward:" + algo] += 1
    _run_forward(algo, x, w, bias, geom, lo, out)
    return algo


def flipped_weight(w: torch.Tensor, groups: int) -> torch.Tensor:
    """The kernel of the input gradient of a stride-1 convolution: [K, C/g, *k] -> [C, K/g, *k],
    spatially reversed, in- and output channels swapped within each group."""
    k, cg = w.shape[:2]
    nd = w.dim() - 2
    wg = w.view(groups, k // groups, cg, *w.shape[2:]).transpose(1, 2)
    return wg.flip(list(range(3, 3 + nd))).reshape(groups * cg, k // groups, *w.shape[2:])


def conv_input_grad(gy: torch.Tensor, w: torch.Tensor, geom: Geometry, lo, out: torch.Tensor) -> str:
    """out[N, C, *S] = the adjoint of conv_forward (with the same `lo`) applied to gy."""
    kernel = w.shape[2:]
    if all(s == 1 for s in geom.stride):
        reach = [d * (k - 1) - p for d, k, p in zip(geom.dilation, kernel, lo)]
        return conv_forward(gy, flipped_weight(w, geom.groups), None, geom, reach, out)
    if _is_depthwise(w.shape, geom) and w.shape[0] == geom.groups:
        stats["input_grad:depthwise"] += 1
        depthwise.input_grad(gy, w, geom, lo, out)
        return "depthwise"
    stats["input_grad:col2im"] += 1
    im2col.input_grad(gy, w, geom, lo, out)
    return "col2im"


def _run_weight_grad(algo: str, x, gy, geom: Geometry, lo, weight_shape) -> torch.Tensor:
    if algo == "gemm1x1":
        return gemm1x1.weight_grad(x, gy, geom, weight_shape)
    if algo == "depthwise":
        return depthwise.weight_grad(x, gy, geom, lo, weight_shape)
    if algo.startswith("winograd"):
        return winograd.weight_grad(x, gy, lo, m=int(algo[-1]))
    return im2col.weight_grad(x, gy, geom, lo, weight_shape)


def conv_weight_grad(x: torch.Tensor, gy: torch.Tensor, geom: Geometry, lo, weight_shape) -> torch.Tensor:
    """dL/dw [K, C/g, *k] (any strides, float32 for half inputs) of conv_forward(x, w) given gy."""
    algo = _choose("weight_grad", x, weight_shape, geom, lo, gy.shape[1], gy.shape[2:],
                   lambda: (tuple(gy.shape), _layout_tag(gy)),
                   run=lambda a: _run_weight_grad(a, x, gy, geom, lo, weight_shape),
                   gy_rows_copy=not is_channels_last_dense(gy))
    stats["weight_grad:" + algo] += 1
    return _run_weight_grad(algo, x, gy, geom, lo, weight_shape)
