"""NaN, +-inf and integer division by zero through every wgpu pointwise, activation, normalization,
reduction and loss handler, against the CPU (issue 15: the wgpu device never turns an IEEE special value
or an error into a number).

One session-scoped sweep runs every case once, on the CPU and on wgpu, while a recording wrapper around
each `@implements` handler notes which aten ops really ran. Each case is then its own test (so a failure
names the op), and `test_every_handler_is_swept` checks that every handler of the swept families ran, or
is in NOT_SWEPT -- which must stay minimal: an op listed there that the sweep does reach fails the test.
"""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils._pytree import tree_flatten

from navitrain.wgpu import dispatch

DEV = "wgpu"
NAN, INF = float("nan"), float("inf")

# Handler families the rule covers (module of the handler -> swept).
SWEPT_MODULES = {
    "navitrain.wgpu.ops.activations", "navitrain.wgpu.ops.elementwise", "navitrain.wgpu.ops.loss_pointwise",
    "navitrain.wgpu.ops.loss_nll", "navitrain.wgpu.ops.norm", "navitrain.wgpu.ops.row_norm",
    "navitrain.wgpu.ops.reductions",
    "navitrain.wgpu.ops.scan", "navitrain.wgpu.ops.softmax", "navitrain.wgpu.ops.foreach",
    "navitrain.wgpu.ops.pooling", "navitrain.wgpu.ops.amp",
}

# Handlers of those families the sweep does not reach yet, with the reason. The coverage test fails
# if one of these *is* reached (the list must stay minimal) or if a new handler is in neither place.
NOT_SWEPT: dict[str, str] = {
    "aten._foreach_lgamma.default": "decomposes to prims.lgamma, which has no kernel: the counted CPU fallback",
    "aten._foreach_lgamma_.default": "decomposes to prims.lgamma, which has no kernel: the counted CPU fallback",
    "aten._is_all_true.default": "bool tensors only (no float special values); test_model_code_ops.py compares it",
    "aten._is_any_true.default": "bool tensors only (no float special values); test_model_code_ops.py compares it",
}


def rows(seed: int, n: int = 8, dtype=torch.float32) -> torch.Tensor:
    """An (8, n) float tensor of fresh random values where each row carries one kind of special value:
    NaN; +inf; +inf and -inf; none; -inf; two +inf (layer_norm's [inf, inf, 1, 2]); signed zeros and
    values where exp over/underflows; all -inf (softmax of a fully masked row)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(8, n, generator=g) * 2
    col = lambda k: int(torch.randint(n, (1,), generator=g))  # noqa: E731
    x[0, col(0)] = NAN
    x[1, col(1)] = INF
    x[2, 0], x[2, n - 1] = INF, -INF
    x[4, col(4)] = -INF
    x[5, 0], x[5, 1] = INF, INF
    x[6, :6] = torch.tensor([0.0, -0.0, 30.0, -30.0, 90.0, -90.0])
    x[7] = -INF
    return x.to(dtype)


def probs(seed: int) -> torch.Tensor:
    """Values in [0, 1] and NaN (inputs of binary_cross_entropy)."""
    p = torch.rand(8, 8, generator=torch.Generator().manual_seed(seed)) * 0.98 + 0.01
    p[0, 3] = NAN
    p[3, 0], p[3, 1] = 0.0, 1.0
    return p


def positive(seed: int) -> torch.Tensor:
    """Values with NaN, +inf, 0 for functions defined on [0, inf)."""
    x = rows(seed).abs()
    x[6, 0] = 0.0
    return x


# -- the cases -----------------------------------------------------------------------------------------
# A case: name -> (function, inputs). The function runs once on CPU tensors and once on the same tensors
# moved to wgpu; every tensor it returns is compared (NaN == NaN). In-place ops clone first.
CASES: dict[str, tuple] = {}


def case(name, fn, *inputs, tol=(1e-4, 1e-5), ref=None, nan_if_cpu_raises=False):
    """`ref`: what the CPU runs instead of `fn`, where the CPU's own kernel is not the reference (said
    at each use). `nan_if_cpu_raises`: where the CPU refuses the input, wgpu may raise or return NaN
    as its first output (a check would cost a sync), but never a number."""
    assert name not in CASES, name
    CASES[name] = (fn, inputs, tol, ref, nan_if_cpu_raises)


def with_grad(f, *, seed=99):
    """f(*xs) and the gradients of its floating inputs for a random output gradient."""
    def run(*xs):
        leaves = [x.detach().clone().requires_grad_() if x.dtype.is_floating_point else x for x in xs]
        out = f(*leaves)
        g = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed)).to(out.device, out.dtype)
        grads = torch.autograd.grad(out, [x for x in leaves if x.requires_grad], g, allow_unused=True)
        return (out, *[t for t in grads if t is not None])
    return run


def _unary_variants(name, make):
    fn = getattr(torch, name, None) or getattr(torch.special, name)
    # lavapipe's asin/acos are 4e-4 off near |x| = 1 (a precision matter, not a special value).
    tol = (1e-3, 1e-3) if name in ("asin", "acos") else (1e-4, 1e-5)
    case(name, lambda x: fn(x), make(1), tol=tol)
    if hasattr(torch.Tensor, name + "_"):
        case(name + "_", lambda x: getattr(x.clone(), name + "_")(), make(2), tol=tol)
    try:
        fn(torch.ones(1), out=torch.empty(1))
        has_out = True
    except TypeError:
        has_out = False
    if has_out:
        case(name + ".out", lambda x: fn(x, out=torch.empty_like(x)), make(3), tol=tol)


for _n in ("exp", "exp2", "expm1", "log", "log2", "log10", "log1p", "sqrt", "rsqrt", "sin", "cos", "tan",
           "asin", "acos", "atan", "sinh", "cosh", "tanh", "asinh", "acosh", "atanh", "sigmoid", "erf", "erfc",
           "reciprocal", "neg", "abs", "sign", "floor", "ceil", "trunc", "round", "frac", "relu", "square",
           "erfinv", "lgamma", "digamma"):
    _unary_variants(_n, rows)

case("isnan", torch.isnan, rows(4))
case("isinf", torch.isinf, rows(5))
case("isfinite", torch.isfinite, rows(6))
case("nan_to_num", lambda x: torch.nan_to_num(x), rows(7))
case("nan_to_num(values)", lambda x: torch.nan_to_num(x, 1.0, 2.0, -3.0), rows(8))

# Binary arithmetic: tensor-tensor (specials against specials), tensor-scalar with special scalars,
# in place and out=.
for _n in ("add", "sub", "mul", "div", "maximum", "minimum", "remainder", "fmod", "atan2", "pow"):
    _f = getattr(torch, _n)
    case(f"{_n}(T,T)", lambda a, b, f=_f: f(a, b), rows(10), rows(11).t().contiguous())
    if _n not in ("maximum", "minimum", "atan2"):
        case(f"{_n}(T,nan)", lambda a, f=_f: f(a, NAN), rows(12))
        case(f"{_n}(T,inf)", lambda a, f=_f: f(a, INF), rows(13))
        case(f"{_n}(T,0.)", lambda a, f=_f: f(a, 0.0), rows(14))
    case(f"{_n}_", lambda a, b, n=_n: getattr(a.clone(), n + "_")(b), rows(15), rows(16))
    if _n in ("add", "sub", "mul", "div", "remainder", "fmod", "pow"):
        case(f"{_n}_(scalar)", lambda a, n=_n: getattr(a.clone(), n + "_")(INF), rows(17))
    if _n in ("add", "sub", "mul", "div", "maximum", "minimum", "atan2"):
        case(f"{_n}.out", lambda a, b, f=_f: f(a, b, out=torch.empty_like(a)), rows(18), rows(19))
case("add(alpha)", lambda a, b: torch.add(a, b, alpha=INF), rows(20), rows(21))
case("add(bool)", lambda a, b: a | b, rows(20) > 0, rows(21) > 0)
case("rsub", lambda a: torch.rsub(a, INF), rows(22))
case("rsub(T,T)", lambda a, b: torch.rsub(a, b), rows(22), rows(23))
case("pow(scalar,T)", lambda a: torch.pow(2.0, a), rows(24))
case("pow(T,2)", lambda a: a ** 2, rows(25))
case("pow(T,0.5)", lambda a: a ** 0.5, rows(26))
case("pow(T,-1)", lambda a: a ** -1.0, rows(26))
case("pow(T,-0.5)", lambda a: a ** -0.5, rows(26))   # rsqrt in PyTorch: -0.0 gives -inf, -inf nan
case("pow(-inf,odd)", lambda a, b: torch.pow(a, b), rows(27),
     torch.tensor([3.0, 2.0, -3.0, 0.5, INF, -INF, NAN, 0.0]).expand(8, 8).contiguous())
for _mode in ("trunc", "floor"):
    case(f"div({_mode})", lambda a, b, m=_mode: torch.div(a, b, rounding_mode=m), rows(28), rows(29))
    case(f"div_({_mode})", lambda a, b, m=_mode: a.clone().div_(b, rounding_mode=m), rows(28), rows(29))
    case(f"div({_mode},0.)", lambda a, m=_mode: torch.div(a, 0.0, rounding_mode=m), rows(30))
case("floor_divide", lambda a, b: torch.floor_divide(a, b), rows(31), rows(32))
case("floor_divide(scalar)", lambda a: torch.floor_divide(a, 0.0), rows(31))

for _n in ("eq", "ne", "lt", "le", "gt", "ge"):
    case(f"{_n}(T,T)", lambda a, b, n=_n: getattr(torch, n)(a, b), rows(33), rows(34).flip(1))
    case(f"{_n}(T,nan)", lambda a, n=_n: getattr(torch, n)(a, NAN), rows(35))
    case(f"{_n}_", lambda a, b, n=_n: getattr(a.clone(), n + "_")(b), rows(36), rows(36).flip(0))
    case(f"{_n}_(inf)", lambda a, n=_n: getattr(a.clone(), n + "_")(INF), rows(37))

case("where", lambda c, a, b: torch.where(c > 0, a, b), rows(38), rows(39), rows(40))
case("where(scalar)", lambda c, a: torch.where(c > 0, a, NAN), rows(38), rows(39))
case("where(scalar,scalar)", lambda c: torch.where(c > 0, INF, NAN), rows(38))
case("where(scalar self)", lambda c, b: torch.where(c > 0, -INF, b), rows(38), rows(39))
case("masked_fill", lambda x, m: x.masked_fill(m > 0, NAN), rows(41), rows(42))
case("masked_fill(T)", lambda x, m: x.masked_fill(m > 0, torch.tensor(INF)), rows(41), rows(42))
case("masked_fill_", lambda x, m: x.clone().masked_fill_(m > 0, -INF), rows(41), rows(42))
case("masked_fill_(T)", lambda x, m: x.clone().masked_fill_(m > 0, torch.tensor(NAN)), rows(41), rows(42))
for _n in ("logical_and", "logical_or", "logical_xor"):
    case(_n, lambda a, b, n=_n: getattr(torch, n)(a, b), rows(43), rows(44))
    case(_n + "_", lambda a, b, n=_n: getattr(a.clone(), n + "_")(b), rows(43), rows(44))
case("logical_not", torch.logical_not, rows(45))

case("clamp", lambda x: torch.clamp(x, -1.0, 1.0), rows(46))
case("clamp(nan bound)", lambda x: torch.clamp(x, NAN, 1.0), rows(46))
case("clamp(T)", lambda x, lo, hi: torch.clamp(x, lo, hi), rows(47), rows(48), rows(49))
case("clamp_", lambda x: x.clone().clamp_(-1.0, 1.0), rows(50))
case("clamp_(T)", lambda x, lo: x.clone().clamp_(lo), rows(50), rows(51))
case("clamp_min", lambda x: torch.clamp_min(x, 0.5), rows(52))
case("clamp_min(T)", lambda x, lo: torch.clamp_min(x, lo), rows(52), rows(53))
case("clamp_min_", lambda x: torch.clamp_min_(x.clone(), 0.5), rows(52))
case("clamp_min_(T)", lambda x, lo: torch.clamp_min_(x.clone(), lo), rows(52), rows(53))
case("clamp_max", lambda x: torch.clamp_max(x, 0.5), rows(54))
case("clamp_max(T)", lambda x, hi: torch.clamp_max(x, hi), rows(54), rows(55))
case("clamp_max_", lambda x: torch.clamp_max_(x.clone(), 0.5), rows(54))
case("clamp_max_(T)", lambda x, hi: torch.clamp_max_(x.clone(), hi), rows(54), rows(55))

case("addcmul", lambda x, a, b: torch.addcmul(x, a, b, value=0.5), rows(56), rows(57), rows(58))
case("addcmul_", lambda x, a, b: x.clone().addcmul_(a, b), rows(56), rows(57), rows(58))
case("addcdiv", lambda x, a, b: torch.addcdiv(x, a, b, value=0.5), rows(59), rows(60), rows(61))
case("addcdiv_", lambda x, a, b: x.clone().addcdiv_(a, b), rows(59), rows(60), rows(61))
case("lerp", lambda a, b: torch.lerp(a, b, 0.3), rows(62), rows(63))
case("lerp(T)", lambda a, b, w: torch.lerp(a, b, w), rows(62), rows(63), rows(64))
case("lerp_", lambda a, b: a.clone().lerp_(b, 0.7), rows(62), rows(63))
case("lerp_(T)", lambda a, b, w: a.clone().lerp_(b, w), rows(62), rows(63), rows(64))

# -- activations, forward and backward ---------------------------------------------------------------
for _name, _f in {
    "relu": F.relu, "relu6": F.relu6, "hardtanh": lambda x: F.hardtanh(x, -2.0, 2.0), "sigmoid": torch.sigmoid,
    "tanh": torch.tanh, "silu": F.silu, "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "leaky_relu": lambda x: F.leaky_relu(x, 0.1), "elu": F.elu, "selu": F.selu, "celu": F.celu,
    "softplus": F.softplus, "hardswish": F.hardswish, "hardsigmoid": F.hardsigmoid, "mish": F.mish,
    "threshold": lambda x: F.threshold(x, 0.5, -2.0), "logsigmoid": F.logsigmoid,
}.items():
    case(f"act {_name}", _f, rows(70))
    case(f"act {_name} backward", with_grad(_f), rows(71))
# The CPU's float32 gelu (its vectorized erf) gives NaN at +inf, and so does wgpu (its float64 kernel
# gives inf).
case("act gelu", F.gelu, rows(70))
case("act gelu backward", with_grad(F.gelu), rows(71))
for _name, _f in {"relu_": F.relu_, "silu_": lambda x: F.silu(x, inplace=True),
                  "leaky_relu_": lambda x: F.leaky_relu(x, 0.1, inplace=True),
                  "hardtanh_": lambda x: F.hardtanh(x, -2.0, 2.0, inplace=True)}.items():
    case(f"act {_name}", lambda x, f=_f: f(x.clone()), rows(72))
case("act elu(result) backward", with_grad(lambda x: F.elu(x.clone() * 1.0, inplace=True)), rows(73))
case("logit", torch.logit, probs(74))
case("logit(eps)", lambda x: torch.logit(x, eps=1e-3), probs(75))
case("logit(specials)", torch.logit, rows(76))

# -- normalization -----------------------------------------------------------------------------------
def _bn(train):
    def f(x, w, b):
        return F.batch_norm(x, torch.zeros(8, device=x.device), torch.ones(8, device=x.device), w, b, training=train)
    return f


_w = lambda s: torch.randn(8, generator=torch.Generator().manual_seed(s))  # noqa: E731
case("layer_norm", lambda x, w, b: F.layer_norm(x, (8,), w, b), rows(80), _w(1), _w(2))
case("layer_norm backward", with_grad(lambda x, w, b: F.layer_norm(x, (8,), w, b)), rows(81), _w(3), _w(4))
case("layer_norm(no affine) backward", with_grad(lambda x: F.layer_norm(x, (8,))), rows(82))
# batch norm: channels are the rows' columns, so some channels see NaN/inf and others do not.
case("batch_norm(train)", _bn(True), rows(83).t().reshape(8, 8, 1), _w(5), _w(6))
case("batch_norm(train) backward", with_grad(_bn(True)), rows(84).t().reshape(8, 8, 1), _w(7), _w(8))
case("batch_norm(eval)", _bn(False), rows(85).t().reshape(8, 8, 1), _w(9), _w(10))
case("batch_norm(eval) backward", with_grad(_bn(False)), rows(86).t().reshape(8, 8, 1), _w(11), _w(12))
case("batch_norm(stats)", lambda x: F.batch_norm(x, torch.zeros(8, device=x.device), torch.ones(8, device=x.device),
                                                 training=True),
     rows(87).t().reshape(8, 8, 1))
case("batch_norm(no stats)", lambda x: F.batch_norm(x, None, None, training=True), rows(88).t().reshape(8, 8, 1))
case("group_norm", lambda x, w, b: F.group_norm(x.reshape(8, 8, 1), 2, w, b), rows(89), _w(13), _w(14))
case("group_norm backward", with_grad(lambda x, w, b: F.group_norm(x.reshape(8, 8, 1), 2, w, b)),
     rows(90), _w(15), _w(16))

# -- reductions ----------------------------------------------------------------------------------------
for _name, _f in {
    "sum": lambda x: x.sum(1), "sum(all)": lambda x: x.sum(), "mean": lambda x: x.mean(1),
    "mean(all)": lambda x: x.mean(), "prod": lambda x: x.prod(1), "prod(all)": lambda x: x.prod(),
    "amax": lambda x: x.amax(1), "amin": lambda x: x.amin(1), "max": lambda x: x.max(), "min": lambda x: x.min(),
    "max(dim)": lambda x: x.max(1), "min(dim)": lambda x: x.min(1), "argmax": lambda x: x.argmax(1),
    "argmin": lambda x: x.argmin(1), "var": lambda x: x.var(1), "std": lambda x: x.std(1),
"norm": lambda x: torch.linalg.vector_norm(x, dim=1),
    "norm(inf)": lambda x: torch.linalg.vector_norm(x, INF, dim=1), "norm(1)": lambda x: x.norm(1, dim=1),
    "norm(0)": lambda x: torch.linalg.vector_norm(x, 0, dim=1),
    "norm(-inf)": lambda x: torch.linalg.vector_norm(x, -INF, dim=1),
    "norm(3)": lambda x: torch.linalg.vector_norm(x, 3.0, dim=1),
    "logsumexp": lambda x: torch.logsumexp(x, 1), "any": lambda x: x.any(1), "all": lambda x: x.all(1),
    "any(all)": lambda x: x.any(), "all(all)": lambda x: x.all(), "any(dims)": lambda x: x.any((0, 1)),
    "all(dims)": lambda x: x.all((0, 1)), "sum.out": lambda x: torch.sum(x, 1, out=torch.empty(8, device=x.device)),
    "softmax": lambda x: x.softmax(1), "log_softmax": lambda x: x.log_softmax(1),
    "cumsum": lambda x: x.cumsum(1), "cumsum_": lambda x: x.clone().cumsum_(1),
    "cumsum.out": lambda x: torch.cumsum(x, 1, out=torch.empty_like(x)), "cumprod": lambda x: x.cumprod(1),
    "cumprod_": lambda x: x.clone().cumprod_(1), "logcumsumexp": lambda x: x.logcumsumexp(1),
}.items():
    case(f"reduce {_name}", _f, rows(100 + len(CASES) % 50))
for _name, _f in {"sum": lambda x: x.sum(1), "mean": lambda x: x.mean(1), "prod": lambda x: x.prod(1),
                  "amax": lambda x: x.amax(1), "var": lambda x: x.var(1), "norm": lambda x: x.norm(dim=1),
                  "logsumexp": lambda x: torch.logsumexp(x, 1), "softmax": lambda x: x.softmax(1),
                  "log_softmax": lambda x: x.log_softmax(1), "cumsum": lambda x: x.cumsum(1),
                  "max(dim)": lambda x: x.max(1)[0]}.items():
    case(f"reduce {_name} backward", with_grad(_f), rows(150 + len(CASES) % 50))
# The CPU's var_mean takes its mean from Welford's update, which turns a row holding inf into NaN;
# mean() gives inf, and so does wgpu.
case("reduce var_mean", lambda x: torch.var_mean(x, 1), rows(199), ref=lambda x: (x.var(1), x.mean(1)))
case("reduce max(dim,int)", lambda x: (x * 10).long().max(1), rows(200).nan_to_num(0, 5, -5))

# -- losses --------------------------------------------------------------------------------------------
_tgt = torch.randint(8, (8,), generator=torch.Generator().manual_seed(5))
for _name, _f in {
    "mse": F.mse_loss, "l1": F.l1_loss, "smooth_l1": F.smooth_l1_loss, "huber": F.huber_loss,
    "kl_div": lambda a, b: F.kl_div(a, b, reduction="batchmean", log_target=True),
    "bce_with_logits": lambda a, b: F.binary_cross_entropy_with_logits(a, b.sigmoid()),
    "mse(none)": lambda a, b: F.mse_loss(a, b, reduction="none"),
    "smooth_l1(none)": lambda a, b: F.smooth_l1_loss(a, b, reduction="none"),
    "huber(sum)": lambda a, b: F.huber_loss(a, b, reduction="sum"),
}.items():
    case(f"loss {_name}", _f, rows(210), rows(211))
    case(f"loss {_name} backward", with_grad(_f), rows(212), rows(213))
for _name, _f in {"cross_entropy": lambda x: F.cross_entropy(x, _tgt.to(x.device)),
                  "cross_entropy(smoothing)": lambda x: F.cross_entropy(x, _tgt.to(x.device), label_smoothing=0.1),
                  "nll": lambda x: F.nll_loss(x, _tgt.to(x.device)),
                  "nll(none)": lambda x: F.nll_loss(x, _tgt.to(x.device), reduction="none"),
                  "nll2d": lambda x: F.nll_loss(x.reshape(2, 8, 2, 2), _tgt.reshape(2, 2, 2).to(x.device))}.items():
    case(f"loss {_name}", _f, rows(214))
    case(f"loss {_name} backward", with_grad(_f), rows(215))
case("loss bce", lambda p, t: F.binary_cross_entropy(p, t), probs(216).nan_to_num(0.5), probs(217).nan_to_num(0.5))
case("loss bce backward", with_grad(lambda p, t: F.binary_cross_entropy(p, t)), probs(218).nan_to_num(0.5),
     probs(219).nan_to_num(0.5))
case("loss bce(nan)", lambda p, t: F.binary_cross_entropy(p, t), probs(216), probs(217).nan_to_num(0.5),
     nan_if_cpu_raises=True)
case("loss bce(nan) backward", with_grad(lambda p, t: F.binary_cross_entropy(p, t)), probs(218),
     probs(219).nan_to_num(0.5), nan_if_cpu_raises=True)

# -- pooling -------------------------------------------------------------------------------------------
_img = lambda s: rows(s).reshape(1, 2, 4, 8)  # noqa: E731
case("max_pool2d", lambda x: F.max_pool2d(x, 2), _img(220))
case("max_pool2d(indices)", lambda x: F.max_pool2d(x, 2, return_indices=True), _img(221))
case("max_pool2d backward", with_grad(lambda x: F.max_pool2d(x, 2)), _img(222))
case("adaptive_max_pool2d", lambda x: F.adaptive_max_pool2d(x, (2, 3), return_indices=True), _img(223))
case("adaptive_max_pool2d backward", with_grad(lambda x: F.adaptive_max_pool2d(x, (2, 3))), _img(224))
case("avg_pool2d", lambda x: F.avg_pool2d(x, 2), _img(225))
case("avg_pool2d backward", with_grad(lambda x: F.avg_pool2d(x, 2)), _img(226))
case("adaptive_avg_pool2d", lambda x: F.adaptive_avg_pool2d(x, (2, 3)), _img(227))
case("adaptive_avg_pool2d backward", with_grad(lambda x: F.adaptive_avg_pool2d(x, (2, 3))), _img(228))

# -- embedding max_norm (the renorm's norm of a row holding NaN is NaN: the row is left as it is) -----------
def _renorm(p):
    def run(w):
        w = w.clone()
        out = F.embedding(torch.tensor([0, 1, 2, 5, 6, 3]).to(w.device), w, max_norm=1.0, norm_type=p)
        return out, w
    return run


for _k, _p in enumerate((INF, 2.0, 1.0)):
    case(f"embedding(max_norm, p={_p})", _renorm(_p), rows(236 + _k))


# -- foreach (optimizers, clip_grad_norm) and AMP ----------------------------------------------------------


def _clip(a, b):
    pa, pb = a.clone().requires_grad_(), b.clone().requires_grad_()
    pa.grad, pb.grad = a.clone(), b.clone()
    norm = torch.nn.utils.clip_grad_norm_([pa, pb], 1.0, foreach=True)
    return norm, pa.grad, pb.grad


case("clip_grad_norm_", _clip, rows(230), rows(231))
case("clip_grad_norm_(finite)", _clip, torch.randn(4, 4), torch.randn(3))
case("_foreach_norm", lambda a, b: torch._foreach_norm([a, b]), rows(232), rows(233))
case("_foreach_norm(inf)", lambda a, b: torch._foreach_norm([a, b], INF), rows(232), rows(233))


# Every other foreach op, out of place and in place, in each of its overloads (List, Scalar, ScalarList,
# Tensor): the optimizers' arithmetic. Lists of two tensors of different shapes.
def _fe(name, *rest, inplace=False, **kw):
    """torch._foreach_<name>[_]([a, b], *rest), where "list" in rest stands for [c, d]."""
    def run(a, b, c, d):
        xs = [a.clone(), b.clone()]
        args = [[c, d] if isinstance(r, str) and r == "list" else r for r in rest]
        out = getattr(torch, f"_foreach_{name}{'_' if inplace else ''}")(xs, *args, **kw)
        return xs if inplace else out
    return run


def _fe_tensor(name, inplace):
    """The .Tensor overload: a 0-d tensor on the lists' device as the scalar."""
    def run(a, b, c, d):
        xs = [a.clone(), b.clone()]
        out = getattr(torch, f"_foreach_{name}{'_' if inplace else ''}")(xs, c[1, 1].clone())
        return xs if inplace else out
    return run


def _fe3(name, extra, inplace):
    """addcmul/addcdiv: self + extra * t1 (op) t2 with t1 = [c, d], t2 = [d-shaped halves of c, d]."""
    def run(a, b, c, d):
        xs = [a.clone(), b.clone()]
        e = extra(c) if callable(extra) else extra
        out = getattr(torch, f"_foreach_{name}{'_' if inplace else ''}")(xs, [c, d], [c * 0.5, d * 2], e)
        return xs if inplace else out
    return run


_fe_in = lambda s: (rows(s), rows(s + 1)[:3], rows(s + 2), rows(s + 3)[:3])  # noqa: E731
for _n in ("abs", "acos", "asin", "atan", "ceil", "cos", "cosh", "erf", "erfc", "exp", "expm1", "floor", "frac",
           "log", "log10", "log1p", "log2", "neg", "reciprocal", "round", "rsqrt", "sigmoid", "sign",
           "sin", "sinh", "sqrt", "tan", "tanh", "trunc", "zero", "clone"):
    _tol = (1e-3, 1e-3) if _n in ("asin", "acos") else (1e-4, 1e-5)
    if _n != "zero":
        case(f"_foreach_{_n}", _fe(_n), *_fe_in(260), tol=_tol)
    if _n != "clone":
        case(f"_foreach_{_n}_", _fe(_n, inplace=True), *_fe_in(261), tol=_tol)
for _inplace in (False, True):
    _s = "_" if _inplace else ""
    for _n in ("add", "sub", "mul", "div", "maximum", "minimum", "clamp_min", "clamp_max", "pow", "lerp"):
        # lerp's List overload takes a list of weights too (the lists' own values, specials included).
        case(f"_foreach_{_n}{_s}(List)", _fe(_n, "list", *(["list"] if _n == "lerp" else []), inplace=_inplace),
             *_fe_in(262))
        case(f"_foreach_{_n}{_s}(Scalar)", _fe(_n, *(["list"] if _n == "lerp" else []), -INF if _n == "pow" else NAN,
                                               inplace=_inplace), *_fe_in(263))
        case(f"_foreach_{_n}{_s}(ScalarList)", _fe(_n, *(["list"] if _n == "lerp" else []), [INF, 0.5],
                                                   inplace=_inplace), *_fe_in(264))
    for _n in ("add", "mul", "div"):
        case(f"_foreach_{_n}{_s}(Tensor)", _fe_tensor(_n, _inplace), *_fe_in(265))
    for _n in ("addcmul", "addcdiv"):
        case(f"_foreach_{_n}{_s}(Scalar)", _fe3(_n, 0.5, _inplace), *_fe_in(268))
        case(f"_foreach_{_n}{_s}(ScalarList)", _fe3(_n, [0.5, INF], _inplace), *_fe_in(269))
        case(f"_foreach_{_n}{_s}(Tensor)", _fe3(_n, lambda c: torch.tensor([0.5, -2.0]).to(c.device), _inplace),
             *_fe_in(270))
case("_foreach_add(alpha)", _fe("add", "list", alpha=INF), *_fe_in(266))
# torch._foreach_add(list, tensor) takes the .Scalar overload; only aten reaches .Tensor.
case("aten._foreach_add.Tensor", lambda a, b, c, d: torch.ops.aten._foreach_add.Tensor([a, b], c[1, 1], alpha=2.0),
     *_fe_in(274))
case("aten._foreach_add_.Tensor", lambda a, b, c, d: torch.ops.aten._foreach_add_.Tensor([a, b], c[0, 1]) or [a, b],
     *_fe_in(275))
case("_foreach_pow(ScalarAndTensor)", lambda a, b, c, d: torch._foreach_pow(2.0, [a, b]), *_fe_in(267))
case("_foreach_copy_", lambda a, b, c, d: torch._foreach_copy_([a.clone(), b.clone()], [c, d]), *_fe_in(272))
case("_foreach_mm", lambda a, b, c, d: torch._foreach_mm([a, b.t()], [c, d]), *_fe_in(273))


def _amp(a, b):
    found = torch.zeros(1, device=a.device)
    a, b = a.clone(), b.clone()
    torch._amp_foreach_non_finite_check_and_unscale_([a, b], found, torch.full((1,), 0.5, device=a.device))
    return a, b, found


case("amp unscale(nonfinite)", _amp, rows(234), rows(235))
case("amp unscale(finite)", _amp, torch.randn(3, 3), torch.randn(5))

# -- unique (sorting): every NaN is its own value ------------------------------------------------------------
case("unique", lambda x: torch.unique(x, return_inverse=True, return_counts=True), rows(336))
case("unique(all nan)", lambda x: torch.unique(x, return_counts=True), torch.full((5,), NAN))
# topk/kthvalue: which index of tied values (two +inf, a row of -inf) comes first is unspecified; values compared.
for _name, _f in {"sort": lambda x: torch.sort(x, 1), "sort(descending)": lambda x: torch.sort(x, 1, descending=True),
                  "argsort(stable)": lambda x: torch.argsort(x, 1, stable=True), "median": lambda x: x.median(1),
                  "median(all)": lambda x: x.median(), "msort": torch.msort,
                  "topk(values)": lambda x: torch.topk(x, 3, 1)[0],
                  "kthvalue(values)": lambda x: x.kthvalue(3, 1)[0]}.items():
    case(f"sort {_name}", _f, rows(337))

# -- half precision: the same specials through the f16/bf16 loads and stores -------------------------------
for _dt in (torch.float16, torch.bfloat16):
    _k = str(_dt).replace("torch.", "")
    _t = (1e-2, 1e-2) if _dt == torch.bfloat16 else (2e-3, 2e-3)
    for _name, _f in {"relu": F.relu, "sigmoid": torch.sigmoid, "tanh": torch.tanh, "silu": F.silu,
                      "hardtanh": F.hardtanh, "clamp": lambda x: x.clamp(-1, 1), "exp": torch.exp,
                      "add": lambda x: x + x.flip(1), "ne": lambda x: x != x.flip(0), "sum": lambda x: x.sum(1),
                      "amax": lambda x: x.amax(1), "softmax": lambda x: x.softmax(1),
                      "layer_norm": lambda x: F.layer_norm(x, (8,)), "to float": lambda x: x.float(),
                      "from float": lambda x: (x.float() * 3).to(x.dtype)}.items():
        case(f"{_k} {_name}", _f, rows(330, dtype=_dt), tol=_t)
case("float32 -> float16 overflow", lambda x: (x * 1e4).half(), rows(331))
case("float32 -> bfloat16 overflow", lambda x: (x * 1e37).bfloat16(), rows(332))

# -- attention (softmax of a causal row kernel) ---------------------------------------------------------------
# The CPU's fused (flash) kernel returns 0 in some columns of a NaN query's row; its math kernel gives NaN.
case("sdpa causal", lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True),
     rows(333).reshape(1, 2, 4, 8), rows(334).reshape(1, 2, 4, 8).nan_to_num(), rows(335).reshape(1, 2, 4, 8),
     ref=lambda q, k, v: torch.ops.aten._scaled_dot_product_attention_math(q, k, v, is_causal=True)[0])

# -- overloads that only a direct aten call reaches (PyTorch's Python API picks another one) -------------
aten = torch.ops.aten


def aten_case(op, *inputs, suffix="", **kw):
    case(f"{op}{suffix}", lambda *xs: op(*xs, **kw), *inputs)


_i = lambda s: torch.randint(-50, 50, (8, 8), generator=torch.Generator().manual_seed(s))  # noqa: E731
aten_case(aten.add_.Scalar, rows(280), INF)
aten_case(aten.sub.Scalar, rows(281), NAN)
aten_case(aten.sub_.Scalar, rows(282), -INF)
aten_case(aten.mul_.Scalar, rows(283), 0.0)
aten_case(aten.div.Scalar_mode, rows(284), 0.0, rounding_mode="floor")
aten_case(aten.div_.Scalar_mode, rows(285), -0.0, rounding_mode="trunc")
aten_case(aten.floor_divide.Scalar, rows(286), INF)
aten_case(aten.where.ScalarOther, rows(287) > 0, rows(288), NAN)
aten_case(aten.where.ScalarSelf, rows(287) > 0, INF, rows(288))
aten_case(aten.silu_backward.default, rows(289), rows(290))
aten_case(aten.square.default, rows(291))
aten_case(aten.square_.default, rows(292))
case("aten.square.out", lambda x: aten.square.out(x, out=torch.empty_like(x)), rows(293))
case("aten.relu.out", lambda x: aten.relu.out(x, out=torch.empty_like(x)), rows(294))
aten_case(aten._safe_softmax.default, rows(295), 1)
for _n in ("bitwise_and", "bitwise_or", "bitwise_xor"):
    aten_case(getattr(aten, _n).Tensor, _i(296), _i(297))
    aten_case(getattr(aten, _n).Scalar, _i(296), 6)
    aten_case(getattr(aten, _n + "_").Tensor, _i(298), _i(299))
    aten_case(getattr(aten, _n + "_").Scalar, _i(298), -3)

_bn_args = lambda s: (rows(s).t().reshape(8, 8, 1), _w(s), _w(s + 1))  # noqa: E731
_stats = lambda x: (torch.zeros(8, device=x.device), torch.ones(8, device=x.device))  # noqa: E731
case("aten._native_batch_norm_legit", lambda x, w, b: aten._native_batch_norm_legit.default(
    x, w, b, *_stats(x), True, 0.1, 1e-5), *_bn_args(300))
case("aten._native_batch_norm_legit.no_stats", lambda x, w, b: aten._native_batch_norm_legit.no_stats(
    x, w, b, True, 0.1, 1e-5), *_bn_args(302))
case("aten._native_batch_norm_legit_functional", lambda x, w, b: aten._native_batch_norm_legit_functional.default(
    x, w, b, *_stats(x), True, 0.1, 1e-5), *_bn_args(304))
case("aten._native_batch_norm_legit_no_training", lambda x, w, b: aten._native_batch_norm_legit_no_training.default(
    x, w, b, *_stats(x), 0.1, 1e-5), *_bn_args(306))
# The fourth output (the reserve) is an implementation detail, empty on both devices; compare the rest.
case("aten._batch_norm_with_update", lambda x, w, b: (lambda rm, rv: (
    *aten._batch_norm_with_update.default(x, w, b, rm, rv, 0.1, 1e-5)[:3], rm, rv))(*_stats(x)), *_bn_args(308))
case("aten._batch_norm_no_update", lambda x, w, b: aten._batch_norm_no_update.default(
    x, w, b, *_stats(x), 0.1, 1e-5)[:3], *_bn_args(310))


def _bn_bwd(train):
    def run(g, x, w):
        rm, rv = _stats(x)
        _, mean, invstd = aten._native_batch_norm_legit.default(x, w, None, rm, rv, True, 0.1, 1e-5)
        return aten.batch_norm_backward.default(g, x, w, rm, rv, mean, invstd, train, 1e-5, [True, True, True],
                                                torch.empty(0, device=x.device, dtype=torch.uint8))
    return run


case("aten.batch_norm_backward(train)", _bn_bwd(True), rows(312).t().reshape(8, 8, 1), *_bn_args(313)[:2])
case("aten.batch_norm_backward(eval)", _bn_bwd(False), rows(314).t().reshape(8, 8, 1), *_bn_args(315)[:2])


def _amp_update(found):
    def run(scale):
        scale, tracker = scale.clone(), torch.zeros(1, dtype=torch.int32, device=scale.device)
        aten._amp_update_scale_.default(scale, tracker, torch.full((1,), found, device=scale.device), 2.0, 0.5, 1)
        return scale, tracker
    return run


case("amp update_scale(found inf)", _amp_update(1.0), torch.tensor([65536.0]))
case("amp update_scale(finite)", _amp_update(0.0), torch.tensor([65536.0]))
case("amp update_scale(scale inf)", _amp_update(0.0), torch.tensor([INF]))

# -- integer division by zero: the CPU raises, so must wgpu -----------------------------------------------
_ints = lambda s: torch.randint(-9, 10, (8,), generator=torch.Generator().manual_seed(s))  # noqa: E731
for _dt in (torch.int64, torch.int32):
    _k = str(_dt).replace("torch.", "")
    case(f"int {_k} // 0", lambda a: a // 0, _ints(240).to(_dt))
    case(f"int {_k} % 0", lambda a: a % 0, _ints(241).to(_dt))
    case(f"int {_k} fmod 0", lambda a: torch.fmod(a, 0), _ints(242).to(_dt))
    case(f"int {_k} div(trunc) 0", lambda a: torch.div(a, 0, rounding_mode="trunc"), _ints(243).to(_dt))
    case(f"int {_k} // T(0)", lambda a, b: a // b, _ints(244).to(_dt),
         torch.tensor([3, 0, -2, 5, 1, 1, 1, 1], dtype=_dt))
    case(f"int {_k} % T(0)", lambda a, b: a % b, _ints(245).to(_dt), torch.tensor([3, 1, -2, 0, 1, 1, 1, 1], dtype=_dt))
    case(f"int {_k} fmod T(0)", lambda a, b: torch.fmod(a, b), _ints(246).to(_dt),
         torch.tensor([0] + [2] * 7, dtype=_dt))
    case(f"int {_k} //= 0", lambda a: a.clone().floor_divide_(0), _ints(247).to(_dt))
    case(f"int {_k} %= T(0)", lambda a, b: a.clone().remainder_(b), _ints(248).to(_dt), torch.zeros(8, dtype=_dt))
    case(f"int {_k} // T(nonzero)", lambda a, b: (a // b, a % b, torch.fmod(a, b)), _ints(249).to(_dt),
         torch.tensor([3, -1, -2, 5, 7, -9, 1, 2], dtype=_dt))
case("int 0 // T(0) (scalar self)", lambda b: torch.floor_divide(7, b), torch.tensor([0, 1]))


# -- the sweep -----------------------------------------------------------------------------------------
def _to(x, device):
    return x.to(device) if isinstance(x, torch.Tensor) else x


def _run_one(fn, inputs, tol, ref_fn=None, nan_if_cpu_raises=False):
    """None when wgpu agrees with the CPU, else the disagreement as text."""
    try:
        ref = (ref_fn or fn)(*[x.clone() if isinstance(x, torch.Tensor) else x for x in inputs])
    except Exception as exc:  # the CPU raises: wgpu must raise too, never return numbers
        try:
            got = fn(*[_to(x, DEV) for x in inputs])
            leaves = [t.detach().cpu() for t in tree_flatten(got)[0] if isinstance(t, torch.Tensor)]
        except Exception:
            return None
        if nan_if_cpu_raises and leaves and leaves[0].isnan().all():
            return None
        return f"the CPU raises {type(exc).__name__}: {exc}; wgpu returned {leaves}"
    got = fn(*[_to(x, DEV) for x in inputs])
    refs = [t for t in tree_flatten(ref)[0] if isinstance(t, torch.Tensor)]
    gots = [t for t in tree_flatten(got)[0] if isinstance(t, torch.Tensor)]
    if len(refs) != len(gots):
        return f"{len(gots)} outputs, CPU {len(refs)}"
    for k, (r, d) in enumerate(zip(refs, gots)):
        if d.device.type != DEV:
            return f"output {k} is on {d.device}"
        d = d.detach().cpu()
        r = r.detach().to(d.dtype)
        try:
            torch.testing.assert_close(d, r, rtol=tol[0], atol=tol[1], equal_nan=True)
        except AssertionError as e:
            return f"output {k}: {e}\nwgpu: {d}\ncpu:  {r}"
    return None


@pytest.fixture(scope="module")
def sweep():
    """Run every case once; returns ({case: failure text or None}, set of aten ops whose handler ran)."""
    hit: set[str] = set()
    saved = dict(dispatch.OPS)

    def recorder(op, fn):
        def wrapper(*args, **kwargs):
            hit.add(str(op))
            return fn(*args, **kwargs)
        return wrapper

    for op, fn in saved.items():
        dispatch.OPS[op] = recorder(op, fn)
    results = {}
    try:
        for name, (fn, inputs, tol, ref, nan_ok) in CASES.items():
            try:
                results[name] = _run_one(fn, inputs, tol, ref, nan_ok)
            except Exception as exc:
                results[name] = f"{type(exc).__name__}: {exc}"
            dispatch._deferred.clear()
    finally:
        dispatch.OPS.clear()
        dispatch.OPS.update(saved)
    return results, hit


@pytest.mark.parametrize("name", list(CASES))
def test_special_values(sweep, name):
    failure = sweep[0][name]
    assert failure is None, f"{name}: {failure}"


def _reachable(op) -> bool:
    """Whether a wgpu tensor can reach this handler: overloads such as aten.add.default (Scalar, Scalar)
    take no tensor, and CompositeImplicitAutograd ops (aten.square, where.ScalarOther) are decomposed
    by PyTorch before they reach the device."""
    takes_tensors = any("Tensor" in str(a.type) for a in op._schema.arguments)
    return takes_tensors and not torch._C._dispatch_has_kernel_for_dispatch_key(op.name(), "CompositeImplicitAutograd")


def _swept_handlers() -> set[str]:
    return {str(op) for op, fn in dispatch.OPS.items() if fn.__module__ in SWEPT_MODULES and _reachable(op)}


def test_every_handler_is_swept(sweep):
    hit = sweep[1]
    handlers = _swept_handlers()
    missing = sorted(handlers - hit - set(NOT_SWEPT))
    assert not missing, f"handlers neither swept nor listed in NOT_SWEPT: {missing}"
    stale = sorted(set(NOT_SWEPT) & hit)
    assert not stale, f"NOT_SWEPT lists ops the sweep does reach (remove them): {stale}"
    gone = sorted(set(NOT_SWEPT) - handlers)
    assert not gone, f"NOT_SWEPT lists ops that have no swept handler: {gone}"


def test_sweep_uses_special_values():
    # The inputs really carry NaN and both infinities (a sweep over finite values could not fail).
    x = rows(0)
    assert x.isnan().any() and (x == INF).any() and (x == -INF).any() and not math.isnan(x[3].sum().item())


def test_fused_relu_epilogue_keeps_nan():
    # The GEMM epilogue's fused ReLU (conv.forward(relu=True)) is no op handler, so the sweep cannot reach
    # it; WGSL's max(NaN, 0) gave 0 there.
    from navitrain.wgpu.kernels import conv

    x = rows(320).reshape(1, 2, 4, 8)
    w = torch.randn(4, 2, 3, 3, generator=torch.Generator().manual_seed(321))
    g = conv.Geometry(1, 2, 4, 8, 4, 4, 8, 3, 3, (1, 1), (1, 1), (1, 1), 1)
    out = torch.empty(1, 4, 4, 8, device=DEV)
    got = conv.forward(x.to(DEV), w.to(DEV), None, g, out, relu=True).cpu()
    ref = F.conv2d(x, w, padding=1).relu()
    assert ref.isnan().any()
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4, equal_nan=True)


def test_int_division_inside_a_graph_capture_is_counted_not_silent():
    # A captured graph cannot read the divisor back, so the check cannot run there: it is counted and
    # warned about (once), and a Python-number divisor is still checked on the host.
    import navitrain.wgpu as nw
    from navitrain.wgpu.kernels import int_division

    a = torch.randint(-9, 10, (8,), generator=torch.Generator().manual_seed(340)).to(DEV)
    b = torch.tensor([3, -2, 5, 7, 1, -1, 2, 4]).to(DEV)
    int_division.unchecked_counts.clear()
    g = nw.WgpuGraph()
    with pytest.warns(UserWarning, match="not checked for zero divisors"):
        with nw.graph(g):
            q = a // b
    assert int_division.unchecked_counts["aten.div(rounding_mode='floor')"] == 1
    g.replay()
    torch.testing.assert_close(q.cpu(), a.cpu() // b.cpu())
    with pytest.raises(RuntimeError, match="ZeroDivisionError"):
        with nw.graph(nw.WgpuGraph()):
            a // 0
    int_division.unchecked_counts.clear()


def test_a_diverging_training_step_looks_diverged():
    # One NaN in a batch: the loss is NaN and, after the step, so is every parameter the CPU makes NaN
    # (a model whose ReLU/LayerNorm/clamp turned NaN into numbers would train on, silently).
    torch.manual_seed(350)
    base = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.LayerNorm(16),
                               torch.nn.Hardtanh(), torch.nn.Linear(16, 4))
    x = torch.randn(6, 8)
    x[2, 5] = NAN
    y = torch.randint(4, (6,))
    results = []
    for device in ("cpu", DEV):
        model = copy.deepcopy(base).to(device)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        loss = F.cross_entropy(model(x.to(device)), y.to(device))
        loss.backward()
        opt.step()
        results.append((loss.detach().cpu(), [p.detach().cpu() for p in model.parameters()]))
    (cpu_loss, cpu_params), (dev_loss, dev_params) = results
    assert math.isnan(cpu_loss.item()) and math.isnan(dev_loss.item())
    for c, d in zip(cpu_params, dev_params):
        assert torch.equal(c.isnan(), d.isnan())
