"""Elementwise math (forward and backward) and reductions."""
from __future__ import annotations

from navitrain.probe.cases import case
from navitrain.probe.catalogue._util import backward, distinct, leaf
from navitrain.probe.inputs import F, rand, randn, torch


@case("elementwise-arith", dtype="float32", group="elementwise")
def elementwise_arith(device, dtype):
    """+ - * / and pow with broadcasting and Python scalars."""
    a = randn(8, 1, 16, device=device, dtype=dtype)
    b = randn(1, 5, 16, device=device, dtype=dtype)
    c = randn(16, device=device, dtype=dtype).abs() + 0.5
    return a + b, a - b * 3, a * b, a / c, (a * 2.5 - 1) / 4, c.pow(1.5), torch.rsub(a, 1.0), -b


@case("elementwise-unary", dtype="float32", group="elementwise")
def elementwise_unary(device, dtype):
    """exp, log, sqrt, rsqrt, reciprocal, tanh, sigmoid, sin, cos, abs, sign, floor."""
    x = randn(33, 65, device=device, dtype=dtype)
    p = x.abs() + 0.1
    return (torch.exp(x), torch.log(p), torch.sqrt(p), torch.rsqrt(p), torch.reciprocal(p), torch.tanh(x),
            torch.sigmoid(x), torch.sin(x), torch.cos(x), x.abs(), x.sign(), torch.floor(x * 4))


@case("activations-fwd-bwd", dtype="float32", group="elementwise")
def activations(device, dtype):
    """relu, gelu (erf and tanh), silu, leaky_relu, elu, softplus, hardtanh: outputs and gradients."""
    outs = {}
    for name, fn in (("relu", F.relu), ("gelu", F.gelu), ("gelu-tanh", lambda t: F.gelu(t, approximate="tanh")),
                     ("silu", F.silu), ("leaky_relu", lambda t: F.leaky_relu(t, 0.1)), ("elu", F.elu),
                     ("softplus", F.softplus), ("hardtanh", F.hardtanh)):
        x = leaf(randn(17, 31, device=device, dtype=dtype) * 2)
        y = fn(x)
        (gx,) = backward(y, x)
        outs[name] = y
        outs[f"grad {name}"] = gx
    return outs


@case("compare-where-clamp", dtype="float32", group="elementwise")
def compare_where_clamp(device, dtype):
    """Comparisons (bool results), where, clamp, maximum/minimum, masked_fill, isfinite."""
    a = randn(40, 41, device=device, dtype=dtype)
    b = randn(40, 41, device=device, dtype=dtype)
    return (a > b, a <= 0.2, a == a, torch.where(a > b, a, b * 2), a.clamp(-0.5, 0.7), torch.maximum(a, b),
            torch.minimum(a, b), a.masked_fill(b > 1, 9.0), torch.isfinite(a / (b > 0)))


@case("elementwise-fp16", dtype="float16", group="elementwise")
def elementwise_fp16(device, dtype):
    """Half-precision arithmetic and transcendental functions (fp16 corruption shows here first)."""
    a = randn(64, 64, device=device, dtype=dtype)
    b = randn(64, 64, device=device, dtype=dtype)
    return a + b, a * b, torch.exp(a.clamp(max=4)), torch.tanh(a), torch.sigmoid(b), F.gelu(a)


@case("optimizer-primitives", dtype="float32", group="elementwise")
def optimizer_primitives(device, dtype):
    """In-place add_, mul_, addcmul_, addcdiv_, lerp_, sqrt_ as optimisers use them (alpha/value args)."""
    p = randn(50, 30, device=device, dtype=dtype)
    g = randn(50, 30, device=device, dtype=dtype)
    m = randn(50, 30, device=device, dtype=dtype)
    v = randn(50, 30, device=device, dtype=dtype).abs()
    p.add_(g, alpha=-0.1)
    m.mul_(0.9).add_(g, alpha=0.1)
    v.mul_(0.999).addcmul_(g, g, value=0.001)
    denom = v.sqrt().add_(1e-8)
    p.addcdiv_(m, denom, value=-0.01)
    m2 = m.clone().lerp_(g, 0.25)
    return p, m, v, m2


@case("reduce-sum-mean", dtype="float32", group="reductions")
def reduce_sum_mean(device, dtype):
    """sum and mean over all, one and several dims, keepdim; a long row (tree reductions)."""
    x = randn(7, 9, 130, device=device, dtype=dtype)
    long = rand(100_003, device=device, dtype=dtype)  # positive: a well-conditioned sum
    return (x.sum(), x.mean(), x.sum(dim=2), x.mean(dim=(0, 2), keepdim=True), x.sum(dim=0), long.sum(),
            long.mean())


@case("reduce-max-argmax", dtype="float32", group="reductions")
def reduce_max_argmax(device, dtype):
    """max/min with indices (distinct values: no ties to break differently), amax, argmax, argmin over dims."""
    x = distinct(12, 33, 17, device=device, dtype=dtype)
    values, indices = x.max(dim=1)
    mins, min_idx = x.min(dim=2)
    return values, indices, mins, min_idx, x.amax(dim=(0, 2)), x.argmax(), x.argmin(dim=0)


@case("reduce-var-norm", dtype="float32", group="reductions")
def reduce_var_norm(device, dtype):
    """var, std (biased and not), vector norms and logsumexp: the statistics normalisation layers use."""
    x = randn(16, 300, device=device, dtype=dtype) * 3 + 1
    return (x.var(dim=1), x.var(dim=1, unbiased=False), x.std(dim=0), torch.linalg.vector_norm(x, dim=1),
            x.norm(), torch.logsumexp(x, dim=1))


@case("cumsum-sort-topk", dtype="float32", group="reductions")
def cumsum_sort_topk(device, dtype):
    """cumsum, sort, topk, argsort (used by metrics and samplers)."""
    x = distinct(8, 100, device=device, dtype=dtype)
    values, indices = x.sort(dim=1)
    top_values, top_indices = x.topk(5, dim=1)
    return x.cumsum(dim=1), values, indices, top_values, top_indices, x.argsort(dim=0, descending=True)
