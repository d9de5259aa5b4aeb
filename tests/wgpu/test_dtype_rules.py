"""PyTorch's dtype rules on the wgpu device: every unary and binary pointwise op on int64 and bool inputs
(tensor-tensor, tensor-int, tensor-float) gives the CPU's result dtype and values, or raises where the
CPU raises; plus the ops issue 17 found answering wrongly (integer matrix products with float scales,
dropout's backward, an unsafe index_put writing into its input, asin near +-1, logcumsumexp's
gradient, sgn's gradient). CPU fallbacks are allowed here (counted): the rules are what is checked."""
import math

import pytest
import torch

import navitrain.wgpu as nw

DEV = "wgpu"
aten = torch.ops.aten

UNARY = """abs neg sign sgn sqrt rsqrt exp exp2 expm1 log log2 log10 log1p sin cos tan asin acos atan sinh cosh
tanh asinh acosh atanh sigmoid logit erf erfc erfinv reciprocal floor ceil round trunc frac square relu
bitwise_not logical_not isnan isinf isfinite isposinf isneginf signbit positive nan_to_num deg2rad rad2deg
sinc nn.functional.silu nn.functional.gelu nn.functional.mish nn.functional.softplus nn.functional.elu
nn.functional.selu nn.functional.hardtanh nn.functional.relu6 nn.functional.hardsigmoid
nn.functional.hardswish nn.functional.leaky_relu nn.functional.logsigmoid nn.functional.tanhshrink
nn.functional.softsign""".split()
BINARY = """add sub rsub mul div true_divide floor_divide remainder fmod pow atan2 maximum minimum fmax fmin eq ne
lt le gt ge logical_and logical_or logical_xor bitwise_and bitwise_or bitwise_xor bitwise_left_shift
bitwise_right_shift hypot copysign xlogy clamp_min clamp_max heaviside logaddexp logaddexp2 float_power
gcd lcm""".split()


def _fn(name):
    fn = torch
    for part in name.split("."):
        fn = getattr(fn, part)
    return fn


def _sample(dtype, seed):
    g = torch.Generator().manual_seed(seed)
    if dtype == torch.bool:
        return torch.randint(0, 2, (16,), generator=g).bool()
    x = torch.randint(-6, 7, (16,), generator=g)
    x[0], x[1] = 1, 0  # the values where rules bite: x / 0, log(0), 0 ** 0
    return x


def _mismatch(fn, args):
    """None when wgpu agrees with the CPU (same dtype and values, or both raise), else what differs."""
    try:
        want = fn(*args)
    except Exception:
        want = None
    try:
        got = fn(*[a.to(DEV) if isinstance(a, torch.Tensor) else a for a in args])
    except Exception as exc:
        return None if want is None else f"raises {type(exc).__name__}: {str(exc)[:120]}"
    if want is None:
        return f"gives {got.dtype} where the CPU raises"
    got = got.cpu()
    if got.dtype != want.dtype:
        return f"dtype {got.dtype}, CPU {want.dtype}"
    if want.is_floating_point():
        same = torch.allclose(got, want, rtol=1e-5, atol=1e-5, equal_nan=True)
    else:
        same = torch.equal(got, want)
    return None if same else f"values {got.tolist()[:6]}, CPU {want.tolist()[:6]}"


@pytest.mark.parametrize("dtype", [torch.int64, torch.bool], ids=["int64", "bool"])
def test_every_pointwise_op_follows_the_cpus_dtype_rules(dtype, lenient):
    a, b = _sample(dtype, 1), _sample(dtype, 2)
    bad = {}
    for name in UNARY:
        bad[name] = _mismatch(_fn(name), [a])
    for name in BINARY:
        bad[name] = _mismatch(_fn(name), [a, b])
        for scalar in (3, 2.5):
            bad[f"{name}(tensor, {scalar})"] = _mismatch(_fn(name), [a, scalar])
    bad = {k: v for k, v in bad.items() if v}
    assert not bad, "\n".join(f"{k}: {v}" for k, v in bad.items())


@pytest.mark.parametrize("op", ["lt", "le", "gt", "ge", "eq", "ne", "clamp_min", "clamp_max", "sign", "sgn"])
def test_bool_kernels_compile_and_match(op, strict):
    a, b = _sample(torch.bool, 3), _sample(torch.bool, 4)
    fn = _fn(op)
    args = [a] if op in ("sign", "sgn") else [a, b]
    want = fn(*args)
    got = fn(*[x.to(DEV) for x in args]).cpu()
    assert got.dtype == want.dtype and torch.equal(got, want)


@pytest.mark.parametrize("name", ["atan2", "logit"])
def test_integer_inputs_give_float_results(name, strict):
    a, b = _sample(torch.int64, 5), _sample(torch.int64, 6)
    fn = _fn(name)
    args = [a, b] if name == "atan2" else [a]
    want = fn(*args)
    got = fn(*[x.to(DEV) for x in args]).cpu()
    assert got.dtype == want.dtype == torch.float32
    torch.testing.assert_close(got, want, equal_nan=True, atol=1e-5, rtol=1e-5)
    if name == "atan2":
        with pytest.raises(RuntimeError, match="can't be cast"):
            a.to(DEV).atan2_(b.to(DEV))


def test_addcmul_and_addcdiv_keep_the_promoted_dtype(strict):
    x, t1, t2 = (_sample(torch.int64, s) for s in (7, 8, 9))
    want = torch.addcmul(x, t1, t2, value=3)
    got = torch.addcmul(x.to(DEV), t1.to(DEV), t2.to(DEV), value=3).cpu()
    assert got.dtype == torch.int64 and torch.equal(got, want)
    f = torch.randn(16)
    f[2] = float("nan")
    want = torch.addcdiv(x, f, t2.abs() + 1, value=0.5)
    got = torch.addcdiv(x.to(DEV), f.to(DEV), t2.abs().to(DEV) + 1, value=0.5).cpu()
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, equal_nan=True)
    with pytest.raises(RuntimeError, match="Integer division with addcdiv"):
        torch.addcdiv(f.to(DEV), t1.to(DEV), t2.to(DEV))


@pytest.mark.parametrize("beta,alpha", [(1, 1), (0.5, 1.5), (2.7, -3.2), (-1.9, 0.9)])
def test_integer_matrix_products_truncate_beta_and_alpha(beta, alpha, strict):
    g = torch.Generator().manual_seed(10)
    x, a, b = (torch.randint(-9, 10, s, generator=g) for s in ((2, 3, 4), (2, 3, 5), (2, 5, 4)))
    want = torch.baddbmm(x, a, b, beta=beta, alpha=alpha)
    got = torch.baddbmm(x.to(DEV), a.to(DEV), b.to(DEV), beta=beta, alpha=alpha).cpu()
    assert got.dtype == torch.int64 and torch.equal(got, want)
    want = torch.addmm(x[0], a[0], b[0], beta=beta, alpha=alpha)
    assert torch.equal(torch.addmm(x[0].to(DEV), a[0].to(DEV), b[0].to(DEV), beta=beta, alpha=alpha).cpu(), want)


@pytest.mark.parametrize("dtype", [torch.int64, torch.bool, torch.float32, torch.float16])
def test_native_dropout_backward_dtype_and_values(dtype, strict):
    g = torch.Generator().manual_seed(11)
    grad = torch.randn(32, generator=g).mul(5).to(dtype) if dtype != torch.bool else torch.rand(32, generator=g) > 0.5
    if dtype.is_floating_point:
        grad[0], grad[1] = float("nan"), -float("inf")
    mask = torch.rand(32, generator=g) > 0.4
    mask[0] = mask[1] = False
    want = aten.native_dropout_backward(grad, mask, 1.25)
    got = aten.native_dropout_backward(grad.to(DEV), mask.to(DEV), 1.25).cpu()
    assert got.dtype == want.dtype
    torch.testing.assert_close(got, want, equal_nan=True)
    assert torch.equal(got.signbit(), want.signbit())  # a dropped negative float gradient is -0


def test_unsafe_masked_index_put_accumulate_leaves_its_input_alone(strict):
    g = torch.Generator().manual_seed(12)
    x = torch.randn(6, 4, generator=g)
    x[0, 0] = float("nan")
    mask = torch.tensor([[True], [False], [True]])
    idx = [torch.tensor([[0], [2], [5]]), torch.tensor([1, 3, 3, 0])]
    values = torch.randn(3, 4, generator=g)
    want = aten._unsafe_masked_index_put_accumulate(x, mask, idx, values)
    xd = x.to(DEV)
    got = aten._unsafe_masked_index_put_accumulate(xd, mask.to(DEV), [i.to(DEV) for i in idx], values.to(DEV))
    torch.testing.assert_close(got.cpu(), want, equal_nan=True)
    torch.testing.assert_close(xd.cpu(), x, equal_nan=True)
    base = torch.randn(5, generator=g)
    bd = base.to(DEV)
    out = aten._unsafe_index_put(bd, [torch.tensor([1, 1], device=DEV)], torch.ones(2, device=DEV), True)
    assert torch.equal(bd.cpu(), base) and out.cpu()[1].item() == pytest.approx(base[1].item() + 2)


@pytest.mark.parametrize("name", ["asin", "acos"])
def test_asin_acos_near_one(name, strict):
    x = torch.cat([torch.linspace(-1, 1, 4001), 1 - torch.logspace(-7, -1, 50), torch.tensor(
        [-0.0, 0.0, 1.0, -1.0, 1.5, -2.0, float("nan"), float("inf")])])
    fn = _fn(name)
    want = fn(x.double()).float()
    got = fn(x.to(DEV)).cpu()
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5, equal_nan=True)
    assert torch.equal(got[-8:-6].signbit(), want[-8:-6].signbit())


def test_logcumsumexp_gradient_with_large_inputs(strict):
    g = torch.Generator().manual_seed(13)
    x = torch.randn(5, 5, 5, generator=g) * 4
    x[0, 1, 2], x[3, 0, 4] = 10000.0, -9.5
    w = torch.randn(5, 5, 5, generator=g)
    for dim in (0, 1, 2):
        xc = x.clone().requires_grad_()
        (torch.logcumsumexp(xc, dim) * w).sum().backward()
        xd = x.to(DEV).requires_grad_()
        out = torch.logcumsumexp(xd, dim)
        (out * w.to(DEV)).sum().backward()
        torch.testing.assert_close(out.detach().cpu(), torch.logcumsumexp(x, dim))
        # the CPU accumulates in double: compare both to float64 with the CPU's own error as the bound
        x64 = x.double().requires_grad_()
        (torch.logcumsumexp(x64, dim) * w.double()).sum().backward()
        cpu_err = (xc.grad.double() - x64.grad).abs().max().item()
        dev_err = (xd.grad.cpu().double() - x64.grad).abs().max().item()
        assert dev_err <= max(2 * cpu_err, 1e-5), (dim, dev_err, cpu_err)
    special = torch.tensor([[-math.inf, -math.inf, 1.0], [math.inf, 2.0, math.nan], [3.0, math.inf, 1.0]])
    torch.testing.assert_close(torch.logcumsumexp(special.to(DEV), 1).cpu(), torch.logcumsumexp(special, 1),
                               equal_nan=True)


@pytest.mark.parametrize("name", ["sgn", "sign", "round", "floor"])
def test_zero_gradients_of_piecewise_constant_ops(name, strict):
    x = torch.randn(7)
    xd = x.to(DEV).requires_grad_()
    (_fn(name)(xd) * xd).sum().backward()
    xc = x.clone().requires_grad_()
    (_fn(name)(xc) * xc).sum().backward()
    assert torch.equal(xd.grad.cpu(), xc.grad)
    assert nw.fallback_report()["cpu_fallbacks"].get("aten._efficientzerotensor.default") is None
