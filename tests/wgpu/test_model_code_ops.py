"""Ops that third-party model code reached and the device lacked (benchmarks/third_party_models.py):
each against the CPU on fresh random inputs with NaN/inf where they matter, under strict mode (conftest:
NAVITRAIN_WGPU_STRICT=1, so a CPU fallback fails the test). Plain PyTorch only: no third-party package."""
import pytest
import torch
from torch import nn

DEV = "wgpu"
NAN, INF = float("nan"), float("inf")
wn_backward = torch.ops.aten._weight_norm_interface_backward


@pytest.mark.parametrize("shape,dim", [((6, 3, 5), 0), ((4, 3, 7), 2), ((9,), 0), ((5, 8), 1)])
def test_weight_norm_interface_backward_matches_the_cpu(shape, dim):
    g = torch.Generator().manual_seed(len(shape) * 10 + dim)
    v = torch.randn(shape, generator=g, dtype=torch.float64)
    gain_shape = [s if i == dim % len(shape) else 1 for i, s in enumerate(shape)]
    gain = torch.randn(gain_shape, generator=g, dtype=torch.float64)
    grad_w = torch.randn(shape, generator=g, dtype=torch.float64)
    if len(shape) > 1:  # a NaN and an inf in the incoming gradient reach their slices only
        grad_w.view(-1)[0], grad_w.view(-1)[-1] = NAN, INF
    norms = torch._weight_norm_interface(v, gain, dim)[1]
    exact = wn_backward(grad_w, v, gain, norms, dim)
    args = [t.float() for t in (grad_w, v, gain, norms)]
    cpu = wn_backward(*args, dim)
    got = wn_backward(*(t.to(DEV) for t in args), dim)
    for name, a, c, e in zip(("grad_v", "grad_g"), got, cpu, exact):
        assert a.device.type == DEV and a.dtype == c.dtype and a.shape == c.shape, name
        torch.testing.assert_close(a.cpu(), c, rtol=1e-5, atol=1e-5, equal_nan=True, msg=name)
        torch.testing.assert_close(a.cpu().double(), e, rtol=1e-5, atol=1e-5, equal_nan=True, msg=name)


def test_weight_norm_interface_backward_bfloat16_accumulates_in_float():
    g = torch.Generator().manual_seed(3)
    v, grad_w = torch.randn(8, 4, 64, generator=g), torch.randn(8, 4, 64, generator=g)
    gain = torch.randn(8, 1, 1, generator=g)
    args = [t.bfloat16() for t in (grad_w, v, gain)]
    norms = torch._weight_norm_interface(args[1], args[2], 0)[1]  # float32 norms for bfloat16, as on CUDA
    cpu = wn_backward(*args, norms, 0)
    got = wn_backward(*(t.to(DEV) for t in args), norms.to(DEV), 0)
    for a, c in zip(got, cpu):
        assert a.dtype == c.dtype == torch.bfloat16
        torch.testing.assert_close(a.cpu().float(), c.float(), rtol=1e-2, atol=1e-2)


def test_weight_normed_conv_trains_like_the_cpu():
    # wav2vec2's positional embedding: a grouped Conv1d under parametrizations.weight_norm(dim=2)
    torch.manual_seed(5)
    conv = nn.utils.parametrizations.weight_norm(nn.Conv1d(8, 8, 5, padding=2, groups=2), name="weight", dim=2)
    x = torch.randn(2, 8, 12)
    results = {}
    for device in ("cpu", DEV):
        model = conv.to(device) if device == "cpu" else __import__("copy").deepcopy(conv).to(device)
        model.zero_grad()
        (model(x.to(device)) ** 2).mean().backward()
        results[device] = [p.grad.cpu() for p in model.parameters()]
    for a, c in zip(results[DEV], results["cpu"]):
        torch.testing.assert_close(a, c, rtol=1e-4, atol=1e-5)


def _histc_as_cuda(x, bins, lo, hi):
    """CUDA's integer histc: (x - lo) * bins // (hi - lo) in int64, x == hi in the last bin; the counts
    in x's dtype (so they wrap in uint8)."""
    x_dtype, x = x.dtype, x.long()
    inside = x[(x >= lo) & (x <= hi)]
    k = ((inside - lo) * bins).div(hi - lo, rounding_mode="floor").clamp_max(bins - 1)
    return torch.bincount(k, minlength=bins).to(x_dtype)


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64, torch.uint8, torch.int16])
def test_integer_histc_counts_as_cuda_does(dtype):
    g = torch.Generator().manual_seed(7)
    low = 0 if dtype == torch.uint8 else -20
    x = torch.randint(low, 40, (3, 101), generator=g).to(dtype)
    for bins, lo, hi in ((8, 0, 7), (5, -3, 30), (13, 2, 9), (1, 0, 100), (7, 0.9, 6.5)):
        got = torch.histc(x.to(DEV), bins, lo, hi)
        assert got.dtype == dtype and got.device.type == DEV
        torch.testing.assert_close(got.cpu(), _histc_as_cuda(x, bins, int(lo), int(hi)), rtol=0, atol=0)
    got = torch.histc(x.to(DEV), 6)  # min == max: the data's own range
    torch.testing.assert_close(got.cpu(), _histc_as_cuda(x, 6, int(x.min()), int(x.max())), rtol=0, atol=0)


def test_integer_histc_routes_mixture_of_experts_tokens():
    # transformers' grouped-MoE path: sorted expert ids of every (token, top-k) pair, bins = experts
    g = torch.Generator().manual_seed(11)
    experts = 4
    ids = torch.sort(torch.randint(0, experts, (24,), generator=g, dtype=torch.int32)).values
    got = torch.histc(ids.to(DEV), bins=experts, min=0, max=experts - 1)
    assert got.dtype == torch.int32
    assert got.cpu().tolist() == torch.bincount(ids.long(), minlength=experts).tolist()
    assert torch.histc(ids.float(), bins=experts, min=0, max=experts - 1).tolist() == got.cpu().float().tolist()


def test_histc_refusals_stay_as_on_the_cpu():
    with pytest.raises(RuntimeError, match="max must be larger than min"):
        torch.histc(torch.arange(5).to(DEV), 4, 3, 1)
    with pytest.raises(NotImplementedError):
        torch.histc(torch.ones(4, dtype=torch.bool).to(DEV), 4, 0, 1)


def _offsets(*ends):
    return torch.tensor(ends, dtype=torch.int32)


@pytest.mark.parametrize("layout", ["2d_3d", "3d_2d", "2d_2d", "3d_3d"])
def test_grouped_mm_matches_the_cpu_forward_and_backward(layout):
    g = torch.Generator().manual_seed(13)
    rand = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    # shapes keep the CPU kernel's 16-byte stride rule; one empty group
    a, b, offs = {"2d_3d": (rand(12, 8), rand(4, 8, 16), _offsets(3, 3, 9, 12)),
                  "3d_2d": (rand(4, 8, 8), rand(8, 12), _offsets(4, 4, 8, 12)),
                  "2d_2d": (rand(8, 12), rand(12, 16), _offsets(4, 4, 12)),
                  "3d_3d": (rand(3, 8, 4), rand(3, 4, 8), None)}[layout]
    results = {}
    for device in ("cpu", DEV):
        a_, b_ = (t.detach().to(device).requires_grad_() for t in (a, b))
        out = torch._grouped_mm(a_, b_, None if offs is None else offs.to(device))
        out_grad = rand(*out.shape) if device == "cpu" else results["cpu"][3]
        out.backward(out_grad.to(device))
        results[device] = (out.detach().cpu(), a_.grad.cpu(), b_.grad.cpu(), out_grad)
    for got, want in zip(results[DEV][:3], results["cpu"][:3]):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    a[1, 2], a[-1, 0] = float("nan"), float("inf")  # non-finite values reach the same outputs
    got = torch._grouped_mm(a.to(DEV), b.to(DEV), None if offs is None else offs.to(DEV)).cpu()
    want = torch._grouped_mm(a, b, offs)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5, equal_nan=True)


def test_grouped_mm_rows_past_the_last_offset_are_zero():
    # CUDA and the CPU leave them uninitialised (MoE code masks them); here they are zero, never garbage
    a, b = torch.randn(12, 8), torch.randn(3, 8, 16)
    got = torch._grouped_mm(a.to(DEV), b.to(DEV), _offsets(2, 6, 9).to(DEV)).cpu()
    torch.testing.assert_close(got[:9], torch._grouped_mm(a, b, _offsets(2, 6, 9))[:9], rtol=1e-5, atol=1e-5)
    assert got[9:].eq(0).all()


def test_grouped_mm_gradients_of_a_mixture_of_experts_layer():
    # the grouped path of a MoE MLP: tokens sorted by expert, groups of unequal size, one empty expert
    g = torch.Generator().manual_seed(17)
    tokens, experts = torch.randn(10, 8, generator=g), torch.randn(4, 8, 16, generator=g)
    down = torch.randn(4, 16, 8, generator=g)
    offs = _offsets(4, 4, 7, 10)
    grads = {}
    for device in ("cpu", DEV):
        x, w1, w2 = (t.detach().to(device).requires_grad_() for t in (tokens, experts, down))
        hidden = torch.nn.functional.silu(torch._grouped_mm(x, w1, offs.to(device)))
        (torch._grouped_mm(hidden, w2, offs.to(device)) ** 2).mean().backward()
        grads[device] = [t.grad.cpu() for t in (x, w1, w2)]
    for d, c in zip(grads[DEV], grads["cpu"]):
        torch.testing.assert_close(d, c, rtol=1e-4, atol=1e-6)


def test_grouped_mm_refusals():
    a, b = torch.randn(4, 4).to(DEV), torch.randn(2, 4, 4).to(DEV)
    with pytest.raises(RuntimeError, match="int32"):
        torch._grouped_mm(a, b, torch.tensor([2, 4]).to(DEV))
    with pytest.raises(RuntimeError, match="non-decreasing"):
        torch._grouped_mm(a, b, _offsets(3, 2).to(DEV))


def test_cat_of_pieces_interleaved_across_heaps():
    # DenseNet's torch.cat once the allocator had grown a second heap: pieces of one heap around a piece of
    # another were launched together, and the first took the gap as its extent (wrong, unwritten slices).
    import navitrain.wgpu as nw

    g = torch.Generator().manual_seed(19)
    host = [torch.randn(2, c, 5, 5, generator=g) for c in (6, 4, 6, 3)]
    fillers, reserved = [torch.empty(1 << 20, device=DEV)], nw.memory_reserved()
    while nw.memory_reserved() == reserved and len(fillers) < 1024:  # until the allocator adds a heap
        fillers.append(torch.empty(1 << 20, device=DEV))

    def piece(base, values, at):  # a view into `base`, so in its heap
        view = base[at:at + values.numel()].view(values.shape)
        view.copy_(values.to(DEV))
        return view

    a, c = piece(fillers[0], host[0], 0), piece(fillers[0], host[2], 4096)
    b, d = piece(fillers[-1], host[1], 0), host[3].to(DEV)  # fillers[-1] was carved from the new heap
    assert a._ws.heap is c._ws.heap and b._ws.heap is not a._ws.heap
    got = torch.cat([a, b, c, d], 1).cpu()
    del fillers, a, b, c, d
    nw.empty_cache()  # give the extra heap back: later tests count launches that assume one heap
    torch.testing.assert_close(got, torch.cat(host, 1), rtol=0, atol=0)


@pytest.mark.parametrize("shape", [(0,), (7,), (3, 5)])
def test_is_all_true_and_is_any_true(shape):
    """torch.distributions validates every value with torch._is_all_true (validate_args is on by default)."""
    for density in (0.0, 0.5, 1.0):
        x = torch.rand(shape) < density
        w = x.to("wgpu")
        assert torch._is_all_true(w).cpu().item() == torch._is_all_true(x).item()
        assert torch._is_any_true(w).cpu().item() == torch._is_any_true(x).item()


def test_distributions_validate_on_the_device():
    # validate_args given: the default is process-wide state another test may have turned off
    normal = torch.distributions.Normal(torch.zeros(4, device="wgpu"), torch.ones(4, device="wgpu"), validate_args=True)
    x = torch.randn(4)
    torch.testing.assert_close(normal.log_prob(x.to("wgpu")).cpu(), torch.distributions.Normal(0.0, 1.0).log_prob(x))
    with pytest.raises(ValueError, match="scale"):
        torch.distributions.Normal(torch.zeros(2, device="wgpu"), -torch.ones(2, device="wgpu"), validate_args=True)
    categorical = torch.distributions.Categorical(logits=torch.randn(3, 5, device="wgpu"), validate_args=True)
    with pytest.raises(ValueError, match="value"):
        categorical.log_prob(torch.tensor([0, 9, 1], device="wgpu"))
