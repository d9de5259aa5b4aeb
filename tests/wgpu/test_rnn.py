"""LSTM and GRU on the wgpu device (ops/rnn.py) against the CPU, in strict mode (zero CPU fallbacks):
the fused cell ops directly (NaN/inf, half dtypes), LSTMCell/GRUCell, nn.LSTM/nn.GRU in the layouts
PyTorch offers (layers, directions, batch_first, proj_size, no bias, packed sequences, dropout), and
short language-model training runs."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import navitrain.wgpu as nw

DEV = "wgpu"
TOL = dict(rtol=1e-4, atol=1e-5)
aten = torch.ops.aten


def _dev(t):
    return t.detach().to(DEV).requires_grad_(t.requires_grad)


def _close(dev, cpu, what, **tol):
    torch.testing.assert_close(dev.detach().cpu(), cpu.detach(), equal_nan=True, **(tol or TOL),
                               msg=lambda m: f"{what}: {m}")


# -- the fused cell ops, against the formulas they implement ------------------------------------------
def _lstm_reference(ig, hg, cx, bi, bh):
    gates = ig + hg + (0 if bi is None else bi) + (0 if bh is None else bh)
    i, f, g, o = gates.chunk(4, 1)
    cy = f.sigmoid() * cx + i.sigmoid() * g.tanh()
    return o.sigmoid() * cy.tanh(), cy


def _gru_reference(ig, hg, hx, bi, bh):
    xr, xz, xn = (ig + (0 if bi is None else bi)).chunk(3, 1)
    hr, hz, hn = (hg + (0 if bh is None else bh)).chunk(3, 1)
    r, z = (xr + hr).sigmoid(), (xz + hz).sigmoid()
    n = (xn + r * hn).tanh()
    return n + z * (hx - n)


def _special(t):
    """Put NaN, +inf, -inf and large values into `t` (a few entries each)."""
    flat = t.view(-1)
    flat[0], flat[1], flat[2], flat[3], flat[4] = float("nan"), float("inf"), -float("inf"), 80.0, -80.0
    return t


@pytest.mark.parametrize("bias", [True, False])
def test_fused_cells_forward_with_nan_and_inf(bias):
    torch.manual_seed(0)
    B, H = 3, 5
    for k, op, ref in [(4, aten._thnn_fused_lstm_cell.default, _lstm_reference),
                       (3, aten._thnn_fused_gru_cell.default, _gru_reference)]:
        ig, hg = _special(torch.randn(B, k * H) * 3), torch.randn(B, k * H) * 3
        state = torch.randn(B, H)
        bi, bh = (torch.randn(k * H), torch.randn(k * H)) if bias else (None, None)
        outs = op(*(None if t is None else t.to(DEV) for t in (ig, hg, state, bi, bh)))
        expected = ref(ig, hg, state, bi, bh)
        if k == 4:
            _close(outs[0], expected[0], "lstm hy")
            _close(outs[1], expected[1], "lstm cy")
        else:
            _close(outs[0], expected, "gru hy")
        assert outs[0].cpu().isnan().any(), "a NaN gate must give a NaN output"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_fused_cells_in_half_dtypes_compute_in_float32(dtype):
    torch.manual_seed(1)
    B, H = 4, 8
    ig, hg, cx = torch.randn(B, 4 * H).to(dtype), torch.randn(B, 4 * H).to(dtype), torch.randn(B, H).to(dtype)
    hy, cy, _ = aten._thnn_fused_lstm_cell.default(ig.to(DEV), hg.to(DEV), cx.to(DEV))
    assert hy.dtype == dtype and cy.dtype == dtype
    ref_h, ref_c = _lstm_reference(ig.float(), hg.float(), cx.float(), None, None)
    _close(hy.float(), ref_h.to(dtype).float(), "hy", rtol=1e-2, atol=1e-2)
    _close(cy.float(), ref_c.to(dtype).float(), "cy", rtol=1e-2, atol=1e-2)
    hy, _ = aten._thnn_fused_gru_cell.default(ig[:, :3 * H].to(DEV), hg[:, :3 * H].to(DEV), cx.to(DEV))
    ref = _gru_reference(ig[:, :3 * H].float(), hg[:, :3 * H].float(), cx.float(), None, None)
    _close(hy.float(), ref.to(dtype).float(), "gru hy", rtol=1e-2, atol=1e-2)


# -- cells and modules, forward and backward ------------------------------------------------------
def _check_module(cpu_mod, inputs, grad_of=None):
    """Run `cpu_mod` on the CPU and a copy on wgpu; compare outputs and the gradients of every input
    and parameter (backward from random output gradients)."""
    dev_mod = copy.deepcopy(cpu_mod).to(DEV)
    # Fresh leaves on both sides, so gradients of an earlier call on the same inputs don't add up.
    inputs = torch.utils._pytree.tree_map(lambda t: t.detach().clone().requires_grad_(t.requires_grad), inputs)
    dev_inputs = torch.utils._pytree.tree_map(_dev, inputs)
    cpu_out, dev_out = cpu_mod(*inputs), dev_mod(*dev_inputs)
    cpu_flat = [t for t in torch.utils._pytree.tree_leaves(cpu_out)]
    dev_flat = [t for t in torch.utils._pytree.tree_leaves(dev_out)]
    for i, (d, c) in enumerate(zip(dev_flat, cpu_flat)):
        _close(d, c, f"output {i}")
    grads = [torch.randn_like(c) for c in cpu_flat]
    torch.autograd.backward(cpu_flat, grads)
    torch.autograd.backward(dev_flat, [g.to(DEV) for g in grads])
    leaves_cpu = [t for t in torch.utils._pytree.tree_leaves(inputs) if t.requires_grad]
    leaves_dev = [t for t in torch.utils._pytree.tree_leaves(dev_inputs) if t.requires_grad]
    for i, (d, c) in enumerate(zip(leaves_dev, leaves_cpu)):
        _close(d.grad, c.grad, f"grad of input {i}")
    for (name, c), d in zip(cpu_mod.named_parameters(), dev_mod.parameters()):
        _close(d.grad, c.grad, f"grad of {name}")
    return dev_out


@pytest.mark.parametrize("bias", [True, False])
def test_lstm_and_gru_cells(bias):
    torch.manual_seed(2)
    x = torch.randn(4, 6, requires_grad=True)
    h, c = torch.randn(4, 7, requires_grad=True), torch.randn(4, 7, requires_grad=True)
    _check_module(nn.LSTMCell(6, 7, bias=bias), [x, (h, c)])
    _check_module(nn.GRUCell(6, 7, bias=bias), [x, h])
    nw.reset_fallback_counts()


MODULES = [  # (class, kwargs)
    (nn.LSTM, dict(num_layers=1)),
    (nn.LSTM, dict(num_layers=2, bidirectional=True, batch_first=True)),
    (nn.LSTM, dict(num_layers=2, proj_size=3)),
    (nn.LSTM, dict(num_layers=1, bidirectional=True, proj_size=4, bias=False)),
    (nn.GRU, dict(num_layers=2, bidirectional=True)),
    (nn.GRU, dict(num_layers=1, batch_first=True, bias=False)),
]


@pytest.mark.parametrize("cls,kwargs", MODULES, ids=lambda v: v.__name__ if isinstance(v, type) else
                         "-".join(f"{k}={w}" for k, w in v.items()))
def test_lstm_gru_modules_with_initial_state(cls, kwargs):
    torch.manual_seed(3)
    mod = cls(5, 6, **kwargs)
    T, B = 4, 3
    dirs = 2 if mod.bidirectional else 1
    x = torch.randn(B, T, 5) if mod.batch_first else torch.randn(T, B, 5)
    x.requires_grad_()
    h_size = getattr(mod, "proj_size", 0) or 6
    h0 = torch.randn(mod.num_layers * dirs, B, h_size, requires_grad=True)
    state = (h0, torch.randn(mod.num_layers * dirs, B, 6, requires_grad=True)) if cls is nn.LSTM else h0
    _check_module(mod, [x, state])


PACKED = [  # (class, kwargs, with initial state)
    (nn.LSTM, dict(num_layers=2, bidirectional=True), False),
    (nn.GRU, dict(num_layers=2, bidirectional=True), False),
    (nn.LSTM, dict(num_layers=1, bidirectional=True, proj_size=3, batch_first=True), True),
    (nn.GRU, dict(num_layers=2, bias=False, batch_first=True), True),
]


@pytest.mark.parametrize("cls,kwargs,with_state", PACKED, ids=lambda v: v.__name__ if isinstance(v, type) else
                         "-".join(f"{k}={w}" for k, w in v.items()) if isinstance(v, dict) else f"state={v}")
def test_packed_sequences_with_unsorted_lengths(cls, kwargs, with_state):
    torch.manual_seed(4)
    mod = cls(5, 6, **kwargs)
    lengths = torch.tensor([3, 5, 1, 4])
    T = 6  # one step longer than the longest sequence: the padded input's extra step gets a zero gradient
    x = torch.randn(4, T, 5) if mod.batch_first else torch.randn(T, 4, 5)
    dirs = 2 if mod.bidirectional else 1
    h_size = getattr(mod, "proj_size", 0) or 6
    h0 = torch.randn(mod.num_layers * dirs, 4, h_size)
    c0 = torch.randn(mod.num_layers * dirs, 4, 6)

    def run(m, inp, *state):
        packed = pack_padded_sequence(inp, lengths, batch_first=m.batch_first, enforce_sorted=False)
        if state:
            state = state if cls is nn.LSTM else state[:1]
            out, final = m(packed, state if cls is nn.LSTM else state[0])
        else:
            out, final = m(packed)
        padded, out_lengths = pad_packed_sequence(out, batch_first=m.batch_first)
        assert out_lengths.tolist() == lengths.tolist()
        return [padded] + list(torch.utils._pytree.tree_leaves(final))

    leaves = [x] + ([h0, c0] if with_state else [])
    cpu_leaves = [t.clone().requires_grad_() for t in leaves]
    dev_leaves = [t.to(DEV).requires_grad_() for t in leaves]
    dev_mod = copy.deepcopy(mod).to(DEV)
    cpu_flat, dev_flat = run(mod, *cpu_leaves), run(dev_mod, *dev_leaves)
    for i, (d, c) in enumerate(zip(dev_flat, cpu_flat)):
        _close(d, c, f"output {i}")
    grads = [torch.randn_like(c) for c in cpu_flat]
    torch.autograd.backward(cpu_flat, grads)
    torch.autograd.backward(dev_flat, [g.to(DEV) for g in grads])
    for i, (d, c) in enumerate(zip(dev_leaves, cpu_leaves)):
        if i < 2 or cls is nn.LSTM:
            _close(d.grad, c.grad, f"grad of input {i}")
    for (name, c), d in zip(mod.named_parameters(), dev_mod.parameters()):
        _close(d.grad, c.grad, f"grad of {name}")


@pytest.mark.parametrize("cls", [nn.LSTM, nn.GRU])
def test_dropout_between_layers(cls):
    torch.manual_seed(5)
    p = 0.5
    mod = cls(5, 6, num_layers=2, dropout=p)
    x = torch.randn(4, 3, 5)
    dev_mod = copy.deepcopy(mod).to(DEV)
    # Eval mode: no dropout, exactly the CPU's result.
    _close(dev_mod.eval()(x.to(DEV))[0], mod.eval()(x)[0], "eval output")
    # Train mode: the same as running layer 1, dropping out its output with the same RNG state, and
    # running layer 2 on that (the mask is the device's; nothing else may differ).
    dev_mod.train()
    layer1, layer2 = (cls(5 if i == 0 else 6, 6).to(DEV) for i in range(2))
    for i, layer in enumerate((layer1, layer2)):
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(layer, f"{name}_l0").data.copy_(getattr(dev_mod, f"{name}_l{i}").data)
    torch.manual_seed(6)
    out = dev_mod(x.to(DEV))[0]
    torch.manual_seed(6)
    hidden = layer1(x.to(DEV))[0]
    dropped = F.dropout(hidden, p, training=True)
    _close(out, layer2(dropped)[0].cpu(), "train output vs layer-by-layer")
    kept = dropped.cpu() != 0
    assert 0 < kept.float().mean() < 1, "dropout must drop some and keep some"
    _close(dropped.cpu()[kept], hidden.cpu()[kept] / (1 - p), "kept values are scaled")
    assert nw.fallback_report()["total_fallback_calls"] == 0


def test_nan_in_input_propagates_through_time_only_in_its_row():
    torch.manual_seed(7)
    for cls in (nn.LSTM, nn.GRU):
        mod = cls(4, 5)
        x = torch.randn(6, 3, 4)
        x[2, 1, 0] = float("nan")
        out = copy.deepcopy(mod).to(DEV)(x.to(DEV))[0].cpu()
        _close(out, mod(x)[0].detach(), f"{cls.__name__} output")
        assert out[2:, 1].isnan().all() and not out[:2].isnan().any() and not out[:, [0, 2]].isnan().any()


# -- training -------------------------------------------------------------------------------------
class _PackedLM(nn.Module):
    """A word-level language model over padded, variable-length sequences (packed for the RNN)."""

    def __init__(self, cls, vocab=20, dim=8, hidden=12, dropout=0.0):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.rnn = cls(dim, hidden, num_layers=2, bidirectional=True, dropout=dropout)
        self.head = nn.Linear(2 * hidden, vocab)

    def forward(self, tokens, lengths):
        packed = pack_padded_sequence(self.embed(tokens), lengths, enforce_sorted=False)
        out, _ = pad_packed_sequence(self.rnn(packed)[0], total_length=tokens.shape[0])
        return self.head(out)


def _lm_batches(steps, T=7, B=4, vocab=20):
    gen = torch.Generator().manual_seed(8)
    batches = []
    for _ in range(steps):
        tokens = torch.randint(1, vocab, (T + 1, B), generator=gen)
        lengths = torch.randint(2, T + 1, (B,), generator=gen)
        lengths[0] = T  # pad_packed_sequence pads to the longest; total_length keeps T anyway
        targets = tokens[1:].clone()
        targets[torch.arange(T)[:, None] >= lengths[None, :]] = -100  # padding is ignored
        batches.append((tokens[:-1], lengths, targets))
    return batches


def _train_lm(model, batches, device):
    model = copy.deepcopy(model).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    losses = []
    for tokens, lengths, targets in batches:
        opt.zero_grad()
        logits = model(tokens.to(device), lengths)
        loss = F.cross_entropy(logits.flatten(0, 1), targets.to(device).flatten(), ignore_index=-100)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("cls", [nn.LSTM, nn.GRU])
def test_packed_language_model_trains_with_the_cpus_losses(cls):
    torch.manual_seed(9)
    model = _PackedLM(cls)
    batches = _lm_batches(10)
    nw.reset_fallback_counts()
    cpu_losses = _train_lm(model, batches, "cpu")
    dev_losses = _train_lm(model, batches, DEV)
    assert nw.fallback_report()["total_fallback_calls"] == 0
    torch.testing.assert_close(torch.tensor(dev_losses), torch.tensor(cpu_losses), rtol=1e-4, atol=1e-4)
    assert dev_losses[-1] < dev_losses[0], dev_losses
    # With dropout between the layers it trains too (masks are the device's own: no loss comparison).
    dropout_losses = _train_lm(_PackedLM(cls, dropout=0.3), batches[:3], DEV)
    assert all(torch.isfinite(torch.tensor(dropout_losses)))
    assert nw.fallback_report()["total_fallback_calls"] == 0


def test_graphed_lstm_language_model_step_matches_eager_steps():
    from navitrain.bench import models

    torch.manual_seed(10)
    base = models.lstm_lm(vocab=32, d_model=12, layers=2)
    batches = [models.gpt_batch(3, context=6, vocab=32, seed=s) for s in range(5)]

    def run(graphed):
        model = copy.deepcopy(base).to(DEV)
        step = models.train_step(model, torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9), models.gpt_loss)
        if graphed:
            step = nw.graphed(step, warmup=2)
        return [step(x, y).item() if graphed else step(x.to(DEV), y.to(DEV)).item() for x, y in batches], step

    eager, _ = run(False)
    replayed, step = run(True)
    assert step.graph is not None and step.graph.dispatch_count > 0 and step.eager_calls == 0
    assert replayed == pytest.approx(eager, rel=1e-5, abs=1e-6)
    assert replayed[-1] < replayed[0]


@pytest.mark.parametrize("cls", [nn.LSTM, nn.GRU])
def test_whole_layer_path_dispatches_no_per_step_ops(cls):
    """nn.LSTM/nn.GRU run as whole layers (ops/rnn_layers.py): the input projections of all steps are
    one GEMM, and per step only a GEMM and a cell kernel are launched directly, so the aten ops that
    reach the device do not grow with the sequence length (PyTorch's decomposition dispatches ~5 ops
    per step forward and ~10 backward)."""
    from collections import Counter

    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = Counter()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops[func] += 1
            return func(*args, **(kwargs or {}))

    for packed in (False, True):
        counts = []
        for T in (2, 9):
            torch.manual_seed(11)
            mod = cls(4, 5, num_layers=2, bidirectional=True).to(DEV)
            x = torch.randn(T, 3, 4).to(DEV).requires_grad_()
            with Count() as mode:
                if packed:  # PyTorch's own packed path also dispatches per step
                    seq = pack_padded_sequence(x, torch.tensor([T - 1, T, 1]), enforce_sorted=False)
                    mod(seq)[0].data.sum().backward()
                else:
                    mod(x)[0].sum().backward()
            counts.append(mode.ops)
        assert counts[0] == counts[1], (packed, counts[0], counts[1])
        assert not any("fused" in str(op) for op in counts[1])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_lstm_under_autocast_runs_in_the_half_type(dtype):
    torch.manual_seed(12)
    mod = nn.LSTM(6, 8, num_layers=2)
    x = torch.randn(5, 3, 6)
    dev_mod = copy.deepcopy(mod).to(DEV)
    with torch.autocast(DEV, dtype=dtype):
        out = dev_mod(x.to(DEV))[0]
    assert out.dtype == dtype
    out.float().sum().backward()
    assert all(p.grad.dtype == torch.float32 for p in dev_mod.parameters())
    expected = mod(x)[0]
    expected.sum().backward()
    _close(out.float(), expected, "output", rtol=2e-2, atol=2e-2)
    for (name, c), d in zip(mod.named_parameters(), dev_mod.parameters()):
        _close(d.grad, c.grad, f"grad of {name}", rtol=5e-2, atol=5e-2)
    assert nw.fallback_report()["total_fallback_calls"] == 0


def test_float64_rnns_fall_back_op_by_op_with_the_cpus_results(lenient):
    """float64 has no wgpu kernels and PyTorch no CPU kernel for the fused cells: the cells are then
    spelled with ordinary ops, each of which falls back to the CPU (counted)."""
    torch.manual_seed(13)
    nw.reset_fallback_counts()
    for mod in (nn.LSTM(3, 4, num_layers=2, bidirectional=True), nn.GRU(3, 4)):
        mod = mod.double()
        x = torch.randn(4, 2, 3, dtype=torch.float64, requires_grad=True)
        _check_module(mod, [x])
    assert nw.fallback_report()["total_fallback_calls"] > 0


def test_float64_rnns_never_take_pytorchs_python_decomposition(lenient, monkeypatch):
    """torch 2.11's Python lstm decomposition returned h_n as [L*D, 1, B, H] (hx.squeeze(1) of a [1, B, H]
    state; H100 run 12): the float64 path must take the C++ composite, whatever torch/_decomp holds.
    Planted here: Python decompositions of the four RNN ops that fail when called."""
    import torch._decomp  # noqa: F401  (registers the Python kernels the plant replaces)

    def planted(*args, **kwargs):
        raise AssertionError("PyTorch's Python RNN decomposition was called")

    for op in (aten.lstm.input, aten.gru.input, aten.lstm.data, aten.gru.data):
        monkeypatch.setitem(op.py_kernels, torch._C.DispatchKey.CompositeImplicitAutograd, planted)
    torch.manual_seed(14)
    for mod in (nn.LSTM(3, 4, num_layers=2, bidirectional=True), nn.GRU(3, 4, bidirectional=True)):
        mod = mod.double()
        x = torch.randn(5, 3, 3, dtype=torch.float64, requires_grad=True)
        _check_module(mod, [x])
    mod = nn.LSTM(3, 4, bidirectional=True).double()
    packed = pack_padded_sequence(torch.randn(4, 3, 3, dtype=torch.float64), [4, 3, 1])
    (out, (h_n, c_n)), (ref_out, (ref_h, ref_c)) = copy.deepcopy(mod).to(DEV)(packed.to(DEV)), mod(packed)
    for got, ref, what in ((out.data, ref_out.data, "packed output"), (h_n, ref_h, "h_n"), (c_n, ref_c, "c_n")):
        _close(got, ref, what)
