"""torch.compile(backend="wgpu") (navitrain.wgpu.compile): compiled training against the same steps
run eagerly on wgpu and on the CPU, the short last batch, graph breaks, inference, the replayed path
really being taken, and the eager fallback when a graph cannot be captured."""
import contextlib
import copy

import pytest
import torch
from torch import nn

import navitrain.wgpu as nw
import navitrain.wgpu.compile as wc
from navitrain.bench import models
from navitrain.wgpu.runtime import GraphCaptureError
from navitrain.wgpu.runtime import runtime as nw_runtime
from navitrain.wgpu.tensor import WgpuTensor

pytestmark = pytest.mark.usefixtures("fresh_compile_state")


def small_cnn():
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                         nn.Linear(32, 5))


def _batches(sizes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, 3, 8, 8, generator=g), torch.randint(0, 5, (n,), generator=g)) for n in sizes]


def _run(model, make_opt, loss_fn, batches, device, compile_what=None):
    """Losses of one training step per batch; compile_what: None, "model" or "step"."""
    model = copy.deepcopy(model).to(device)
    opt = make_opt(model.parameters(), device)
    net = torch.compile(model, backend="wgpu") if compile_what == "model" else model
    step = models.train_step(net, opt, loss_fn)
    if compile_what == "step":
        step = torch.compile(step, backend="wgpu")
    return [step(x.to(device), y.to(device)).item() for x, y in batches], model


def _compare(base, make_opt, loss_fn, batches, compile_what):
    cpu_losses, cpu_model = _run(base, make_opt, loss_fn, batches, "cpu")
    eager_losses, eager_model = _run(base, make_opt, loss_fn, batches, "wgpu")
    losses, model = _run(base, make_opt, loss_fn, batches, "wgpu", compile_what)
    # The compiled graphs run the same handlers as eager mode, but a compiled optimizer's arithmetic is
    # ordered differently (and AdamW's division by sqrt(v) + eps magnifies float32 rounding): float32
    # tolerances against eager wgpu and the CPU alike.
    assert losses == pytest.approx(eager_losses, rel=1e-5, abs=1e-6)
    assert losses == pytest.approx(cpu_losses, rel=1e-4, abs=1e-5)
    for (name, a), b, c in zip(model.state_dict().items(), eager_model.state_dict().values(),
                               cpu_model.state_dict().values()):
        torch.testing.assert_close(a.cpu(), b.cpu(), rtol=1e-4, atol=1e-5, msg=lambda m, name=name: f"{name}: {m}")
        torch.testing.assert_close(a.cpu(), c, rtol=1e-4, atol=1e-5, msg=lambda m, name=name: f"{name}: {m}")


def test_compiled_cnn_trains_like_eager_with_sgd_momentum_and_a_short_last_batch():
    torch.manual_seed(0)
    batches = _batches([6] * 9 + [3])  # ten steps, the last one short: a new shape
    _compare(small_cnn(), lambda p, device: torch.optim.SGD(p, lr=0.05, momentum=0.9), nn.functional.cross_entropy,
             batches, "model")
    # The full-size batches were warmed up once, captured once and replayed from then on; the short one
    # ran eagerly (its first call with that shape).
    assert wc.stats["forward_captures"] == 1 and wc.stats["backward_captures"] == 1
    assert wc.stats["forward_replays"] == 8 and wc.stats["backward_replays"] == 8
    assert wc.stats["forward_eager"] == 2 and wc.stats["backward_eager"] == 2


def test_compiled_gpt_training_step_with_adamw_matches_eager():
    torch.manual_seed(1)
    base = models.gpt_decoder(vocab=32, context=8, d_model=16, layers=1, heads=2)
    batches = [models.gpt_batch(3, context=8, vocab=32, seed=s) for s in range(9)]
    batches.append(models.gpt_batch(2, context=8, vocab=32, seed=99))
    # The whole step, optimizer included: dynamo breaks the graph at loss.backward(); the forward,
    # the backward and the AdamW update are each captured and replayed (capturable=True keeps the
    # step count on the device, so the update graph has no CPU tensor to freeze).
    # eps=1e-3: the attention's key bias has no gradient but rounding noise (softmax ignores it), which
    # AdamW's default eps would scale up to full-size steps of random sign on every device differently.
    _compare(base, lambda p, device: torch.optim.AdamW(p, lr=1e-2, eps=1e-3, weight_decay=0.1,
                                                       capturable=device != "cpu"),
             models.gpt_loss, batches, "step")
    assert wc.stats["forward_replays"] >= 7 and wc.stats["backward_replays"] >= 7
    assert wc.stats["inference_replays"] >= 7  # the optimizer step
    assert not [k for k in wc.stats if k.endswith("capture_failures")]


def test_unchanged_adamw_becomes_capturable_when_compiled_and_its_update_is_replayed():
    """A script's plain AdamW (capturable=False): compiling the step makes its param group capturable, as
    dynamo does for CUDA, so the step counts live on the device and the update is one fused, replayed
    graph (run 15: kept on the CPU, a U-Net's AdamW ran 224 dispatches eagerly every step instead of 2).
    Ten steps match the CPU's and eager wgpu's (both with the plain AdamW)."""
    torch.manual_seed(5)
    batches = _batches([6] * 10, seed=6)
    made = []

    def make_opt(p, device):
        made.append(torch.optim.AdamW(p, lr=1e-2, eps=1e-3, weight_decay=0.1))
        return made[-1]

    _compare(small_cnn(), make_opt, nn.functional.cross_entropy, batches, "step")
    compiled_opt = made[-1]
    assert all(g["capturable"] for g in compiled_opt.param_groups)
    assert all(isinstance(st["step"], WgpuTensor) for st in compiled_opt.state.values())
    assert not any(g["capturable"] for g in made[1].param_groups)   # eager wgpu: left as the script made it
    assert wc.stats["inference_replays"] >= 7 and not wc.stats["inference_uncapturable"]
    assert not [k for k in wc.stats if k.endswith("capture_failures")]


def test_an_optimizer_with_state_before_compiling_trains_correctly_and_its_update_is_replayed():
    """State made by an eager step first: its step counts are CPU tensors, which dynamo itself moves to
    the parameters' device when it traces the step (the group is left as the script made it); the
    update is captured and replayed, and the losses match the CPU's."""
    torch.manual_seed(7)
    batches = _batches([6] * 5, seed=8)
    base = small_cnn()
    losses = {}
    for device in ("cpu", "wgpu"):
        model = copy.deepcopy(base).to(device)
        opt = torch.optim.Adam(model.parameters(), lr=1e-2, eps=1e-3)
        step = models.train_step(model, opt, nn.functional.cross_entropy)
        x, y = batches[0]
        losses[device] = [step(x.to(device), y.to(device)).item()]   # eager: the state is made here
        if device == "wgpu":
            assert all(not isinstance(st["step"], WgpuTensor) for st in opt.state.values())
            step = torch.compile(step, backend="wgpu")
        losses[device] += [step(x.to(device), y.to(device)).item() for x, y in batches[1:]]
        if device == "wgpu":
            assert not any(g["capturable"] for g in opt.param_groups)
            assert all(isinstance(st["step"], WgpuTensor) for st in opt.state.values())
    assert losses["wgpu"] == pytest.approx(losses["cpu"], rel=1e-4, abs=1e-5)
    assert wc.stats["inference_replays"] >= 2 and not wc.stats["inference_uncapturable"]


class BreakingNet(nn.Module):
    """A forward that dynamo breaks in the middle: the host read runs eagerly between the pieces."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 8), nn.Linear(8, 3)
        self.seen = None

    def forward(self, x):
        h = torch.relu(self.a(x))
        self.seen = h.detach().cpu()   # a host read
        torch._dynamo.graph_break()
        return self.b(h * 1.5)


def test_graph_break_pieces_run_correctly_and_a_host_read_keeps_its_piece_eager():
    torch.manual_seed(2)
    base = BreakingNet()
    ref, dev = copy.deepcopy(base), copy.deepcopy(base).to("wgpu")
    compiled = torch.compile(dev, backend="wgpu")
    g = torch.Generator().manual_seed(3)
    with pytest.warns(RuntimeWarning, match="could not be captured and runs eagerly.*reading wgpu data"):
        for _ in range(4):
            x = torch.randn(5, 4, generator=g)
            out_ref, out = ref(x), compiled(x.to("wgpu"))
            torch.testing.assert_close(out.cpu(), out_ref, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(dev.seen, ref.seen, rtol=1e-5, atol=1e-6)  # what the host read
            out_ref.square().sum().backward()
            out.square().sum().backward()
    for a, b in zip(ref.parameters(), dev.parameters()):
        torch.testing.assert_close(b.grad.cpu(), a.grad, rtol=1e-4, atol=1e-5)
    # Dynamo traces the .cpu() into the first piece's graph: its capture fails (a read cannot be
    # recorded) and it runs eagerly from then on. The second piece and both backwards are replayed.
    assert wc.stats["forward_capture_failures"] == 1
    assert wc.stats["forward_captures"] == 1 and wc.stats["forward_replays"] == 3
    assert wc.stats["backward_captures"] == 2 and wc.stats["backward_replays"] == 6


def test_compiled_inference_with_special_values_and_held_outputs():
    torch.manual_seed(4)
    ref = small_cnn().eval()
    dev = copy.deepcopy(ref).to("wgpu")
    compiled = torch.compile(dev, backend="wgpu")
    g = torch.Generator().manual_seed(5)
    inputs = [torch.randn(2, 3, 8, 8, generator=g) for _ in range(4)]
    inputs[2][0, 1, 2, 3] = float("nan")
    inputs[3][1, 0, 4, 4] = float("inf")
    inputs[3][1, 2, 0, 0] = float("-inf")
    with torch.no_grad():
        outs = [compiled(x.to("wgpu")) for x in inputs]   # held, while later calls replay the graph
        expected = [ref(x) for x in inputs]
    for out, exp in zip(outs, expected):
        torch.testing.assert_close(out.cpu(), exp, rtol=1e-5, atol=1e-6, equal_nan=True)
    assert torch.isnan(expected[2][0]).any() and torch.isnan(outs[2][0].cpu()).any()
    assert wc.stats["inference_captures"] == 1 and wc.stats["inference_replays"] == 3


@contextlib.contextmanager
def _count_handler_calls():
    calls = []
    original = WgpuTensor.__dict__["__torch_dispatch__"]

    def counting(cls, func, types, args=(), kwargs=None):
        calls.append(func)
        return original.__func__(cls, func, types, args, kwargs)

    WgpuTensor.__torch_dispatch__ = classmethod(counting)
    try:
        yield calls
    finally:
        WgpuTensor.__torch_dispatch__ = original


def test_replayed_calls_run_no_python_per_op():
    torch.manual_seed(6)
    dev = models.gpt_decoder(vocab=32, context=8, d_model=16, layers=2, heads=2).to("wgpu").eval()
    compiled = torch.compile(dev, backend="wgpu")
    x = models.gpt_batch(2, context=8, vocab=32, seed=0)[0].to("wgpu")
    with torch.no_grad():
        with _count_handler_calls() as eager_calls:
            compiled(x)                      # warm-up: every op through its Python handler
        compiled(x)                          # captured
        with _count_handler_calls() as replay_calls:
            out = compiled(x)
        expected = dev(x)
    torch.testing.assert_close(out.cpu(), expected.cpu(), rtol=1e-5, atol=1e-6)
    assert len(eager_calls) > 50
    # A replay: the input copy and the output clone, not the graph's ops.
    assert len(replay_calls) <= 4, replay_calls
    assert wc.stats["inference_replays"] == 2


def test_graph_that_cannot_be_captured_runs_eagerly_with_a_warning(monkeypatch):
    @contextlib.contextmanager
    def failing_capture(g):
        raise GraphCaptureError("simulated: a host read inside the graph")
        yield

    monkeypatch.setattr(wc, "graph", failing_capture)
    torch.manual_seed(7)
    ref = nn.Sequential(nn.Linear(4, 6), nn.GELU(), nn.Linear(6, 2))
    compiled = torch.compile(copy.deepcopy(ref).to("wgpu"), backend="wgpu")
    g = torch.Generator().manual_seed(8)
    with pytest.warns(RuntimeWarning, match="could not be captured and runs eagerly"):
        for _ in range(4):
            x = torch.randn(3, 4, generator=g)
            torch.testing.assert_close(compiled(x.to("wgpu")).cpu(), ref(x), rtol=1e-5, atol=1e-6)
    assert wc.stats["forward_capture_failures"] == 1 and wc.stats["forward_replays"] == 0


def test_replayed_dropout_draws_fresh_masks_and_its_backward_uses_them():
    # Also a backward whose incoming gradient is expanded (that of a sum), not dense like the output.
    torch.manual_seed(9)
    model = nn.Sequential(nn.Linear(8, 64), nn.Dropout(0.5)).to("wgpu")
    compiled = torch.compile(model, backend="wgpu")
    x = torch.randn(4, 8).to("wgpu")
    masks = []
    for _ in range(4):
        model.zero_grad(set_to_none=True)
        y = compiled(x)
        y.sum().backward()
        mask = y.detach().cpu() != 0
        masks.append(mask)
        assert 0.3 < mask.float().mean().item() < 0.7
        # d(sum)/d(bias) through dropout: the kept elements, scaled by 1 / (1 - p), summed over the batch
        torch.testing.assert_close(model[0].bias.grad.cpu(), mask.float().sum(0) * 2.0)
    assert all(not torch.equal(a, b) for a, b in zip(masks, masks[1:]))
    assert wc.stats["forward_replays"] == 3 and wc.stats["backward_replays"] == 3


def test_backend_is_declared_as_a_dynamo_entry_point():
    # How torch.compile finds backend="wgpu" without `import navitrain.wgpu.compile` (once installed).
    import importlib
    import pathlib

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    project = tomllib.loads((pathlib.Path(__file__).parents[2] / "pyproject.toml").read_text())["project"]
    target = project["entry-points"]["torch_dynamo_backends"]["wgpu"]
    module, _, name = target.partition(":")
    assert getattr(importlib.import_module(module), name) is wc.backend
    assert torch._dynamo.lookup_backend("wgpu") is wc.backend


def test_compiled_model_inside_a_graphed_step_is_recorded_into_that_graph():
    torch.manual_seed(10)
    ref = nn.Linear(4, 3)
    dev = copy.deepcopy(ref).to("wgpu")
    compiled = torch.compile(dev, backend="wgpu")
    step = nw.graphed(lambda x: compiled(x).sum(), warmup=2)
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for _ in range(5):
            x = torch.randn(5, 4, generator=g)
            assert step(x).item() == pytest.approx(ref(x).sum().item(), rel=1e-5, abs=1e-6)
    assert step.graph is not None and step.graph.dispatch_count > 0   # calls 3..5: the graphed step's replays


def test_compiled_small_resnet_with_fused_pointwise_chains_trains_like_eager():
    # Residual add + ReLU fused in the forward, ReLU's backward chains in the backward (fusion.py).
    torch.manual_seed(12)
    base = models.cifar_resnet18(num_classes=5, width=4, blocks=(1, 1))
    _compare(base, lambda p, device: torch.optim.SGD(p, lr=0.05, momentum=0.9), nn.functional.cross_entropy,
             _batches([4] * 3), "model")
    assert wc.stats["fused_groups"] >= 3 and wc.stats["fused_dispatches_saved"] >= 3
    assert wc.stats["forward_replays"] == 2 and wc.stats["backward_replays"] == 2  # captured, replayed


# -- outputs lent by replays, not cloned (navitrain.wgpu.borrowed, issue 19) --------------------------------
def test_losses_kept_from_every_step_stay_as_computed_and_match_eager():
    # Ten steps, the last one short (a new signature); the caller keeps each step's loss tensor and reads
    # them all at the end, after later replays overwrote the graph's memory.
    torch.manual_seed(13)
    base = small_cnn()
    batches = _batches([6] * 9 + [3], seed=14)

    def run(compiled):
        model = copy.deepcopy(base).to("wgpu")
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        step = models.train_step(model, opt, nn.functional.cross_entropy)
        if compiled:
            step = torch.compile(step, backend="wgpu")   # the loss is a forward graph's output
        losses = [step(x.to("wgpu"), y.to("wgpu")) for x, y in batches]
        return [loss.item() for loss in losses], model

    eager_losses, eager_model = run(False)
    losses, model = run(True)
    assert losses == pytest.approx(eager_losses, rel=1e-5, abs=1e-6)
    assert len(set(losses)) == len(losses)
    for a, b in zip(model.parameters(), eager_model.parameters()):
        torch.testing.assert_close(a.cpu(), b.cpu(), rtol=1e-4, atol=1e-5)
    assert wc.stats["forward_replays"] == 8 and wc.stats["backward_replays"] == 8
    # Each held loss got a copy of its own at the next replay of its signature (7 of the 8; the short
    # batch has a capture of its own); nothing else the graphs lent was alive then: the backward had
    # consumed the activations, the optimizer the gradients.
    assert wc.stats["borrowed_copies"] == 7


def test_backward_reads_the_forwards_outputs_in_place_and_replays_copy_no_outputs(monkeypatch):
    torch.manual_seed(15)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 16), nn.GELU(), nn.Linear(16, 2)).to("wgpu")
    compiled = torch.compile(model, backend="wgpu")
    replayed = []
    original_replay = nw.WgpuGraph.replay

    def counting_replay(graph):
        replayed.append(graph.dispatch_count)
        return original_replay(graph)

    monkeypatch.setattr(nw.WgpuGraph, "replay", counting_replay)
    g = torch.Generator().manual_seed(16)
    runtime = nw_runtime()
    for i in range(5):
        x = torch.randn(4, 8, generator=g).to("wgpu")
        model.zero_grad(set_to_none=True)   # the gradients are then the backward's borrowed outputs
        nw.synchronize()
        if i == 4:
            wc.stats["input_copies"] = 0
            replayed.clear()
            before = runtime.dispatch_count
        compiled(x).square().sum().backward()
    nw.synchronize()
    # Step 5: the forward copies x into its static input, the backward its incoming gradient (an eager
    # tensor); the saved activations are read where the forward left them, and no output is copied.
    assert wc.stats["input_copies"] == 2 and len(replayed) == 2
    eager = runtime.dispatch_count - before - sum(replayed) - 2
    assert eager <= 6, eager   # square, sum, the ones of the gradient, its expansion, the square's backward


def test_held_views_and_in_place_changes_of_outputs_survive_later_replays():
    torch.manual_seed(17)
    ref = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 4))
    compiled = torch.compile(copy.deepcopy(ref).to("wgpu"), backend="wgpu")
    g = torch.Generator().manual_seed(18)
    xs = [torch.randn(5, 6, generator=g) for _ in range(5)]
    xs[3][2, 1] = float("nan")
    xs[4][0, 0] = float("inf")
    held = []
    with torch.no_grad():
        for i, x in enumerate(xs):
            out = compiled(x.to("wgpu"))
            view = out[1:, ::2]            # a view the caller made: shares the borrowed storage
            pair = torch.view_as_complex(out.view(5, 2, 2))   # another dtype over the same memory
            if i % 2:
                out.mul_(-3.0)             # changed in place before the next replay
            held.append((out, view, pair))
    for i, (x, (out, view, pair)) in enumerate(zip(xs, held)):
        expected = ref(x).detach() * (-3.0 if i % 2 else 1.0)
        torch.testing.assert_close(out.cpu(), expected, rtol=1e-5, atol=1e-6, equal_nan=True)
        torch.testing.assert_close(view.cpu(), expected[1:, ::2], rtol=1e-5, atol=1e-6, equal_nan=True)
        torch.testing.assert_close(pair.cpu(), torch.view_as_complex(expected.view(5, 2, 2).contiguous()),
                                   rtol=1e-5, atol=1e-6, equal_nan=True)
    # Calls 2..5 replay; before each of the last three, the previous call's output got a copy of its own.
    assert wc.stats["inference_replays"] == 4 and wc.stats["borrowed_copies"] == 3


def test_outputs_that_alias_inputs_and_mutated_inputs_stay_correct():
    def f(x, w, buf):
        # Mutated inputs: the inference graph writes them itself (keep_inference_input_mutations): `buf`
        # in place (the same tensor every call), `x` (a new tensor every call) through the graph's static
        # copy of it, copied back after each replay.
        buf.add_(x.sum(0))
        x.mul_(2.0)
        return x[1:], w.t(), x * w[0], buf.view(2, 2)

    g = torch.Generator().manual_seed(19)
    w = torch.randn(3, 4, generator=g)
    buf = torch.randn(4, generator=g)
    dw, dbuf = w.to("wgpu"), buf.to("wgpu")
    compiled = torch.compile(f, backend="wgpu")
    held = []
    with torch.no_grad():
        for _ in range(5):
            x = torch.randn(3, 4, generator=g)
            dx = x.to("wgpu")
            expected = [t.clone() for t in f(x, w, buf)]
            outs = compiled(dx, dw, dbuf)
            torch.testing.assert_close(dx.cpu(), x)
            for out, exp in zip(outs, expected):
                torch.testing.assert_close(out.cpu(), exp, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(dbuf.cpu(), buf, rtol=1e-5, atol=1e-6)
            # Views of the inputs alias them, as in eager mode.
            outs[0].add_(1.0)
            torch.testing.assert_close(dx[1:].cpu(), x[1:] + 1.0)
            held.append((outs[2], x * w[0]))
    for out, exp in held:
        torch.testing.assert_close(out.cpu(), exp, rtol=1e-5, atol=1e-6)
    assert wc.stats["inference_replays"] >= 3


def test_two_forwards_before_one_backward_train_like_eager():
    # The first forward's activations are still held (by autograd) when the second replay writes the
    # forward's memory: they get copies of their own; the backward of the first then copies them in.
    torch.manual_seed(20)
    base = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3))
    g = torch.Generator().manual_seed(21)
    data = [(torch.randn(4, 5, generator=g), torch.randn(4, 5, generator=g)) for _ in range(5)]

    def run(compiled):
        model = copy.deepcopy(base).to("wgpu")
        net = torch.compile(model, backend="wgpu") if compiled else model
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        losses = []
        for a, b in data:
            opt.zero_grad(set_to_none=True)
            loss = net(a.to("wgpu")).square().mean() + 0.5 * net(b.to("wgpu")).abs().mean()
            loss.backward()
            opt.step()
            losses.append(loss)
        return [loss.item() for loss in losses], model

    eager_losses, eager_model = run(False)
    losses, model = run(True)
    assert losses == pytest.approx(eager_losses, rel=1e-5, abs=1e-6)
    for a, b in zip(model.parameters(), eager_model.parameters()):
        torch.testing.assert_close(a.cpu(), b.cpu(), rtol=1e-5, atol=1e-6)
    assert wc.stats["forward_replays"] >= 6 and wc.stats["backward_replays"] >= 6


def test_an_output_fed_back_into_its_own_graph_keeps_each_steps_value():
    # h = cell(h): each call's input is the last replay's borrowed output, which the replay about to run
    # overwrites: it gets a copy of its own first, then is copied into the static input.
    torch.manual_seed(22)
    cell = nn.Sequential(nn.Linear(6, 6), nn.Tanh())
    compiled = torch.compile(copy.deepcopy(cell).to("wgpu"), backend="wgpu")
    h_ref = torch.randn(3, 6)
    h = h_ref.to("wgpu")
    history = []
    with torch.no_grad():
        for _ in range(6):
            h_ref, h = cell(h_ref), compiled(h)
            history.append((h, h_ref))
    for got, expected in history:
        torch.testing.assert_close(got.cpu(), expected, rtol=1e-5, atol=1e-6)
    assert wc.stats["inference_replays"] == 5


def test_a_parameter_whose_data_is_replaced_is_read_and_updated_where_it_now_is():
    # `param.data = ...` keeps the Python object and moves its memory. The captured graphs are bound to the
    # old memory, so a replay must see the move (comparing the objects would not) and capture again: else the
    # forward reads the old values and the optimizer writes memory the parameter no longer owns.
    torch.manual_seed(23)
    base = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 2))
    g = torch.Generator().manual_seed(24)
    data = [(torch.randn(3, 5, generator=g), torch.randn(3, 2, generator=g)) for _ in range(8)]
    new_weight = torch.randn(4, 5, generator=g)

    def run(device, compiled):
        model = copy.deepcopy(base).to(device)
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        step = models.train_step(model, opt, nn.functional.mse_loss)
        step = torch.compile(step, backend="wgpu") if compiled else step
        losses = []
        for i, (x, y) in enumerate(data):
            if i == 5:   # after the graphs were captured and replayed
                model[0].weight.data = new_weight.clone().to(device)   # (the CPU run updates it in place)
            losses.append(step(x.to(device), y.to(device)).item())
        return losses, model

    cpu_losses, cpu_model = run("cpu", False)
    losses, model = run("wgpu", True)
    assert losses == pytest.approx(cpu_losses, rel=1e-5, abs=1e-6)
    for a, b in zip(model.parameters(), cpu_model.parameters()):
        torch.testing.assert_close(a.cpu(), b, rtol=1e-5, atol=1e-6)
    assert wc.stats["forward_replays"] >= 3 and wc.stats["forward_captures"] >= 2


def test_a_step_that_moves_its_cpu_batch_to_the_device_itself_is_replayed():
    """The habit `def step(x, y): x, y = x.to(device), y.to(device)` under torch.compile: the CPU batch
    becomes a graph input that the graph copies to the device. A capture would freeze a CPU tensor's values,
    so such graphs ran eagerly every step (silently slow); the batch is now uploaded before the graph runs,
    and the graph is captured and replayed like any other. Ten steps with fresh batches match the CPU's."""
    torch.manual_seed(7)
    batches = _batches([6] * 10, seed=8)
    base = small_cnn()
    results = {}
    for device in ("cpu", "wgpu"):
        model = copy.deepcopy(base).to(device)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

        def step(x, y, model=model, opt=opt, device=device):
            opt.zero_grad()
            out = model(x.to(device))   # the batch arrives on the CPU, as from a DataLoader
            loss = nn.functional.cross_entropy(out, y.to(out.device))
            loss.backward()
            opt.step()
            return loss

        if device == "wgpu":
            step = torch.compile(step, backend="wgpu")
        results[device] = ([step(x, y).item() for x, y in batches], model)
    (cpu_losses, cpu_model), (losses, model) = results["cpu"], results["wgpu"]
    assert losses == pytest.approx(cpu_losses, rel=1e-4, abs=1e-5)
    for (name, a), b in zip(model.state_dict().items(), cpu_model.state_dict().values()):
        torch.testing.assert_close(a.cpu(), b, rtol=1e-4, atol=1e-5, msg=lambda m, name=name: f"{name}: {m}")
    assert wc.stats["forward_replays"] >= 8 and wc.stats["backward_replays"] >= 8
    assert not [k for k in wc.stats if k.endswith("uncapturable")]


def test_a_tensor_made_from_data_on_the_device_inside_a_compiled_function_is_traced():
    """torch.tensor(data, device=...) inside the compiled code (Hugging Face's KV cache starts as
    torch.tensor([]) on the input's device, then grows by cat): tracing failed with "found at least two
    devices, wgpu:0 and wgpu:0", a real tensor among the fakes. Values against the CPU, replays included."""
    def f(x):
        cache = torch.tensor([], dtype=x.dtype, device=x.device)
        scale = torch.tensor([0.5, -2.0, float("inf")], device=x.device)
        return torch.cat([cache, x.flatten()], dim=-1), x[:, :3] * scale

    compiled = torch.compile(f, backend="wgpu")
    for seed in range(4):
        x = torch.randn(4, 5, generator=torch.Generator().manual_seed(seed))
        x[0, 1] = float("nan")
        for got, want in zip(compiled(x.to("wgpu")), f(x)):
            torch.testing.assert_close(got.cpu(), want, equal_nan=True)
    # The constants reach the device once (a captured graph cannot upload): captured and replayed.
    assert wc.stats["inference_replays"] >= 2 and wc.stats["constants_folded"] >= 1
    assert not [k for k in wc.stats if k.endswith("capture_failures")]


def test_torch_compile_with_no_backend_named_uses_the_wgpu_backend(monkeypatch):
    """A script's unchanged `model = torch.compile(model)` (Inductor, PyTorch's default, which has no code
    generation for this device, failed with "expected FakeTensor for arg"): its graphs go to backend="wgpu"
    with a one-time warning, and train like the CPU; a CPU model still gets Inductor's wrapper untouched."""
    from navitrain.wgpu import compile_default

    monkeypatch.setattr(compile_default, "_said", False)
    torch.manual_seed(11)
    batches = _batches([6] * 6, seed=12)
    base = small_cnn()
    cpu_losses, cpu_model = _run(base, lambda p, d: torch.optim.SGD(p, lr=0.05, momentum=0.9),
                                 nn.functional.cross_entropy, batches, "cpu")
    model = copy.deepcopy(base).to("wgpu")
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    step = models.train_step(torch.compile(model), opt, nn.functional.cross_entropy)
    with pytest.warns(UserWarning, match='uses backend="wgpu" instead'):
        losses = [step(x.to("wgpu"), y.to("wgpu")).item() for x, y in batches]
    assert losses == pytest.approx(cpu_losses, rel=1e-4, abs=1e-5)
    for (name, a), b in zip(model.state_dict().items(), cpu_model.state_dict().values()):
        torch.testing.assert_close(a.cpu(), b, rtol=1e-4, atol=1e-5, msg=lambda m, name=name: f"{name}: {m}")
    assert wc.stats["forward_replays"] >= 4 and wc.stats["backward_replays"] >= 4
    assert compile_default._holds_wgpu(None, [torch.ones(2).to("wgpu")])
    assert not compile_default._holds_wgpu(torch.fx.symbolic_trace(nn.Linear(2, 2)), [torch.ones(2)])


def test_a_view_reaching_the_code_after_a_graph_break_is_traced():
    """Code resumed after a graph break that takes a view of a wgpu tensor (`h = x[:, None]`, then a break, as
    wav2vec2's feature encoder under gradient checkpointing): fakeifying the view failed in PyTorch's
    meta_utils ("'FakeTensor' object has no attribute '__tensor_flatten__'"). Values and gradients vs the CPU."""
    torch.manual_seed(13)

    def f(x, layer):
        h = x[:, None]
        torch._dynamo.graph_break()
        return layer(h).tanh().sum()

    _compiled_with_backward_matches_cpu(f, nn.Conv1d(1, 4, 3), (2, 16), calls=3, atol=1e-5)


def _compiled_with_backward_matches_cpu(fn, layer, shape, calls, atol):
    """fn(x, layer) -> a scalar, compiled on wgpu against the CPU: the value and its backward on each call with a
    fresh x, then the layer's accumulated weight gradient."""
    wlayer = copy.deepcopy(layer).to("wgpu")
    compiled = torch.compile(fn, backend="wgpu")
    for seed in range(calls):
        x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
        want = fn(x, layer)
        want.backward()
        got = compiled(x.to("wgpu"), wlayer)
        got.backward()
        torch.testing.assert_close(got.cpu(), want, rtol=1e-5, atol=atol)
    torch.testing.assert_close(wlayer.weight.grad.cpu(), layer.weight.grad, rtol=1e-5, atol=atol)


def test_a_cpu_constant_moved_to_the_device_in_traced_code_is_traced_and_replayed():
    """`torch.tensor(3).to(x.device)` in the compiled code (Mistral's sliding window): the fake tensor mode folds
    an op on constants by running it and asserted on the wgpu result ("fake_tensor must be a FakeTensor with a
    constant"). Values against the CPU over replays, NaN included; no capture failure."""
    def f(x):
        n = torch.tensor(3)
        return x * n.to(x.device) + torch.tensor(0.5).to(x.device)

    compiled = torch.compile(f, backend="wgpu")
    for seed in range(4):
        x = torch.randn(6, generator=torch.Generator().manual_seed(seed))
        x[2] = float("nan")
        torch.testing.assert_close(compiled(x.to("wgpu")).cpu(), f(x), equal_nan=True)
    assert wc.stats["inference_replays"] >= 2
    assert not [k for k in wc.stats if k.endswith(("capture_failures", "uncapturable"))]


def test_graphs_taking_cpu_scalars_replay_with_each_calls_value():
    """A 0-d CPU tensor that a graph takes: DeBERTa's attention scale (computed on the CPU and saved for the
    backward), a compiled optimizer's tensor learning rate changed by a scheduler (PyTorch's advice for compiled
    optimizers). Ops read a CPU scalar on the host, so such graphs ran eagerly every step. The scalar is now
    uploaded before the graph runs: the graph is captured once and every replay reads that call's value."""
    torch.manual_seed(17)

    def attention(x, layer):
        scale = torch.sqrt(torch.tensor(x.size(-1), dtype=torch.float) * 2.0)   # a CPU scalar
        return (layer(x) / scale).softmax(-1)[:, 0].sum()

    _compiled_with_backward_matches_cpu(attention, nn.Linear(6, 6), (3, 6), calls=5, atol=1e-6)
    assert wc.stats["backward_replays"] >= 2 and not wc.stats["backward_uncapturable"]

    wc.reset_stats()
    scaled = torch.compile(lambda x, s: (x * s).sum(), backend="wgpu")
    x = torch.randn(8, generator=torch.Generator().manual_seed(9))
    values = (2.0, 2.0, -3.5, 7.25, float("nan"), 0.0, -0.0, float("inf"), 1e-30)
    for value in values:
        got = scaled(x.to("wgpu"), torch.tensor(value)).cpu()
        torch.testing.assert_close(got, (x * value).sum(), equal_nan=True)
    assert wc.stats["inference_replays"] == len(values) - 1 and not wc.stats["inference_uncapturable"]

    # A compiled optimizer step with a tensor learning rate that a scheduler changes every step.
    results = {}
    for device in ("cpu", "wgpu"):
        torch.manual_seed(18)
        model = nn.Linear(5, 3).to(device)
        opt = torch.optim.Adam(model.parameters(), lr=torch.tensor(0.05), weight_decay=0.01)
        sched = torch.optim.lr_scheduler.LinearLR(opt, total_iters=5)
        step = torch.compile(opt.step, backend="wgpu") if device == "wgpu" else opt.step
        g = torch.Generator().manual_seed(19)
        for _ in range(6):
            model(torch.randn(4, 5, generator=g).to(device)).square().mean().backward()
            step()
            opt.zero_grad()
            sched.step()
        results[device] = model
    for a, b in zip(results["wgpu"].parameters(), results["cpu"].parameters()):
        # (float32 tolerances as _compare's: a compiled Adam orders its arithmetic differently)
        torch.testing.assert_close(a.cpu(), b, rtol=1e-4, atol=1e-5)
    assert wc.stats["inference_replays"] >= len(values) - 1 + 4


def test_a_cpu_scalar_the_graph_returns_is_captured_per_value():
    """(The rarer case: a graph returning its CPU scalar input keeps it on the CPU, so it is not uploaded; a
    capture then holds for the value it was made with, and a new value runs eagerly first.)"""
    graph = torch.fx.Graph()
    x, s = graph.placeholder("x"), graph.placeholder("s")
    x.meta["val"], s.meta["val"] = torch.empty(4, device="meta"), torch.tensor(0.0)
    graph.output((graph.call_function(torch.ops.aten.mul.Tensor, (x, s)), s))
    module = wc.CapturedGraphModule(torch.fx.GraphModule(torch.nn.Module(), graph), "inference")
    assert module.host_scalars == (1,) and not module.scalar_uploads
    data = torch.randn(4, generator=torch.Generator().manual_seed(20))
    for value in (3.0, 3.0, 3.0, -1.5, -1.5, -1.5, 3.0):
        product, same = module([data.to("wgpu"), torch.tensor(value)])
        torch.testing.assert_close(product.cpu(), data * value)
        assert same.device.type == "cpu" and same.item() == value
    assert wc.stats["inference_replays"] == 5 and wc.stats["inference_captures"] == 2
