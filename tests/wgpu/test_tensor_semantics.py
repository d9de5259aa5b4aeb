"""Tensor semantics on the wgpu device: transfers, views sharing storage, in-place through views,
dtypes, printing, item/tolist, save/load, seeding, memory returning to its baseline, errors."""
import copy
import io

import pytest
import torch

import navitrain.wgpu as nw

DEV = "wgpu"


def rnd(*shape, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g).to(dtype) if dtype.is_floating_point else \
        torch.randint(-1000, 1000, shape, generator=g).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int32,
                                   torch.int8, torch.uint8, torch.bool])
def test_round_trip_every_dtype(dtype):
    x = rnd(5, 7, dtype=dtype, seed=1) if dtype != torch.bool else rnd(5, 7, seed=1) > 0
    if dtype == torch.uint8:
        x = torch.randint(0, 256, (5, 7), dtype=torch.uint8)
    d = x.to(DEV)
    assert d.device.type == DEV and d.dtype == dtype and d.shape == x.shape
    assert torch.equal(d.cpu(), x)


def test_int64_values_beyond_int32_survive_when_the_adapter_has_int64():
    x = torch.tensor([2**40 + 3, -(2**35), 7], dtype=torch.int64)
    if "shader-int64" not in nw.adapter_info()["features"]:
        with pytest.raises(OverflowError):
            x.to(DEV)
        return
    d = x.to(DEV)
    assert torch.equal(d.cpu(), x)
    assert torch.equal((d * 3 + 1).cpu(), x * 3 + 1)


def test_views_share_storage_and_inplace_updates_the_base():
    x = rnd(4, 6, seed=2)
    d = x.to(DEV)
    v = d[1:3, ::2]           # a strided view
    v.mul_(10)
    x[1:3, ::2].mul_(10)
    assert torch.allclose(d.cpu(), x)
    t = d.t()
    t[0].add_(1)              # writes column 0 of the base through a transpose
    x.t()[0].add_(1)
    assert torch.allclose(d.cpu(), x)
    flat = d.view(-1)
    flat[5] = 123.0
    x.view(-1)[5] = 123.0
    assert torch.allclose(d.cpu(), x)
    e = d.unsqueeze(0).expand(3, 4, 6)
    assert torch.allclose(e.cpu(), x.unsqueeze(0).expand(3, 4, 6))
    assert torch.allclose(d.permute(1, 0).contiguous().cpu(), x.permute(1, 0).contiguous())
    s = d.select(1, 2)
    assert torch.allclose(s.cpu(), x.select(1, 2))
    a = d.as_strided((2, 2), (6, 1), 1)
    assert torch.allclose(a.cpu(), x.as_strided((2, 2), (6, 1), 1))


def test_noncontiguous_inputs_to_kernels():
    x, y = rnd(8, 5, seed=3), rnd(5, 8, seed=4)
    d, e = x.to(DEV), y.to(DEV)
    assert torch.allclose((d.t() * e).cpu(), x.t() * y)
    assert torch.allclose((d[::2] + 1).exp().cpu(), (x[::2] + 1).exp())
    assert torch.allclose(d.t().sum(0).cpu(), x.t().sum(0), atol=1e-5)


def test_item_tolist_and_printing():
    x = rnd(3, seed=5)
    d = x.to(DEV)
    assert d.sum().item() == pytest.approx(x.sum().item(), rel=1e-6)
    assert d.tolist() == pytest.approx(x.tolist())
    text = repr(d)
    assert "device='wgpu:0'" in text and f"{x[0].item():.4f}" in text
    p = torch.nn.Parameter(d.clone())
    assert repr(p).startswith("Parameter containing:")


def test_factories_on_device():
    torch.manual_seed(0)
    z = torch.zeros(3, 4, device=DEV)
    o = torch.ones(2, dtype=torch.int64, device=DEV)
    f = torch.full((2, 2), 3.5, device=DEV)
    a = torch.arange(2, 11, 3, device=DEV)
    assert torch.equal(z.cpu(), torch.zeros(3, 4)) and torch.equal(o.cpu(), torch.ones(2, dtype=torch.int64))
    assert torch.equal(f.cpu(), torch.full((2, 2), 3.5)) and torch.equal(a.cpu(), torch.arange(2, 11, 3))
    t = torch.tensor([[1.5, 2.5]], device=DEV)
    assert torch.equal(t.cpu(), torch.tensor([[1.5, 2.5]]))


def test_manual_seed_reproduces_device_rng_and_distributions_are_right():
    torch.manual_seed(123)
    a = torch.randn(20000, device=DEV).cpu()
    u = torch.rand(20000, device=DEV).cpu()
    torch.manual_seed(123)
    b = torch.randn(20000, device=DEV).cpu()
    assert torch.equal(a, b)
    assert abs(a.mean().item()) < 0.03 and abs(a.std().item() - 1) < 0.03
    assert 0 <= u.min().item() and u.max().item() < 1 and abs(u.mean().item() - 0.5) < 0.01
    torch.manual_seed(124)
    assert not torch.equal(torch.randn(20000, device=DEV).cpu(), a)
    r = torch.randint(3, 9, (5000,), device=DEV).cpu()
    assert r.min().item() == 3 and r.max().item() == 8
    m = torch.bernoulli(torch.full((20000,), 0.3, device=DEV)).cpu()
    assert abs(m.mean().item() - 0.3) < 0.02


def test_state_dict_save_load_comes_back_on_wgpu_or_where_map_location_says():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2)).to(DEV)
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    assert all(v.device.type == DEV for v in torch.load(buf).values())  # as CUDA checkpoints come back on CUDA
    buf.seek(0)
    state = torch.load(buf, map_location="cpu")
    assert all(v.device.type == "cpu" for v in state.values())
    fresh = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2)).to(DEV)
    fresh.load_state_dict(state)
    for a, b in zip(model.parameters(), fresh.parameters()):
        assert torch.equal(a.cpu(), b.cpu())
    buf = io.BytesIO()
    torch.save(model[0].weight, buf)
    buf.seek(0)
    w = torch.load(buf, map_location="cpu")
    assert isinstance(w, torch.nn.Parameter) and w.device.type == "cpu"


def test_deepcopy_is_a_real_copy():
    d = rnd(3, 3, seed=7).to(DEV)
    c = copy.deepcopy(d)
    c.add_(1)
    assert not torch.equal(c.cpu(), d.cpu())
    model = torch.nn.Linear(3, 2).to(DEV)
    clone = copy.deepcopy(model)
    with torch.no_grad():
        clone.weight.zero_()
    assert model.weight.abs().sum().item() > 0


def test_data_assignment_keeps_storage_consistent():
    p = torch.nn.Parameter(rnd(3, 4, seed=8).to(DEV))
    new = rnd(3, 4, seed=9)
    p.data = new.to(DEV)
    assert torch.equal(p.detach().cpu(), new)
    model = torch.nn.Linear(4, 2).to(DEV).half()
    assert model.weight.dtype == torch.float16
    assert model.weight.detach().cpu().dtype == torch.float16


def test_memory_returns_to_baseline_after_many_cycles():
    nw.synchronize()
    x = rnd(256, 256, seed=10).to(DEV)
    for _ in range(20):
        (x * 2 + 1).sum()
    nw.synchronize()
    base_alloc, base_reserved = nw.memory_allocated(), nw.memory_reserved()
    for i in range(1000):
        y = x * 2.0 + float(i)
        z = y.sum()
        del y, z
    nw.synchronize()
    assert nw.memory_allocated() == base_alloc
    assert nw.memory_reserved() == base_reserved


def test_strict_mode_refuses_fallbacks_and_lenient_counts_them(monkeypatch):
    # exp of float64 has no kernel anywhere (Vulkan's exp takes 32-bit floats; float64 arithmetic may run on
    # shader-f64 adapters, transcendentals never do): always a fallback
    d = rnd(5, dtype=torch.float64, seed=11).to(DEV)
    monkeypatch.setenv("NAVITRAIN_WGPU_STRICT", "1")
    with pytest.raises(NotImplementedError, match="no kernel for"):
        torch.exp(d)
    monkeypatch.setenv("NAVITRAIN_WGPU_STRICT", "0")
    nw.reset_fallback_counts()
    with pytest.warns(UserWarning, match="runs on the CPU"):
        out = torch.exp(d)
    assert torch.equal(out.cpu(), torch.exp(d.cpu()))
    assert out.device.type == DEV
    report = nw.fallback_report()
    assert report["total_fallback_calls"] >= 1 and any("exp" in k for k in report["cpu_fallbacks"])


def test_clear_errors_for_bad_input():
    a, b = rnd(3, 4, seed=12).to(DEV), rnd(5, 6, seed=13).to(DEV)
    with pytest.raises(RuntimeError, match="cannot be multiplied"):
        torch.mm(a, b)
    with pytest.raises(RuntimeError):
        a + b
    with pytest.raises(RuntimeError, match="view size is not compatible"):
        a.t().view(12)


def test_error_inside_backward_is_raised_after_it_not_an_abort(monkeypatch):
    from navitrain.wgpu import dispatch

    def broken(*args, **kwargs):
        raise RuntimeError("deliberately broken kernel")

    monkeypatch.setitem(dispatch.OPS, torch.ops.aten.threshold_backward.default, broken)
    x = rnd(4, seed=14).to(DEV).requires_grad_()
    torch.relu(x).sum().backward()       # the engine must survive the failing node
    with pytest.raises(dispatch.BackwardError, match="deliberately broken kernel"):
        x.grad.sum().item()


def test_adapter_info_says_what_it_runs_on():
    info = nw.adapter_info()
    assert info["backend"] in ("Vulkan", "Metal", "DX12")
    assert isinstance(info["software"], bool) and info["name"]


def test_tensor_larger_than_a_binding_is_refused_clearly():
    from navitrain.wgpu.runtime import runtime

    too_many = runtime().allocator.max_binding // 4 + 1024
    with pytest.raises(torch.OutOfMemoryError, match="largest storage binding"):
        torch.empty(too_many, device=DEV)


def test_bad_wgsl_names_the_kernel():
    from navitrain.wgpu.runtime import KernelCompileError, runtime

    with pytest.raises(KernelCompileError, match="my_broken_kernel"):
        runtime().kernel(("test", "broken"), "my_broken_kernel", 1, "fn main( {")


def test_randperm_on_the_device_is_a_permutation():
    torch.manual_seed(3)
    p = torch.randperm(1000, device=DEV).cpu()
    assert torch.equal(p.sort().values, torch.arange(1000))
    assert not torch.equal(p, torch.arange(1000))


def test_random_like_factories_stay_on_the_device():
    import navitrain.wgpu as nw

    nw.reset_fallback_counts()
    x = torch.empty(64, 64).to("wgpu")
    u, n = torch.rand_like(x), torch.randn_like(x)
    i = torch.randint_like(x, 5, 9)
    j = torch.randint_like(x, 7, dtype=torch.int64)
    assert nw.fallback_report()["total_fallback_calls"] == 0
    assert all(t.device.type == "wgpu" and t.shape == x.shape for t in (u, n, i, j))
    u, n, i, j = u.cpu(), n.cpu(), i.cpu(), j.cpu()
    assert 0.0 <= u.min().item() and u.max().item() < 1.0 and abs(u.mean().item() - 0.5) < 0.05
    assert abs(n.mean().item()) < 0.1 and abs(n.std().item() - 1.0) < 0.1
    assert i.dtype == torch.float32 and set(i.unique().tolist()) == {5.0, 6.0, 7.0, 8.0}
    assert j.dtype == torch.int64 and set(j.unique().tolist()) == set(range(7))


@pytest.mark.parametrize("dst_dtype,src_dtype,src_shape", [
    (torch.float32, torch.float64, (4,)), (torch.int64, torch.float32, (3, 4)), (torch.float16, torch.int32, ()),
    (torch.bool, torch.float32, (3, 1))])
def test_functional_copy_of_functionalized_graphs_matches_the_cpu(dst_dtype, src_dtype, src_shape):
    """aten.copy (x.copy_(y) once torch.compile functionalizes it): x's shape, dtype and layout, y's values
    broadcast and converted, NaN and infinities included; on the device, with no CPU fallback."""
    x = rnd(4, 3, seed=2).t().to(dst_dtype)          # a transposed layout, kept
    src = (rnd(*src_shape, seed=3) if src_shape else rnd(1, seed=3)[0]).mul(50).to(src_dtype)
    if src_dtype.is_floating_point and dst_dtype.is_floating_point and src.numel() > 2:   # (to int: undefined)
        src.view(-1)[:3] = torch.tensor([float("nan"), float("inf"), -float("inf")], dtype=src_dtype)
    if dst_dtype == torch.float16:
        src = src.clamp(-60000, 60000)
    want = torch.ops.aten.copy.default(x, src)
    nw.reset_fallback_counts()
    got = torch.ops.aten.copy.default(x.to(DEV), src.to(DEV))
    assert got.dtype == want.dtype and got.stride() == want.stride()
    torch.testing.assert_close(got.cpu(), want, equal_nan=True, rtol=0, atol=0)
    assert not nw.fallback_report()["cpu_fallbacks"]


def test_inference_mode_views_of_normal_tensors_and_compiled_inference_match_the_cpu():
    """Inside torch.inference_mode() (Lightning validates and predicts in it), a view of a tensor made outside
    it (a weight's .t(), an input's .view()) failed with "Cannot set version_counter for inference tensor".
    Views are normal tensors sharing the base's version counter, as on the CPU; new results are inference
    tensors; an in-place change through such a view bumps the base's version; a compiled eval model runs."""
    w_cpu = rnd(3, 4, seed=5)
    w = w_cpu.to(DEV)
    with torch.inference_mode():
        for f in (lambda t: t.t(), lambda t: t.view(12), lambda t: t[1], lambda t: t.transpose(0, 1),
                  lambda t: t.unbind(0), lambda t: t.split(3, dim=1), lambda t: t * 2):
            got, want = f(w), f(w_cpu)
            for g, c in zip(got if isinstance(got, tuple) else (got,), want if isinstance(want, tuple) else (want,)):
                assert g.is_inference() == c.is_inference()
                torch.testing.assert_close(g.cpu(), c)
        before = w._version
        w[0].add_(1.5)
        w_cpu[0].add_(1.5)
    assert w._version > before
    torch.testing.assert_close(w.cpu(), w_cpu)

    model = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.GELU(), torch.nn.Linear(5, 2)).eval()
    compiled = torch.compile(copy.deepcopy(model).to(DEV), backend="wgpu")
    for seed in range(3):
        x = rnd(3, 4, seed=10 + seed)
        with torch.inference_mode():
            torch.testing.assert_close(compiled(x.to(DEV)).cpu(), model(x), rtol=1e-5, atol=1e-6)
