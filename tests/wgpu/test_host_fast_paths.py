"""The host-side shortcuts of eager ops (issues 19, 23): the dispatcher's cached per-op routes, the cached
decomposition decision, batches opened and submitted through wgpu-native's C API, and addmm reading a
broadcast bias without an expanded view. Each must give exactly what the long way gives."""
import warnings

import pytest
import torch

import navitrain.wgpu as nw
from navitrain.wgpu import dispatch
from navitrain.wgpu.runtime import runtime

aten = torch.ops.aten
DEV = "wgpu"


def rnd(*shape, seed, dtype=torch.float32):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# -- cached routes ---------------------------------------------------------------------------------
def test_a_handler_swapped_in_after_the_op_ran_is_the_one_used(monkeypatch):
    op = aten.frac.default
    x = rnd(7, seed=1) * 4
    x[0], x[1] = float("nan"), float("inf")
    d = x.to(DEV)
    torch.testing.assert_close(torch.frac(d).cpu(), torch.frac(x), equal_nan=True)  # route cached now
    calls = []

    def recording(t):
        calls.append(t.shape)
        return dispatch.OPS[aten.neg.default](t)

    monkeypatch.setitem(dispatch.OPS, op, recording)
    torch.testing.assert_close(torch.frac(d).cpu(), -x, equal_nan=True)
    assert calls == [torch.Size([7])]
    monkeypatch.undo()  # the original handler comes back (a set of the key, a route dropped again)
    torch.testing.assert_close(torch.frac(d).cpu(), torch.frac(x), equal_nan=True)
    assert len(calls) == 1


def test_a_removed_handler_takes_the_counted_fallback_and_strict_mode_is_read_each_time(monkeypatch):
    op = aten.max.default  # no decomposition: without its handler it can only fall back
    for x in (rnd(9, seed=2) * 5, torch.tensor([1.0, float("nan"), -float("inf")])):
        d = x.to(DEV)
        torch.testing.assert_close(torch.max(d).cpu(), torch.max(x), equal_nan=True)
        with monkeypatch.context() as patch:
            patch.delitem(dispatch.OPS, op)
            with pytest.raises(dispatch.FallbackForbidden):  # strict (the suite's default)
                torch.max(d)
            patch.setenv("NAVITRAIN_WGPU_STRICT", "0")
            before = dispatch.fallback_counts["aten.max.default"]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the once-per-op fallback warning
                got = torch.max(d).cpu()
            torch.testing.assert_close(got, torch.max(x), equal_nan=True)
            assert dispatch.fallback_counts["aten.max.default"] == before + 1
            patch.setenv("NAVITRAIN_WGPU_STRICT", "1")
            with pytest.raises(dispatch.FallbackForbidden):
                torch.max(d)
        torch.testing.assert_close(torch.max(d).cpu(), torch.max(x), equal_nan=True)  # the handler is back


def test_every_way_of_changing_the_tables_drops_the_cached_routes():
    op = aten.frac.default
    x = rnd(4, seed=3).to(DEV)
    torch.frac(x)
    assert id(op) in dispatch._ROUTES
    handler = dispatch.OPS[op]
    for change in (lambda: dispatch.OPS.update({op: handler}), lambda: dispatch.OPS.setdefault(op, handler),
                   lambda: dispatch.OPS.__setitem__(op, handler), lambda: dispatch.COMPLEX_OPS.pop(op, None),
                   lambda: dispatch._MIXED_DEVICES_OK.discard(op)):
        torch.frac(x)
        assert id(op) in dispatch._ROUTES
        change()
        assert id(op) not in dispatch._ROUTES


def test_mixed_devices_rule_follows_its_set(monkeypatch):
    op = aten.add.Tensor
    a, b = rnd(3, seed=4), rnd(3, seed=5)
    d = a.to(DEV)
    with pytest.raises(RuntimeError, match="same device"):
        torch.add(d, b)
    # Allowing the op after its route was cached must be seen (the handler then meets a CPU tensor and
    # fails in its own way, but not with the device error).
    dispatch._MIXED_DEVICES_OK.add(op)
    try:
        with pytest.raises(Exception) as info:
            torch.add(d, b)
        assert "same device" not in str(info.value)
    finally:
        dispatch._MIXED_DEVICES_OK.discard(op)
    with pytest.raises(RuntimeError, match="same device"):
        torch.add(d, b)
    # dtype and shape changes reuse the route and still compute the right values
    for dtype, shape in ((torch.float32, (5,)), (torch.float16, (2, 3)), (torch.int32, (4, 1))):
        p = (rnd(*shape, seed=6) * 10).to(dtype)
        q = (rnd(*shape, seed=7) * 10).to(dtype)
        torch.testing.assert_close(torch.add(p.to(DEV), q.to(DEV)).cpu(), p + q)


def test_a_complex_handler_registered_later_is_consulted(monkeypatch):
    op = aten.neg.default
    z = torch.complex(rnd(5, seed=8), rnd(5, seed=9))
    zd = z.to(DEV)
    torch.testing.assert_close(torch.neg(zd).cpu(), -z)
    seen = []
    original = dispatch.COMPLEX_OPS.get(op)

    def complex_neg(t):
        seen.append(t.dtype)
        return original(t) if original is not None else NotImplemented

    monkeypatch.setitem(dispatch.COMPLEX_OPS, op, complex_neg)
    monkeypatch.setenv("NAVITRAIN_WGPU_STRICT", "0")
    torch.testing.assert_close(torch.neg(zd).cpu(), -z)
    assert seen == [torch.complex64]


def test_a_composite_op_decomposes_the_same_with_its_decision_cached():
    a, b = rnd(4, 6, seed=10), rnd(5, 4, seed=12)
    a[0, 0], a[1, 2] = float("nan"), float("inf")
    da, db = a.to(DEV).t(), b.to(DEV).t()
    op = aten.matmul.default
    assert op not in dispatch.OPS  # else this test would not reach the decomposition
    for _ in range(2):  # the second call uses the cached CompositeImplicitAutograd decision
        # (called as PyTorch calls it from inside other ops' handlers, where it reaches the dispatcher)
        got = dispatch.torch_dispatch(type(da), op, (), (da, db), {})
        torch.testing.assert_close(got.cpu(), a.t().double().matmul(b.t().double()).float(), equal_nan=True)
    assert dispatch._COMPOSITE_IMPLICIT[op] is True


# -- contiguous() as a handler -----------------------------------------------------------------------
def _contiguous_inside_a_handler(d, **kwargs):
    """contiguous() as engines call it inside other ops' handlers (below autograd, so it reaches the
    dispatcher instead of being decomposed by PyTorch first)."""
    with torch._C._AutoDispatchBelowADInplaceOrView():
        return d.contiguous(**kwargs)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.int64, torch.bool])
def test_contiguous_copies_views_as_the_cpu_does(dtype):
    x = (rnd(6, 5, 4, seed=13) * 3).to(dtype)
    if dtype.is_floating_point:
        x[0, 0, 0], x[1, 2, 3], x[2, 1, 0] = float("nan"), float("inf"), -float("inf")
    d = x.to(DEV)
    decomposed_before = dispatch.decomposed_counts["aten.contiguous.default"]
    for view in (lambda t: t.transpose(0, 2), lambda t: t[1:5:2, :, 1:], lambda t: t.permute(1, 2, 0)[:, :, 2]):
        for _ in range(2):
            got = _contiguous_inside_a_handler(view(d))
            assert got.is_contiguous() and got.dtype == dtype
            assert torch.equal(got.cpu().isnan(), view(x).isnan()) if dtype.is_floating_point else True
            torch.testing.assert_close(got.cpu(), view(x).contiguous(), equal_nan=True, rtol=0, atol=0)
    assert dispatch.decomposed_counts["aten.contiguous.default"] == decomposed_before


def test_contiguous_of_a_contiguous_tensor_is_that_tensor_and_layouts_follow_memory_format():
    x = rnd(2, 3, 4, 5, seed=14)
    x[0, 1, 2, 3] = float("nan")
    d = x.to(DEV)
    assert _contiguous_inside_a_handler(d) is d
    assert _contiguous_inside_a_handler(d, memory_format=torch.preserve_format) is d
    cl = _contiguous_inside_a_handler(d, memory_format=torch.channels_last)
    assert cl.stride() == x.contiguous(memory_format=torch.channels_last).stride()
    torch.testing.assert_close(cl.cpu(), x, equal_nan=True, rtol=0, atol=0)
    assert _contiguous_inside_a_handler(cl, memory_format=torch.channels_last) is cl
    back = _contiguous_inside_a_handler(cl)
    assert back.stride() == x.stride()
    torch.testing.assert_close(back.cpu(), x, equal_nan=True, rtol=0, atol=0)
    with pytest.raises(RuntimeError, match="preserve memory format is unsupported"):
        x.transpose(0, 1).contiguous(memory_format=torch.preserve_format)  # the CPU refuses it, and so do we
    with pytest.raises(RuntimeError, match="preserve memory format is unsupported"):
        _contiguous_inside_a_handler(d.transpose(0, 1), memory_format=torch.preserve_format)


def test_contiguous_of_complex_views_goes_through_the_complex_clone():
    z = torch.complex(rnd(4, 6, seed=15), rnd(4, 6, seed=16))
    z[0, 1] = complex(float("nan"), 1.0)
    got = _contiguous_inside_a_handler(z.to(DEV).t())
    assert got.is_contiguous() and got.dtype == torch.complex64
    torch.testing.assert_close(got.cpu(), z.t().contiguous(), equal_nan=True, rtol=0, atol=0)


def test_contiguous_inside_a_conv_backward_gives_the_cpu_gradients():
    # conv's grad-input engine makes the transposed weight contiguous through this handler
    x, w = rnd(2, 3, 6, 6, seed=17), rnd(4, 3, 3, 3, seed=18)
    xd, wd = x.to(DEV).requires_grad_(), w.to(DEV).requires_grad_()
    xr, wr = x.double().requires_grad_(), w.double().requires_grad_()
    torch.nn.functional.conv2d(xd, wd, padding=1).square().sum().backward()
    torch.nn.functional.conv2d(xr, wr, padding=1).square().sum().backward()
    torch.testing.assert_close(xd.grad.cpu(), xr.grad.float(), rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(wd.grad.cpu(), wr.grad.float(), rtol=1e-4, atol=1e-3)


# -- batches through the C API ---------------------------------------------------------------------
def test_many_batches_through_the_native_submitter_give_the_cpu_values():
    rt = runtime()
    assert rt._native is not None, "wgpu-py's wgpu-native backend exposes the C functions"
    x = rnd(1000, seed=11)
    x[:3] = torch.tensor([float("nan"), float("inf"), -float("inf")])
    d, ref = x.to(DEV), x.clone()
    submits = rt.submit_count
    for i in range(150):  # past the batch limit several times, so batches close and open natively
        d = d * 1.001 + 0.5 if i % 2 else torch.relu(d) - 0.25
        ref = ref * 1.001 + 0.5 if i % 2 else torch.relu(ref) - 0.25
    torch.testing.assert_close(d.cpu(), ref, equal_nan=True, rtol=1e-4, atol=1e-4)
    assert rt.submit_count - submits >= 150 * 2 // rt._batch_limit


def test_profiling_after_native_batches_and_a_timed_pass_meeting_an_open_one():
    rt = runtime()
    x = rnd(300, seed=12)
    d = x.to(DEV)
    y = d * 2.0  # recorded in an open native batch
    with nw.profile() as table:  # profile() synchronizes, then times each dispatch in a pass of its own
        z = y + 1.0
    assert table.totals()["dispatches"] >= 1
    torch.testing.assert_close(z.cpu(), x * 2 + 1)
    if rt._timer is None:
        pytest.skip("no timestamp queries: no timed passes")
    # The safety net: a timed pass while a native batch is open submits that batch first.
    w = d - 3.0
    assert rt._encoder_raw is not None
    with rt.lock:
        saved = rt.profile
        rt.profile = type(table)()  # as profile() sets it, but without its synchronize()
        try:
            v = w * 4.0
        finally:
            rt.synchronize()
            rt.profile = saved
    torch.testing.assert_close(v.cpu(), (x - 3) * 4)


# -- addmm's bias -------------------------------------------------------------------------------
@pytest.mark.parametrize("bias_shape", [(6,), (1, 6), (5, 1), (5, 6), (), (1,), "transposed"])
def test_addmm_bias_broadcasts_as_on_the_cpu(bias_shape):
    a, b = rnd(5, 7, seed=13, dtype=torch.float64), rnd(7, 6, seed=14, dtype=torch.float64)
    base = rnd(*((6, 5) if bias_shape == "transposed" else bias_shape), seed=15, dtype=torch.float64)
    if base.numel() > 1:
        base.view(-1)[0], base.view(-1)[-1] = float("nan"), float("inf")
    bias = base.t() if bias_shape == "transposed" else base
    for beta, alpha in ((1, 1), (0.5, -2.0), (0, 1)):
        want = torch.addmm(bias, a, b, beta=beta, alpha=alpha).float()
        got = torch.addmm(bias.float().to(DEV), a.float().to(DEV), b.float().to(DEV), beta=beta, alpha=alpha)
        torch.testing.assert_close(got.cpu(), want, equal_nan=True, rtol=1e-5, atol=1e-5)


def test_addmm_refuses_the_bias_shapes_the_cpu_refuses():
    a, b = rnd(5, 7, seed=16), rnd(7, 6, seed=17)
    for shape in ((4,), (5, 5), (2, 5, 6), (1, 1, 6)):
        bias = rnd(*shape, seed=18)
        with pytest.raises(RuntimeError):
            torch.addmm(bias, a, b)
        with pytest.raises(RuntimeError):
            torch.addmm(bias.to(DEV), a.to(DEV), b.to(DEV))


def test_addmm_with_no_inner_dimension_scales_the_bias():
    a, b, bias = torch.empty(5, 0), torch.empty(0, 6), rnd(6, seed=19)
    got = torch.addmm(bias.to(DEV), a.to(DEV), b.to(DEV), beta=0.5)
    torch.testing.assert_close(got.cpu(), torch.addmm(bias, a, b, beta=0.5))


def test_linear_gradients_through_addmm():
    x, w, bias = rnd(8, 5, seed=20, dtype=torch.float64), rnd(3, 5, seed=21, dtype=torch.float64), \
        rnd(3, seed=22, dtype=torch.float64)
    leaves_cpu = [t.clone().requires_grad_() for t in (x, w, bias)]
    leaves_dev = [t.float().to(DEV).requires_grad_() for t in (x, w, bias)]
    torch.nn.functional.linear(*leaves_cpu).square().sum().backward()
    out = torch.nn.functional.linear(*leaves_dev)
    out.square().sum().backward()
    for c, d in zip(leaves_cpu, leaves_dev):
        torch.testing.assert_close(d.grad.cpu(), c.grad.float(), rtol=1e-4, atol=1e-4)


# -- output construction ------------------------------------------------------------------------
def test_empty_gives_the_same_geometry_however_the_size_is_spelled():
    import numpy as np

    from navitrain.wgpu.tensor import empty

    for size in ((3, 4, 5), [3, 4, 5], torch.Size([3, 4, 5]), (np.int64(3), 4, np.int32(5)),
                 (torch.tensor(3), 4, 5), (3, 0, 5), (), (7,)):
        for dtype in (torch.float32, torch.float16, torch.int64):
            for _ in range(2):  # the second time from the cached geometry
                t = empty(size, dtype)
                want = torch.empty(tuple(int(s) for s in size), dtype=dtype)
                assert t.shape == want.shape and t.stride() == want.stride() and t.dtype == dtype
                assert t._ws.nelem == want.numel() and t.is_contiguous()
    assert all(all(type(s) is int for s in key) for key in __import__(
        "navitrain.wgpu.tensor", fromlist=["_CONTIGUOUS"])._CONTIGUOUS)


def test_views_and_reshapes_of_cached_geometry_match_the_cpu():
    x = rnd(4, 6, 5, seed=23)
    x[0, 0, 0], x[3, 5, 4] = float("nan"), -float("inf")
    d = x.to(DEV)
    for _ in range(2):
        for size in ((24, 5), (-1,), (4, -1), (2, 2, 30), (120, 1)):
            torch.testing.assert_close(d.view(size).cpu(), x.view(size), equal_nan=True)
            torch.testing.assert_close(d.reshape(size).cpu(), x.reshape(size), equal_nan=True)
        # a transposed tensor cannot be viewed flat (an error every time, never cached as a view) but
        # can be reshaped (a copy)
        with pytest.raises(RuntimeError):
            d.transpose(0, 1).view(-1)
        torch.testing.assert_close(d.transpose(0, 1).reshape(-1).cpu(), x.transpose(0, 1).reshape(-1),
                                   equal_nan=True)
    with pytest.raises(RuntimeError):
        d.view(7, -1)


# -- broadcasting elementwise ops ---------------------------------------------------------------
def test_broadcasting_ops_with_cached_shapes_and_layouts_match_the_cpu():
    base = rnd(6, 5, 4, seed=24)
    base[0, 0, 0], base[1, 2, 3], base[5, 4, 0] = float("nan"), float("inf"), -float("inf")
    other = rnd(5, 4, seed=25)
    other[0, 1] = float("nan")
    col = rnd(6, 1, 1, seed=26)
    d, o, c = base.to(DEV), other.to(DEV), col.to(DEV)
    cases = [
        (lambda x, y, z: x + y, "bias over a batch"),
        (lambda x, y, z: x * z - y, "column and bias"),
        (lambda x, y, z: x.transpose(1, 2) + y.t(), "transposed operands"),
        (lambda x, y, z: x[:, 1:, ::2] * y[1:, ::2], "sliced operands"),
        (lambda x, y, z: torch.maximum(x, y), "NaN-propagating maximum"),
        (lambda x, y, z: torch.where(x > 0, y, z), "where over three shapes"),
    ]
    for _ in range(2):  # the second round from the cached broadcast shapes and layouts
        for fn, what in cases:
            torch.testing.assert_close(fn(d, o, c).cpu(), fn(base, other, col), equal_nan=True, msg=what)
    # the same shapes with other strides, and another dtype, take layouts of their own
    dc = d.permute(2, 0, 1).contiguous().permute(1, 2, 0)
    torch.testing.assert_close((dc + o).cpu(), base + other, equal_nan=True)
    torch.testing.assert_close((d.half() + o.half()).cpu(), base.half() + other.half(), equal_nan=True)
    for _ in range(2):  # shapes that do not broadcast raise every time (errors are not cached)
        with pytest.raises(RuntimeError):
            d + rnd(3, 4, seed=27).to(DEV)


def test_broadcast_gradients_reduce_to_the_operand_shapes():
    x, b = rnd(4, 3, 5, seed=28, dtype=torch.float64), rnd(5, seed=29, dtype=torch.float64)
    xc, bc = x.clone().requires_grad_(), b.clone().requires_grad_()
    xd, bd = x.float().to(DEV).requires_grad_(), b.float().to(DEV).requires_grad_()
    ((xc * bc + bc) ** 2).sum().backward()
    ((xd * bd + bd) ** 2).sum().backward()
    torch.testing.assert_close(xd.grad.cpu(), xc.grad.float(), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(bd.grad.cpu(), bc.grad.float(), rtol=1e-4, atol=1e-4)


# -- layer norm's parameter vectors viewed without the dispatcher -----------------------------------------
@pytest.mark.parametrize("strided_params", [False, True])
def test_layer_norm_forward_and_backward_match_float64(strided_params):
    x = rnd(3, 5, 16, seed=19) * 2
    x[0, 1, 3], x[1, 2, 0], x[2, 4, 5] = float("nan"), float("inf"), -float("inf")
    w, b = rnd(16, seed=20), rnd(16, seed=21)
    if strided_params:  # every other element of a longer vector: copied contiguous, then viewed
        w, b = rnd(32, seed=20)[::2], rnd(32, seed=21)[::2]
    gy = rnd(3, 5, 16, seed=22)
    refs = [t.double().requires_grad_() for t in (x, w, b)]
    devs = [t.to(DEV).requires_grad_() if t.is_contiguous() else t.to(DEV) for t in (x, w, b)]
    if strided_params:
        base_w, base_b = rnd(32, seed=20).to(DEV).requires_grad_(), rnd(32, seed=21).to(DEV).requires_grad_()
        devs[1], devs[2] = base_w[::2], base_b[::2]
    for _ in range(2):  # the second pass runs with everything cached
        y = torch.nn.functional.layer_norm(devs[0], (16,), devs[1], devs[2])
        ref = torch.nn.functional.layer_norm(refs[0], (16,), refs[1], refs[2])
        torch.testing.assert_close(y.cpu(), ref.float(), equal_nan=True, rtol=1e-4, atol=1e-4)
        grads = torch.autograd.grad(y, [devs[0], base_w, base_b] if strided_params else devs, gy.to(DEV))
        ref_grads = torch.autograd.grad(ref, refs, gy.double())
        if strided_params:  # the elements between the viewed ones get no gradient
            assert not grads[1][1::2].cpu().any() and not grads[2][1::2].cpu().any()
            grads = [grads[0], grads[1][::2], grads[2][::2]]
        for got, want in zip(grads, ref_grads):
            torch.testing.assert_close(got.cpu(), want.float(), equal_nan=True, rtol=1e-4, atol=1e-4)


def test_layer_norm_with_a_weight_of_the_wrong_size_raises():
    x = rnd(4, 8, seed=23).to(DEV)
    with pytest.raises(RuntimeError):
        aten.native_layer_norm.default(x, [8], rnd(6, seed=24).to(DEV), None, 1e-5)


# -- in-place arithmetic straight to the engine --------------------------------------------------------
def _special(x):
    x = x.clone()
    flat = x.view(-1)
    flat[0], flat[1], flat[2] = float("nan"), float("inf"), -float("inf")
    return x


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("op", ["add_", "sub_", "mul_"])
def test_in_place_float_arithmetic_matches_the_cpu(op, dtype):
    a = _special(rnd(8, 8, seed=25)).to(dtype)
    cases = [rnd(8, 8, seed=26).to(dtype), _special(rnd(8, seed=27)).to(dtype), rnd(8, 8, seed=28).to(dtype).t(),
             rnd(8, 1, seed=29).to(dtype), 0.375, -2.5, float("nan")]
    for other in cases:
        for a_view in (lambda t: t, lambda t: t.t()):  # a itself contiguous, and a transposed view
            want, got = a_view(a.clone()), a_view(a.to(DEV))
            o = other.to(DEV) if isinstance(other, torch.Tensor) else other
            for _ in range(2):  # the second time with everything cached
                getattr(want, op)(other)
                getattr(got, op)(o)
                torch.testing.assert_close(got.cpu(), want, equal_nan=True, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32])
def test_in_place_integer_arithmetic_by_python_ints_matches_the_cpu(dtype):
    info = torch.iinfo(dtype)
    a = torch.tensor([0, 1, -7, info.max, info.min, 123456], dtype=dtype)
    for op in ("add_", "sub_", "mul_"):
        for other in (1, -3, 2**31 - 1, -2**31):  # the i32 word's range (wider ints do not pack yet)
            want, got = a.clone(), a.to(DEV)
            getattr(want, op)(other)
            getattr(got, op)(other)
            assert torch.equal(got.cpu(), want), (op, other)
    counter, ref = torch.tensor(0, dtype=dtype).to(DEV), torch.tensor(0, dtype=dtype)
    for _ in range(3):  # BatchNorm's num_batches_tracked
        counter.add_(1)
        ref.add_(1)
    assert torch.equal(counter.cpu(), ref)


def test_in_place_arithmetic_keeps_its_checks():
    x = rnd(4, seed=30)
    d = x.to(DEV)
    d.add_(rnd(4, seed=31).to(DEV), alpha=2.5)  # alpha: the general path
    torch.testing.assert_close(d.cpu(), x + 2.5 * rnd(4, seed=31))
    i = torch.arange(4).to(DEV)
    with pytest.raises(RuntimeError, match="can't be cast"):
        i.add_(0.5)  # as on the CPU: a float result cannot go into an integer tensor
    with pytest.raises(RuntimeError, match="can't be cast"):
        i.mul_(torch.ones(4).to(DEV))
    h = torch.ones(4, dtype=torch.float16).to(DEV)
    h.add_(torch.full((4,), 0.5).to(DEV))  # float32 operand into float16: promoted, cast back
    assert torch.equal(h.cpu(), torch.full((4,), 1.5, dtype=torch.float16))


@pytest.mark.parametrize("op", [
    lambda a, b: a.add_(b), lambda a, b: a.sub_(b, alpha=2), lambda a, b: a.mul_(b), lambda a, b: a.div_(b),
    lambda a, b: a.masked_fill_(b > 0, 1.0), lambda a, b: a.lerp_(b, 0.5), lambda a, b: a.addcmul_(b, b),
    lambda a, b: a.clamp_(b), lambda a, b: a.lt_(b), lambda a, b: a.pow_(b)])
def test_in_place_ops_refuse_an_operand_larger_than_the_output(op):
    # Told the output's shape, the engine would read a larger operand with made-up strides.
    a, b = rnd(5, seed=32), rnd(4, 5, seed=33)
    with pytest.raises(RuntimeError, match=r"output with shape \[5\] doesn't match the broadcast shape \[4, 5\]"):
        op(a.clone(), b)
    with pytest.raises(RuntimeError, match=r"output with shape \[5\] doesn't match the broadcast shape \[4, 5\]"):
        op(a.to(DEV), b.to(DEV))


def test_in_place_arithmetic_gradients_match_float64():
    x, y = rnd(3, 4, seed=34), rnd(4, seed=35)
    grads = []
    for dev, dtype in ((DEV, torch.float32), ("cpu", torch.float64)):
        xl, yl = x.to(dtype).to(dev).requires_grad_(), y.to(dtype).to(dev).requires_grad_()
        z = xl * 1.0
        z.mul_(2.5)
        z.add_(yl)
        z.sub_(0.25)
        z.mul_(yl)
        (z * z).sum().backward()
        grads.append((xl.grad.cpu().float(), yl.grad.cpu().float()))
    for got, want in zip(*grads):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
