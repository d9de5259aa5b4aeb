"""Compiled steps write new values where they belong (issue 19): an optimizer's list-op chain as in-place
multi-tensor kernels (fusion_foreach.py), batch-norm running statistics and other copy_ epilogues folded
into the kernels computing them (fusion_inplace.py). Ten compiled training steps against ten eager
ones: losses, parameters, optimizer state, running statistics; NaN/inf gradients; the switch."""
import copy

import pytest
import torch
from torch import nn

import navitrain.wgpu.compile as wc
from navitrain.bench import models
from navitrain.wgpu import fusion, fusion_foreach
from navitrain.wgpu.runtime import runtime

pytestmark = pytest.mark.usefixtures("fresh_compile_state")


@pytest.fixture(autouse=True)
def fusion_on(monkeypatch):
    monkeypatch.setattr(fusion, "ENABLED", True)   # whatever NAVITRAIN_WGPU_FUSION says: these test it


def _train(base, make_opt, loss_fn, batches, compiled: bool):
    model = copy.deepcopy(base).to("wgpu")
    opt = make_opt(model.parameters())
    step = models.train_step(model, opt, loss_fn)
    if compiled:
        step = torch.compile(step, backend="wgpu")
    losses = [step(x.to("wgpu"), y.to("wgpu")).item() for x, y in batches]
    return losses, model, opt


def _state(model, opt) -> dict:
    """Everything a step updates: parameters, buffers (running statistics, num_batches_tracked) and the
    optimizer's per-parameter state, on the CPU."""
    out = {f"model.{k}": v.detach().cpu() for k, v in model.state_dict().items()}
    names = {id(p): n for n, p in model.named_parameters()}
    for p, st in opt.state.items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                out[f"opt.{names[id(p)]}.{k}"] = v.detach().cpu().reshape(v.shape)
    return out


def _assert_same_training(base, make_opt, loss_fn, batches, rtol=1e-5, atol=1e-6):
    eager_losses, eager_model, eager_opt = _train(base, make_opt, loss_fn, batches, compiled=False)
    losses, model, opt = _train(base, make_opt, loss_fn, batches, compiled=True)
    assert losses == pytest.approx(eager_losses, rel=rtol, abs=atol)
    got, want = _state(model, opt), _state(eager_model, eager_opt)
    assert got.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=rtol * 10, atol=atol * 10, equal_nan=True,
                                   msg=lambda m, name=name: f"{name}: {m}")


def _cnn_batches(n, size=8, batch=4, classes=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch, 3, size, size, generator=g), torch.randint(0, classes, (batch,), generator=g))
            for _ in range(n)]


def test_compiled_resnet_sgd_momentum_weight_decay_ten_steps_equal_eager_state_and_running_stats():
    torch.manual_seed(3)
    base = models.cifar_resnet18(num_classes=5, width=4, blocks=(1, 1))   # downsample BN included

    def make_opt(p):
        return torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=5e-4, nesterov=True)
    _assert_same_training(base, make_opt, nn.functional.cross_entropy, _cnn_batches(10))
    assert wc.stats["fused_foreach_ops"] >= 4          # the momentum chain, copies included
    assert wc.stats["copies_folded"] >= 2 * 5 + 1       # both statistics of every batch norm, the step count
    assert wc.stats["inference_replays"] >= 7 and wc.stats["forward_replays"] >= 7


def test_compiled_gpt_adamw_ten_steps_equal_eager_including_step_counts_and_moments():
    torch.manual_seed(1)
    base = models.gpt_decoder(vocab=32, context=8, d_model=16, layers=1, heads=2)
    batches = [models.gpt_batch(3, context=8, vocab=32, seed=s) for s in range(10)]

    def make_opt(p):
        return torch.optim.AdamW(p, lr=1e-2, eps=1e-3, weight_decay=0.1, capturable=True)
    _assert_same_training(base, make_opt, models.gpt_loss, batches, rtol=1e-5, atol=1e-6)
    assert wc.stats["fused_foreach_ops"] >= 10
    assert wc.stats["constants_folded"] >= 1          # the decomposed attention's causal mask
    assert wc.stats["inference_replays"] >= 7


def _optimizer_replay_dispatches(make_opt, params, grads_for_step, steps=4):
    """Compiled optimizer steps over fixed gradients; dispatches of the last (replayed) step."""
    opt = make_opt(params)
    step = torch.compile(opt.step, backend="wgpu")
    rt = runtime()
    for k in range(steps):
        for p, g in zip(params, grads_for_step(k)):
            p.grad = g
        before, copies_before = rt.dispatch_count, wc.stats["input_copies"]
        step()
        # The new gradients are copied into the graph's static inputs first (one copy each): not the update.
        used = rt.dispatch_count - before - (wc.stats["input_copies"] - copies_before)
    return used


@pytest.mark.parametrize("kind", ["sgd", "adamw", "adam_amsgrad"])
def test_compiled_optimizer_step_is_a_few_dispatches_and_propagates_nan_and_inf_like_eager(kind):
    g = torch.Generator().manual_seed(7)
    shapes = [(5, 3), (5,), (2, 5), (2,), (1,)]
    init = [torch.randn(s, generator=g) for s in shapes]
    grads = [[torch.randn(s, generator=g) for s in shapes] for _ in range(4)]
    grads[1][0][2, 1] = float("nan")     # NaN and +-inf gradients in a step before the captured ones
    grads[1][1][3] = float("inf")
    grads[2][2][1, 4] = float("-inf")
    grads[3][3][0] = -1e30               # large finite: squares overflow to inf inside Adam

    def make(params):
        if kind == "sgd":
            return torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=1e-2)
        return torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1, capturable=True, amsgrad=kind == "adam_amsgrad")

    results = []
    for compiled in (False, True):
        params = [nn.Parameter(t.clone().to("wgpu")) for t in init]
        opt = make(params)
        step = torch.compile(opt.step, backend="wgpu") if compiled else opt.step
        for k in range(4):
            for p, gr in zip(params, grads[k]):
                p.grad = gr.to("wgpu")
            step()
        results.append(([p.detach().cpu() for p in params],
                        [{k: v.cpu() for k, v in opt.state[p].items()} for p in params]))
    (eager_p, eager_s), (got_p, got_s) = results
    for a, b in zip(got_p, eager_p):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, equal_nan=True)
    for a, b in zip(got_s, eager_s):
        for k in b:
            torch.testing.assert_close(a[k].reshape(b[k].shape), b[k], rtol=1e-5, atol=1e-6, equal_nan=True)
    assert any(p.isnan().any() for p in got_p) and wc.stats["fused_foreach_ops"] > 0
    if kind != "adam_amsgrad":
        # The update of every parameter and its state: one kernel (plus one for Adam's step counts), no copies.
        params = [nn.Parameter(t.clone().to("wgpu")) for t in init]
        used = _optimizer_replay_dispatches(make, params, lambda k: [x.to("wgpu") for x in grads[0]])
        assert used <= (1 if kind == "sgd" else 2), used


def test_fusion_switch_off_keeps_the_copies(monkeypatch):
    monkeypatch.setattr(fusion, "ENABLED", False)
    torch.manual_seed(3)
    base = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 8 * 8, 5))
    _assert_same_training(base, lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9), nn.functional.cross_entropy,
                          _cnn_batches(4))
    assert wc.stats["fused_foreach_ops"] == 0 and wc.stats["copies_folded"] == 0


def _momentum_step(params, grads, bufs):
    """SGD momentum as AOTAutograd hands it over: functional list ops, then copy_ into the inputs."""
    new_bufs = torch._foreach_add(torch._foreach_mul(bufs, 0.9), grads)
    new_params = torch._foreach_add(params, new_bufs, alpha=-0.1)
    for dest, value in zip(params + bufs, new_params + new_bufs):
        dest.copy_(value)


def _traced_momentum_step():
    from torch.fx.experimental.proxy_tensor import make_fx

    shapes = [(3, 4), (4,)]
    gm = make_fx(lambda p, g, b: _momentum_step(p, g, b))(*[[torch.zeros(s) for s in shapes] for _ in range(3)])
    assert fusion_foreach.fuse(gm) > 0
    assert not [n for n in gm.graph.nodes if n.target is torch.ops.aten.copy_.default]
    return gm, shapes


@pytest.mark.parametrize("layout", ["contiguous", "transposed"])
def test_fused_chain_writes_inputs_in_place_and_runs_the_traced_ops_where_it_cannot_index(layout):
    gm, shapes = _traced_momentum_step()
    g = torch.Generator().manual_seed(5)
    values = [[torch.randn(s, generator=g) for s in shapes] for _ in range(3)]
    values[1][0][1, 2] = float("nan")
    values[2][1][0] = float("inf")
    want = [[t.clone() for t in lst] for lst in values]
    _momentum_step(*want)

    def to_wgpu(t):
        if layout == "transposed" and t.dim() == 2:   # same values, a layout the list kernel cannot index
            return t.t().contiguous().to("wgpu").t()
        return t.to("wgpu")
    lists = [[to_wgpu(t) for t in lst] for lst in values]
    traced_before = fusion_foreach.traced_runs
    gm(*lists)
    for got_list, want_list in zip(lists, want):
        for got, w in zip(got_list, want_list):
            torch.testing.assert_close(got.cpu(), w, rtol=1e-6, atol=1e-7, equal_nan=True)
    assert fusion_foreach.traced_runs == traced_before + (layout == "transposed")


class _BufferUpdates(nn.Module):
    """A forward that updates buffers in place: a fused pointwise chain and a counter (copy_ epilogues)."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(6, 6)
        self.register_buffer("trace", torch.randn(4, 6))
        self.register_buffer("calls", torch.zeros((), dtype=torch.int64))

    def forward(self, x):
        y = self.lin(x)
        with torch.no_grad():
            self.trace.mul_(0.5).add_(y * 0.25).clamp_(min=-1.0)
            self.calls += 1
        return y.sum() + self.trace.sum()


def test_pointwise_and_counter_updates_of_buffers_are_written_in_place_like_eager():
    torch.manual_seed(4)
    base = _BufferUpdates()
    g = torch.Generator().manual_seed(9)
    xs = [torch.randn(4, 6, generator=g) for _ in range(5)]
    xs[2][1, 3] = float("nan")   # reaches the trace: NaN must stay NaN through the clamp
    xs[3][0, 0] = float("inf")
    results = []
    for compiled in (False, True):
        model = copy.deepcopy(base).to("wgpu")
        fn = torch.compile(model, backend="wgpu") if compiled else model
        outs = [fn(x.to("wgpu")).item() for x in xs]
        results.append((outs, model.trace.cpu(), model.calls.cpu()))
    (eager_out, eager_trace, eager_calls), (out, trace, calls) = results
    assert out == pytest.approx(eager_out, rel=1e-5, nan_ok=True)
    torch.testing.assert_close(trace, eager_trace, equal_nan=True)
    assert calls.item() == eager_calls.item() == 5
    assert wc.stats["copies_folded"] >= 2


def test_constants_are_computed_once_but_random_values_and_returned_constants_are_not():
    def f(x):
        mask = torch.ones(4, 4, dtype=torch.bool, device=x.device).tril()
        bias = torch.where(mask, 0.0, float("-inf"))
        noise = torch.rand(4, device=x.device)
        return (x + bias).softmax(-1) + noise, torch.arange(4, device=x.device)

    compiled = torch.compile(f, backend="wgpu")
    x = torch.randn(4, 4)
    x[1, 0] = float("nan")
    outs = []
    for _ in range(4):
        got, index = compiled(x.to("wgpu"))
        index.add_(10)   # a returned constant is the caller's to change: the next call must not see it
        outs.append(got.cpu())
    bias = torch.where(torch.ones(4, 4, dtype=torch.bool).tril(), 0.0, float("-inf"))
    want = (x + bias).softmax(-1)   # plus noise in [0, 1), drawn on the device
    for got in outs:
        assert torch.equal(got.isnan(), want.isnan())
        diff = (got - want)[~want.isnan()]
        assert bool(((diff >= -1e-6) & (diff < 1 + 1e-6)).all())
    assert not torch.equal(outs[-1], outs[-2])   # fresh random numbers on every replay
    assert compiled(x.to("wgpu"))[1].tolist() == [0, 1, 2, 3]
    assert wc.stats["constants_folded"] >= 1 and wc.stats["inference_replays"] >= 2
