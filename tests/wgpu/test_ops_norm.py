"""Batch norm, layer norm and group norm on wgpu against PyTorch on the CPU: OpInfo samples, then the
cases they miss (channels_last, running statistics over several steps, mixed float16/float32, sizes
that split a channel over many workgroups, every aten overload of batch norm)."""
import pytest
import torch
import torch.nn.functional as F

from tests.wgpu import opinfo

DEV = "wgpu"
F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16
aten = torch.ops.aten

# On float16/bfloat16 the CPU rounds intermediate results to the input dtype; the device keeps f32 until
# the store, so the two differ by a few units in the last place (the device is the closer to float64).
LOW = {"rtol": 2e-2, "atol": 2e-2}

OPINFO_CASES = [
    ("nn.functional.batch_norm", "", [F32], {}),
    ("nn.functional.batch_norm", "", [F16, BF16], LOW),
    ("nn.functional.batch_norm", "without_cudnn", [F32], {}),
    # One sample normalizes rows of a single element: the exact gradient is 0, the CPU's is 2.4e-4.
    ("nn.functional.layer_norm", "", [F32], {"rtol": 1e-4, "atol": 3e-5}),
    ("nn.functional.layer_norm", "", [F16, BF16], {}),
    ("nn.functional.group_norm", "", [F32], {"rtol": 1e-4, "atol": 1e-5}),
    ("nn.functional.group_norm", "", [F16], {}),
    ("nn.functional.instance_norm", "", [F32], {"rtol": 1e-4, "atol": 1e-5}),
]


@pytest.mark.parametrize("name,variant,dtypes,kw", OPINFO_CASES,
                         ids=[f"{c[0]}{'.' + c[1] if c[1] else ''}-{'-'.join(str(d)[6:] for d in c[2])}"
                              for c in OPINFO_CASES])
def test_opinfo_matches_cpu(name, variant, dtypes, kw):
    op = opinfo.find(name, variant)
    torch.manual_seed(0)  # OpInfo draws its samples from the global generator
    for dtype in dtypes:
        assert opinfo.check(op, dtype, max_samples=30, **kw) > 0


def _dev(t, grad=False):
    if t is None:
        return None
    d = t.detach().to(DEV)
    return d.requires_grad_() if grad else d


def _cpu(t, dtype=torch.float64, grad=False):
    if t is None:
        return None
    c = t.detach().to(dtype)
    return c.requires_grad_() if grad else c


def _close(dev, ref, tol, what):
    assert dev.device.type == DEV, what
    torch.testing.assert_close(dev.detach().cpu().to(torch.float64), ref.detach().to(torch.float64), **tol,
                               msg=lambda m: f"{what}: {m}")


def _layout(x, layout):
    if layout == "cl":
        return x.contiguous(memory_format=torch.channels_last if x.dim() == 4 else torch.channels_last_3d)
    if layout == "strided":  # a view with gaps: neither contiguous nor channels_last
        return torch.cat([x, x], dim=-1)[..., ::2]
    return x


def _bn_case(shape, layout="ncs", training=True, affine=True, track=True, offset=0.0, dtype=F32, pdtype=None,
             grad_layout=None, momentum=0.1, seed=0, weight_grad_atol=None):
    """F.batch_norm forward and backward on wgpu against float64 on the CPU: output, input/weight/bias
    gradients and the updated running statistics."""
    gen = torch.Generator().manual_seed(seed)
    pdtype = pdtype or dtype
    C = shape[1]
    x = _layout((torch.randn(shape, generator=gen) * 2 + offset).to(dtype), layout)
    w = torch.randn(C, generator=gen).to(pdtype) if affine else None
    b = torch.randn(C, generator=gen).to(pdtype) if affine is True else None
    rm = torch.randn(C, generator=gen).to(pdtype) if track else None
    rv = (torch.rand(C, generator=gen) + 0.5).to(pdtype) if track else None
    g = torch.randn(shape, generator=gen).to(dtype)
    if grad_layout is not None:
        g = _layout(g, grad_layout)

    xd, wd, bd, rmd, rvd = _dev(x, True), _dev(w, True), _dev(b, True), _dev(rm), _dev(rv)
    xc, wc, bc, rmc, rvc = _cpu(x, grad=True), _cpu(w, grad=True), _cpu(b, grad=True), _cpu(rm), _cpu(rv)
    yd = F.batch_norm(xd, rmd, rvd, wd, bd, training, momentum, 1e-5)
    yc = F.batch_norm(xc, rmc, rvc, wc, bc, training, momentum, 1e-5)
    yd.backward(g.to(DEV))
    yc.backward(g.to(torch.float64))
    tol = {"rtol": 1e-4, "atol": 1e-4} if dtype == F32 else LOW
    _close(yd, yc, tol, "output")
    assert yd.dtype == dtype
    _close(xd.grad, xc.grad, tol, "grad input")
    if affine:
        wtol = tol if weight_grad_atol is None else {**tol, "atol": weight_grad_atol}
        _close(wd.grad, wc.grad, wtol, "grad weight")
    if b is not None:
        _close(bd.grad, bc.grad, tol, "grad bias")
    if track:
        ptol = {"rtol": 1e-4, "atol": 1e-4} if pdtype == F32 else LOW
        _close(rmd, rmc, ptol, "running_mean")
        _close(rvd, rvc, ptol, "running_var")
    return xd, yd


BN_CASES = {
    "2d": dict(shape=(4, 3, 5, 5)),
    "2d_eval": dict(shape=(4, 3, 5, 5), training=False),
    "2d_no_affine": dict(shape=(4, 3, 5, 5), affine=False),
    "2d_weight_only": dict(shape=(4, 3, 5, 5), affine="weight"),
    "2d_no_running_stats": dict(shape=(4, 3, 5, 5), track=False),
    "2d_eval_no_affine": dict(shape=(4, 3, 5, 5), training=False, affine=False),
    "2d_channels_last": dict(shape=(4, 3, 5, 5), layout="cl"),
    "2d_channels_last_eval": dict(shape=(4, 3, 5, 5), layout="cl", training=False),
    "2d_channels_last_grad_contiguous": dict(shape=(4, 3, 5, 5), layout="cl", grad_layout="ncs"),
    "2d_strided_input": dict(shape=(4, 3, 5, 5), layout="strided"),
    "1d_flat": dict(shape=(16, 5)),
    "1d_flat_eval": dict(shape=(16, 5), training=False),
    "1d_sequence": dict(shape=(6, 5, 7)),
    "3d": dict(shape=(2, 3, 4, 5, 6)),
    "3d_channels_last": dict(shape=(2, 3, 4, 5, 6), layout="cl"),
    "negative_momentum": dict(shape=(3, 2, 3, 4), momentum=-1.0),
    # One channel over many workgroups (the partial sums of several chunks are combined).
    "big_spatial": dict(shape=(32, 3, 40, 40)),
    "big_batch_flat": dict(shape=(3000, 70)),
    "big_channels_last": dict(shape=(64, 100, 8, 8), layout="cl"),
    # Tiny spatial maps with many channels: read as rows of C * H * W columns.
    "small_maps_many_channels": dict(shape=(8, 600, 2, 2)),
    # A mean far from zero next to the spread: one-pass sums must not cancel (output and input gradient
    # stay within 1e-4). The weight gradient inherits the float32 rounding of the stored mean (6e-5 at
    # 1000) times sum(dy): about 1e-3 here, as on the CPU.
    "large_mean": dict(shape=(64, 20, 8, 8), offset=1000.0, weight_grad_atol=3e-3),
    "large_mean_channels_last": dict(shape=(64, 20, 8, 8), layout="cl", offset=1000.0, weight_grad_atol=3e-3),
    # What mixed-precision training feeds batch norm: float16 activations, float32 parameters.
    "half_input_float_params": dict(shape=(4, 3, 5, 5), dtype=F16, pdtype=F32),
    "half_input_float_params_eval": dict(shape=(4, 3, 5, 5), dtype=F16, pdtype=F32, training=False),
    "half": dict(shape=(4, 3, 5, 5), dtype=F16),
    "bfloat16_input_float_params": dict(shape=(4, 3, 5, 5), dtype=BF16, pdtype=F32, layout="cl"),
}


@pytest.mark.parametrize("case", list(BN_CASES))
def test_batch_norm_matches_cpu(case):
    _bn_case(**BN_CASES[case])


def test_batch_norm_keeps_channels_last():
    xd, yd = _bn_case((4, 6, 3, 5), layout="cl")
    assert yd.is_contiguous(memory_format=torch.channels_last)
    assert xd.grad.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("momentum", [0.1, None])
def test_batch_norm_module_running_stats_over_steps(momentum):
    """nn.BatchNorm2d over several training steps (momentum None is the cumulative average), then eval."""
    torch.manual_seed(0)
    cpu = torch.nn.BatchNorm2d(5, momentum=momentum)
    with torch.no_grad():
        cpu.weight.normal_()
        cpu.bias.normal_()
    dev = torch.nn.BatchNorm2d(5, momentum=momentum).to(DEV)
    dev.load_state_dict(cpu.state_dict())
    for step in range(4):
        x = torch.randn(6, 5, 4, 4) * (step + 1) + step
        if step % 2:
            x = x.contiguous(memory_format=torch.channels_last)
        yc, yd = cpu(x), dev(x.to(DEV))
        _close(yd, yc, {"rtol": 1e-4, "atol": 1e-4}, f"step {step} output")
    for name, value in cpu.state_dict().items():
        got = dev.state_dict()[name]
        if value.dtype == torch.int64:
            assert got.cpu().item() == value.item() == 4, name
        else:
            _close(got, value, {"rtol": 1e-5, "atol": 1e-5}, name)
    cpu.eval()
    dev.eval()
    x = torch.randn(3, 5, 4, 4)
    xc, xd = x.clone().requires_grad_(), x.to(DEV).requires_grad_()
    yc, yd = cpu(xc), dev(xd)
    _close(yd, yc, {"rtol": 1e-4, "atol": 1e-4}, "eval output")
    g = torch.randn(yc.shape)
    yc.backward(g)
    yd.backward(g.to(DEV))
    _close(xd.grad, xc.grad, {"rtol": 1e-4, "atol": 1e-4}, "eval grad input")
    _close(dev.weight.grad, cpu.weight.grad, {"rtol": 1e-4, "atol": 1e-4}, "eval grad weight")


def _args(gen, C, shape):
    x = torch.randn(shape, generator=gen)
    w, b = torch.randn(C, generator=gen), torch.randn(C, generator=gen)
    rm, rv = torch.randn(C, generator=gen), torch.rand(C, generator=gen) + 0.5
    return x, w, b, rm, rv


def _compare_outputs(dev_out, cpu_out, what):
    assert len(dev_out) == len(cpu_out), what
    for k, (d, c) in enumerate(zip(dev_out, cpu_out)):
        if c is None:
            assert d is None, f"{what} output {k}"
            continue
        assert tuple(d.shape) == tuple(c.shape) and d.dtype == c.dtype, f"{what} output {k}: {d.shape} {c.shape}"
        if c.numel():
            torch.testing.assert_close(d.cpu(), c, rtol=1e-4, atol=1e-4, msg=lambda m: f"{what} output {k}: {m}")


@pytest.mark.parametrize("overload", [
    "native_batch_norm", "_native_batch_norm_legit", "_native_batch_norm_legit.no_stats",
    "_native_batch_norm_legit_no_training", "_batch_norm_with_update", "_batch_norm_no_update",
    "_native_batch_norm_legit_functional",
])
def test_batch_norm_aten_overloads(overload):
    """Every batch norm overload PyTorch may send (export and compile paths use the newer ones)."""
    gen = torch.Generator().manual_seed(3)
    x, w, b, rm, rv = _args(gen, 4, (5, 4, 3))
    rm_d, rv_d = rm.to(DEV), rv.to(DEV)
    packet, _, ov = overload.partition(".")
    op = getattr(getattr(aten, packet), ov or "default")
    if overload in ("native_batch_norm", "_native_batch_norm_legit", "_native_batch_norm_legit_functional"):
        cpu_out = op(x, w, b, rm, rv, True, 0.3, 1e-5)
        dev_out = op(x.to(DEV), w.to(DEV), b.to(DEV), rm_d, rv_d, True, 0.3, 1e-5)
    elif overload == "_native_batch_norm_legit.no_stats":
        cpu_out = op(x, w, b, True, 0.3, 1e-5)
        dev_out = op(x.to(DEV), w.to(DEV), b.to(DEV), True, 0.3, 1e-5)
    else:
        cpu_out = op(x, w, b, rm, rv, 0.3, 1e-5)
        dev_out = op(x.to(DEV), w.to(DEV), b.to(DEV), rm_d, rv_d, 0.3, 1e-5)
    _compare_outputs(dev_out, cpu_out, overload)
    torch.testing.assert_close(rm_d.cpu(), rm, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(rv_d.cpu(), rv, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("mask", [(True, True, True), (True, False, False), (False, True, True)])
def test_batch_norm_backward_overloads(train, mask):
    gen = torch.Generator().manual_seed(4)
    x, w, b, rm, rv = _args(gen, 4, (5, 4, 3))
    g = torch.randn(x.shape, generator=gen)
    _, save_mean, save_invstd = aten.native_batch_norm(x, w, b, rm.clone(), rv.clone(), train, 0.1, 1e-5)
    args = (g, x, w, rm, rv, save_mean, save_invstd, train, 1e-5, list(mask))
    dargs = tuple(a.to(DEV) if isinstance(a, torch.Tensor) else a for a in args)
    _compare_outputs(aten.native_batch_norm_backward(*dargs), aten.native_batch_norm_backward(*args),
                     "native_batch_norm_backward")
    reserve = torch.empty(0, dtype=torch.uint8)
    _compare_outputs(aten.batch_norm_backward(*dargs, reserve.to(DEV)), aten.batch_norm_backward(*args, reserve),
                     "batch_norm_backward")


# -- layer norm -------------------------------------------------------------------------------------------
def _norm_case(fn, x, params, tol):
    """fn(x, *params) forward and backward on wgpu against float64 on the CPU."""
    xd, xc = _dev(x, True), _cpu(x, grad=True)
    pd = [_dev(p, True) for p in params]
    pc = [_cpu(p, grad=True) for p in params]
    yd, yc = fn(xd, *pd), fn(xc, *pc)
    assert yd.dtype == x.dtype
    _close(yd, yc, tol, "output")
    g = torch.randn(yc.shape, generator=torch.Generator().manual_seed(7)).to(x.dtype)
    yd.backward(g.to(DEV))
    yc.backward(g.to(torch.float64))
    _close(xd.grad, xc.grad, tol, "grad input")
    for k, (a, c) in enumerate(zip(pd, pc)):
        _close(a.grad, c.grad, tol, f"grad param {k}")


TOL32 = {"rtol": 1e-4, "atol": 1e-4}

LN_CASES = {
    # (input shape, normalized shape, affine (True, False or "weight"), dtype, param dtype, layout)
    "gpt_rows": ((64, 768), (768,), True, F32, F32, "ncs"),
    "odd_rows": ((3, 7, 33), (33,), True, F32, F32, "ncs"),
    "long_rows": ((5, 1000), (1000,), True, F32, F32, "ncs"),
    "many_short_rows": ((300, 40), (40,), True, F32, F32, "ncs"),
    "tiny_rows": ((50, 3), (3,), True, F32, F32, "ncs"),
    "two_normalized_dims": ((2, 3, 4, 5), (4, 5), True, F32, F32, "ncs"),
    "no_affine": ((6, 33), (33,), False, F32, F32, "ncs"),
    "weight_only": ((6, 33), (33,), "weight", F32, F32, "ncs"),
    "strided_input": ((6, 40), (40,), True, F32, F32, "strided"),
    "half_input_float_params": ((8, 96), (96,), True, F16, F32, "ncs"),
    "half": ((8, 96), (96,), True, F16, F16, "ncs"),
}


@pytest.mark.parametrize("case", list(LN_CASES))
def test_layer_norm_matches_cpu(case):
    shape, ns, affine, dtype, pdtype, layout = LN_CASES[case]
    gen = torch.Generator().manual_seed(1)
    x = _layout((torch.randn(shape, generator=gen) * 3 + 1).to(dtype), layout)
    params = [torch.randn(ns, generator=gen).to(pdtype), torch.randn(ns, generator=gen).to(pdtype)] if affine else []
    tol = TOL32 if dtype == F32 else LOW
    if affine == "weight":
        _norm_case(lambda x, w: F.layer_norm(x, ns, w, None, 1e-5), x, params[:1], tol)
    elif affine:
        _norm_case(lambda x, w, b: F.layer_norm(x, ns, w, b, 1e-5), x, params, tol)
    else:
        _norm_case(lambda x: F.layer_norm(x, ns, None, None, 1e-5), x, params, tol)


def test_layer_norm_statistics_dtype_follows_pytorch():
    x = torch.randn(4, 8, dtype=F16)
    w = torch.randn(8)
    for weight in (w, w.half()):
        dev = aten.native_layer_norm(x.to(DEV), [8], weight.to(DEV), None, 1e-5)
        cpu = aten.native_layer_norm(x, [8], weight, None, 1e-5)
        assert [t.dtype for t in dev] == [t.dtype for t in cpu]
        assert [tuple(t.shape) for t in dev] == [tuple(t.shape) for t in cpu]


# -- group norm -------------------------------------------------------------------------------------------
GN_CASES = {
    # (input shape, groups, affine (True, False or "weight"), dtype, layout)
    "resnet_like": ((8, 32, 8, 8), 8, True, F32, "ncs"),
    "long_groups": ((2, 64, 1000), 4, True, F32, "ncs"),
    "one_group_per_channel": ((3, 6, 5), 6, True, F32, "ncs"),
    "single_group": ((3, 6, 5), 1, True, F32, "ncs"),
    "no_spatial": ((5, 4), 2, True, F32, "ncs"),
    "no_affine": ((2, 6, 3, 3), 3, False, F32, "ncs"),
    "weight_only": ((2, 6, 3, 3), 3, "weight", F32, "ncs"),
    "channels_last": ((2, 6, 4, 4), 2, True, F32, "cl"),
    "half": ((2, 8, 4, 4), 4, True, F16, "ncs"),
}


@pytest.mark.parametrize("case", list(GN_CASES))
def test_group_norm_matches_cpu(case):
    shape, groups, affine, dtype, layout = GN_CASES[case]
    gen = torch.Generator().manual_seed(2)
    C = shape[1]
    x = _layout((torch.randn(shape, generator=gen) * 2 + 1).to(dtype), layout)
    params = [torch.randn(C, generator=gen).to(dtype), torch.randn(C, generator=gen).to(dtype)] if affine else []
    tol = TOL32 if dtype == F32 else LOW
    if affine == "weight":
        _norm_case(lambda x, w: F.group_norm(x, groups, w, None, 1e-5), x, params[:1], tol)
    elif affine:
        _norm_case(lambda x, w, b: F.group_norm(x, groups, w, b, 1e-5), x, params, tol)
    else:
        _norm_case(lambda x: F.group_norm(x, groups, None, None, 1e-5), x, params, tol)
