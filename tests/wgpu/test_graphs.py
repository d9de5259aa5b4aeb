"""Captured graphs (navitrain.wgpu.WgpuGraph): replayed training steps against the same steps run
eagerly, capture semantics (recorded, not run), the errors for what a graph cannot hold, and the
graph's private memory."""
import copy

import pytest
import torch

import navitrain.wgpu as nw
from navitrain.bench import models
from navitrain.wgpu.runtime import runtime


def _train(model, opt, loss_fn, batches, graphed, warmup=2):
    """Losses of one step per batch; graphed: eager warm-up steps, then one captured step replayed."""
    step = models.train_step(model, opt, loss_fn)
    if not graphed:
        return [step(x.to("wgpu"), y.to("wgpu")).item() for x, y in batches]
    sx, sy = batches[0][0].to("wgpu"), batches[0][1].to("wgpu")
    losses = []
    for x, y in batches[:warmup]:
        sx.copy_(x)
        sy.copy_(y)
        losses.append(step(sx, sy).item())
    g = nw.WgpuGraph()
    with nw.graph(g):
        static_loss = step(sx, sy)
    assert g.dispatch_count > 10
    for x, y in batches[warmup:]:
        sx.copy_(x)
        sy.copy_(y)
        g.replay()
        losses.append(static_loss.item())
    return losses


def _compare(base, make_opt, loss_fn, batches):
    eager_model, graph_model = copy.deepcopy(base).to("wgpu"), copy.deepcopy(base).to("wgpu")
    eager = _train(eager_model, make_opt(eager_model.parameters()), loss_fn, batches, graphed=False)
    replayed = _train(graph_model, make_opt(graph_model.parameters()), loss_fn, batches, graphed=True)
    assert replayed == pytest.approx(eager, rel=1e-5, abs=1e-6)
    assert replayed[-1] < replayed[0]  # it trains
    for a, b in zip(eager_model.parameters(), graph_model.parameters()):
        torch.testing.assert_close(b.detach().cpu(), a.detach().cpu(), rtol=1e-5, atol=1e-6)
    for a, b in zip(eager_model.buffers(), graph_model.buffers()):  # BatchNorm running statistics too
        torch.testing.assert_close(b.cpu(), a.cpu(), rtol=1e-5, atol=1e-6)


def test_replayed_resnet_steps_match_eager_steps():
    torch.manual_seed(0)
    base = models.cifar_resnet18(width=4)
    batches = [models.cifar_batch(4, image_size=8, seed=s) for s in range(6)]
    _compare(base, lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=1e-4),
             models.cifar_loss, batches)


def test_replayed_gpt_steps_with_capturable_adamw_match_eager_steps():
    torch.manual_seed(1)
    base = models.gpt_decoder(vocab=64, context=16, d_model=32, layers=2, heads=2)
    batches = [models.gpt_batch(4, context=16, vocab=64, seed=s) for s in range(6)]
    _compare(base, lambda p: torch.optim.AdamW(p, lr=1e-2, capturable=True), models.gpt_loss, batches)


def test_capture_records_without_running_and_each_replay_runs_once():
    x = torch.randn(1000).to("wgpu")
    start = x.cpu()
    g = nw.WgpuGraph()
    with nw.graph(g):
        x.mul_(2.0).add_(1.0)
    torch.testing.assert_close(x.cpu(), start)  # nothing ran yet
    g.replay()
    torch.testing.assert_close(x.cpu(), start * 2 + 1)
    g.replay()
    torch.testing.assert_close(x.cpu(), (start * 2 + 1) * 2 + 1)


def test_replay_sees_new_data_in_static_inputs():
    w = torch.randn(64, 32)
    x = torch.randn(16, 64)
    dw, dx = w.to("wgpu"), x.to("wgpu")
    g = nw.WgpuGraph()
    with nw.graph(g):
        out = torch.relu(dx @ dw).sum(dim=1)
    for seed in range(3):
        fresh = torch.randn(16, 64, generator=torch.Generator().manual_seed(seed))
        dx.copy_(fresh)
        g.replay()
        torch.testing.assert_close(out.cpu(), torch.relu(fresh @ w).sum(dim=1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("action, message", [
    (lambda x: x.sum().item(), "reading wgpu data"),
    (lambda x: x.add_(torch.randn(x.shape).to("wgpu")), "copying host data"),
])
def test_what_a_graph_cannot_hold_raises_and_ends_the_capture(action, message):
    x = torch.randn(100).to("wgpu")
    g = nw.WgpuGraph()
    with pytest.raises(nw.GraphCaptureError, match=message):
        with nw.graph(g):
            x.mul_(3.0)
            action(x)
    assert runtime().capture is None and not nw.is_current_stream_capturing()
    assert runtime().allocator.capturing is None
    with pytest.raises(nw.GraphCaptureError, match="finished capture"):
        g.replay()
    assert (x + 1).sum().item() == pytest.approx(x.sum().item() + 100, rel=1e-5)  # eager work goes on


def test_captures_do_not_nest():
    g, h = nw.WgpuGraph(), nw.WgpuGraph()
    with nw.graph(g):
        with pytest.raises(nw.GraphCaptureError, match="nest"):
            h.capture_begin()
    g.reset()


def test_memory_the_graph_used_is_not_given_to_later_tensors():
    """A temporary freed inside the capture is written again by every replay: a tensor made after
    the capture must not get its block."""
    x = torch.randn(4096).to("wgpu")
    g = nw.WgpuGraph()
    with nw.graph(g):
        tmp = x * 5.0
        out = tmp + 1.0
        del tmp
    later = [torch.full((4096,), 7.0).to("wgpu") for _ in range(4)]
    g.replay()
    torch.testing.assert_close(out.cpu(), x.cpu() * 5 + 1)
    for t in later:
        assert bool((t.cpu() == 7.0).all())
    pool_blocks = list(g._pool.blocks)
    assert pool_blocks and all(b.pool is g._pool for b in pool_blocks)
    g.reset()
    assert all(b.pool is None for b in pool_blocks)
    del out
    # After reset the idle blocks serve everyone again: the same size class comes from a free list.
    before = runtime().allocator.stats()["free_blocks"]
    y = torch.empty(4096, device="wgpu")
    assert runtime().allocator.stats()["free_blocks"] == before - 1
    del y


def test_profile_reports_gpu_time_per_kernel():
    a, b = torch.randn(128, 96).to("wgpu"), torch.randn(96, 64).to("wgpu")
    (a @ b).relu().sum().item()
    with nw.profile() as table:
        (a @ b).relu().sum()
    assert any(name.startswith("gemm") and "@" in name for name in table)
    assert any(name.startswith("pointwise_relu") for name in table)
    assert all(count >= 1 and seconds > 0 for count, seconds in table.values())


def _mlp_run(graphed, batches):
    torch.manual_seed(3)
    model = models.mlp(in_features=16, hidden=(32,), num_classes=4).to("wgpu")
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    train_step = models.train_step(model, opt, torch.nn.functional.cross_entropy)
    step = nw.graphed(train_step, warmup=2) if graphed else \
        (lambda x, y: train_step(x.to("wgpu"), y.to("wgpu")))
    return [step(x, y).item() for x, y in batches], step


def test_graphed_step_matches_eager_and_runs_short_batches_eagerly():
    batches = [models.mlp_batch(8, in_features=16, num_classes=4, seed=s) for s in range(7)]
    batches.append(models.mlp_batch(5, in_features=16, num_classes=4, seed=99))  # a short last batch
    eager, _ = _mlp_run(False, batches)
    replayed, step = _mlp_run(True, batches)
    assert replayed == pytest.approx(eager, rel=1e-5, abs=1e-6)
    assert step.graph is not None and step.calls == 7 and step.eager_calls == 1


def test_graphed_step_refuses_changed_non_tensor_arguments():
    x = torch.randn(10)
    step = nw.graphed(lambda t, scale: (t.to("wgpu") * scale).sum(), warmup=1)
    step(x, 2.0)
    with pytest.raises(nw.GraphCaptureError, match="non-tensor arguments changed"):
        step(x, 3.0)
    with pytest.raises(ValueError, match="warmup"):
        nw.graphed(lambda t: t, warmup=0)


def test_replayed_dropout_draws_what_eager_steps_draw():
    """Random ops in a graph get fresh counters on every replay: the same numbers as eager steps from
    the same seed, and different masks from one replay to the next."""
    torch.manual_seed(4)
    base = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.ReLU(), torch.nn.Dropout(0.3),
                               torch.nn.Linear(64, 4))
    batches = [models.mlp_batch(8, in_features=16, num_classes=4, seed=s) for s in range(6)]
    make_opt = lambda p: torch.optim.SGD(p, lr=0.1)  # noqa: E731
    nw.manual_seed(123)
    eager_model = copy.deepcopy(base).to("wgpu")
    eager = _train(eager_model, make_opt(eager_model.parameters()), torch.nn.functional.cross_entropy, batches,
                   graphed=False)
    nw.manual_seed(123)
    graph_model = copy.deepcopy(base).to("wgpu")
    replayed = _train(graph_model, make_opt(graph_model.parameters()), torch.nn.functional.cross_entropy,
                      batches, graphed=True)
    assert replayed == pytest.approx(eager, rel=1e-6, abs=1e-7)

    x = torch.ones(4096).to("wgpu")
    g = nw.WgpuGraph()
    with nw.graph(g):
        out = torch.nn.functional.dropout(x, 0.5, training=True)
    masks = []
    for _ in range(3):
        g.replay()
        masks.append(out.cpu() != 0)
        assert 0.4 < masks[-1].float().mean().item() < 0.6
    assert not torch.equal(masks[0], masks[1]) and not torch.equal(masks[1], masks[2])


def test_a_learning_rate_tensor_on_the_device_can_change_between_replays():
    """The supported way to schedule the learning rate of a captured step: keep it in a device tensor
    and change it in place (a Python float would be frozen at capture)."""
    torch.manual_seed(6)
    cpu_params = [torch.randn(s, requires_grad=True) for s in ((7,), (3, 5))]
    dev_params = [p.detach().clone().to("wgpu").requires_grad_() for p in cpu_params]
    grads = [torch.randn(p.shape) for p in cpu_params]
    for p, g in zip(dev_params, grads):
        p.grad = g.to("wgpu")
    lr = torch.tensor(0.01).to("wgpu")
    ocpu = torch.optim.AdamW(cpu_params, lr=0.01)
    odev = torch.optim.AdamW(dev_params, lr=lr, capturable=True)
    for p, g in zip(cpu_params, grads):
        p.grad = g.clone()
    ocpu.step()
    odev.step()
    g = nw.WgpuGraph()
    with nw.graph(g):
        odev.step()
    for i in range(3):
        new_lr = 0.01 * 0.5 ** (i + 1)
        for group in ocpu.param_groups:
            group["lr"] = new_lr
        lr.fill_(new_lr)
        ocpu.step()
        g.replay()
    for p, d in zip(cpu_params, dev_params):
        torch.testing.assert_close(d.detach().cpu(), p.detach(), rtol=1e-5, atol=1e-6)


def test_capturing_a_non_capturable_adam_step_warns():
    p = torch.randn(10).to("wgpu").requires_grad_()
    p.grad = torch.randn(10).to("wgpu")
    opt = torch.optim.Adam([p], lr=1e-3)  # bias corrections computed on the host: frozen by a capture
    opt.step()
    g = nw.WgpuGraph()
    with pytest.warns(UserWarning, match="capturable=True"):
        with nw.graph(g):
            opt.step()
