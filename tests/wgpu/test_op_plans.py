"""Eager ops repeated from plans (navitrain/wgpu/op_plans.py): a repeat must do exactly what the handler does,
and every call a plan cannot stand for must run the handler."""
import gc

import pytest
import torch
import torch.nn.functional as F

from navitrain.bench import models
from navitrain.wgpu import dispatch, op_plans
from navitrain.wgpu.kernels import gemm_tuning
from navitrain.wgpu.runtime import runtime

aten = torch.ops.aten
DEV = "wgpu"
CONV = aten.convolution.default


def rnd(*shape, seed, dtype=torch.float32):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@pytest.fixture
def fresh_plans(monkeypatch):
    monkeypatch.setenv("NAVITRAIN_WGPU_PLANS", "1")
    runtime().plans.clear()
    op_plans.stats.clear()


def _conv(x, w):
    return aten.convolution.default(x, w, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1)


def _cnn():
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1, bias=False), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8), torch.nn.BatchNorm2d(8), torch.nn.Hardswish(),
        torch.nn.Conv2d(8, 4, 1), torch.nn.Flatten(), torch.nn.Linear(4 * 5 * 5, 3))


def _train(steps, seed, nan_at=None, model="cnn", optimizer="sgd"):
    """Losses, gradients and parameters of a small net trained eagerly for `steps`: a conv + batch norm +
    depthwise net, or a tiny GPT (layer norm, GELU, attention's softmax, embeddings, cross entropy)."""
    torch.manual_seed(seed)
    if model == "cnn":
        net = _cnn().to(DEV)
        xs = [rnd(4, 3, 10, 10, seed=seed + i) for i in range(steps)]
        ys = list(torch.randint(0, 3, (steps, 4), generator=torch.Generator().manual_seed(seed)))
        loss_fn = F.cross_entropy
    else:
        net = models.gpt_decoder(vocab=32, context=8, d_model=16, layers=2, heads=2).to(DEV)
        batches = [models.gpt_batch(3, context=8, vocab=32, seed=seed + i) for i in range(steps)]
        xs, ys = [b[0] for b in batches], [b[1] for b in batches]
        loss_fn = models.gpt_loss
    if nan_at is not None:
        xs[nan_at][1, 2, 3, 4] = float("nan")
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9) if optimizer == "sgd" else \
        torch.optim.AdamW(net.parameters(), lr=1e-2)
    losses = []
    for x, y in zip(xs, ys):
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(net(x.to(DEV)), y.to(DEV))
        loss.backward()
        opt.step()
        losses.append(loss.detach().cpu())
    grads = [p.grad.cpu() for p in net.parameters()]
    state = [t.cpu() for t in net.state_dict().values()]
    return losses, grads, state


def _same(a, b):
    for u, v in zip(a, b):
        torch.testing.assert_close(u, v, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("model, optimizer", [("cnn", "sgd"), ("gpt", "adamw")])
def test_a_training_run_repeated_from_plans_is_bit_identical_to_its_handlers(fresh_plans, monkeypatch, model,
                                                                             optimizer):
    monkeypatch.setenv("NAVITRAIN_WGPU_PLANS", "0")
    reference = _train(6, seed=3, model=model, optimizer=optimizer)
    monkeypatch.setenv("NAVITRAIN_WGPU_PLANS", "1")
    # (The cyclic GC off: a collection inside a handler frees other tests' tensors, which rightly spoils that
    # recording, as a plan must never free them; in the full suite that happened once.)
    gc.collect()
    gc.disable()
    try:
        planned = _train(6, seed=3, model=model, optimizer=optimizer)
    finally:
        gc.enable()
    for got, want in zip(planned, reference):
        _same(got, want)
    # Most calls of steps 3-6 are repeats (the first steps allocate state; AdamW's bias corrections never repeat).
    assert op_plans.stats["repeated"] >= 3 * 20, op_plans.stats
    assert op_plans.stats["repeated"] > op_plans.stats["recorded"], op_plans.stats
    assert not any(k.startswith("unplannable") for k in op_plans.stats), op_plans.stats


def test_nan_flows_through_repeats_as_through_the_handlers(fresh_plans, monkeypatch):
    monkeypatch.setenv("NAVITRAIN_WGPU_PLANS", "0")
    reference = _train(4, seed=5, nan_at=3)
    monkeypatch.setenv("NAVITRAIN_WGPU_PLANS", "1")
    planned = _train(4, seed=5, nan_at=3)
    assert torch.isnan(planned[0][3])
    for got, want in zip(planned, reference):
        _same(got, want)


def test_a_result_still_alive_is_not_handed_out_again(fresh_plans):
    """Same arguments, but the first call's output is alive: the second lands elsewhere and is a tensor of its own."""
    x, w = rnd(2, 3, 6, 6, seed=1).to(DEV), rnd(4, 3, 3, 3, seed=2).to(DEV)
    want = F.conv2d(x.cpu(), w.cpu(), padding=1)
    outs = [_conv(x, w) for _ in range(4)]
    assert len({o.data_ptr() for o in outs}) == 4 or len({(o._ws.heap.index, o._ws.base) for o in outs}) == 4
    outs[0].mul_(0)
    for o in outs[1:]:
        torch.testing.assert_close(o.cpu(), want, rtol=1e-5, atol=1e-5)
    for _ in range(3):   # dropped each time: the same block comes back, and the plan repeats
        o = _conv(x, w)
        torch.testing.assert_close(o.cpu(), want, rtol=1e-5, atol=1e-5)
        del o
    assert op_plans.stats["repeated"] >= 1, op_plans.stats


@pytest.mark.parametrize("kept", [1, 3, 20])
def test_an_output_that_moves_between_places_repeats_from_a_plan_per_place(fresh_plans, monkeypatch, kept):
    """`loss = step()` keeps the last result alive while the next is made, and a GPT's six layers call one clone
    with the same arguments six times a step, each output kept for backward: the same arguments then put the
    output in one of several places, in turn. Each place is a plan, found by where the allocator would put the
    output now (one try per call); none is recorded again and again."""
    x, w = rnd(2, 3, 6, 6, seed=1).to(DEV), rnd(4, 3, 3, 3, seed=2).to(DEV)
    want = F.conv2d(x.cpu(), w.cpu(), padding=1)
    alive, places, tries = [], set(), []
    replay = op_plans._replay
    monkeypatch.setattr(op_plans, "_replay", lambda *a: tries.append(1) or replay(*a))
    for i in range(6 * (kept + 1)):
        if i == 3 * (kept + 1):
            tries.clear()
        out = _conv(x, w)
        places.add((out._ws.block.heap.index, out._ws.block.offset))
        torch.testing.assert_close(out.cpu(), want, rtol=1e-5, atol=1e-5)
        assert all(out._ws is not a._ws for a in alive)
        alive = (alive + [out])[-kept:]
    assert len(places) == kept + 1
    # (each new place was met by a call whose other plans failed: kept of those while the ring fills)
    assert op_plans.stats["recorded"] == kept + 1 and op_plans.stats["moved"] <= kept, op_plans.stats
    assert op_plans.stats["repeated"] >= 3 * (kept + 1), op_plans.stats
    assert len(tries) == 3 * (kept + 1), "a call tried more than the plan of the place its output lands"


def test_the_allocator_hands_out_the_lowest_free_address_whatever_the_order_of_frees():
    alloc = runtime().allocator
    for order in ((0, 1, 2), (2, 0, 1), (1, 2, 0)):
        blocks = [alloc.malloc(4096 * 3) for _ in range(3)]
        lowest = min(blocks, key=lambda b: (b.heap.index, b.offset))
        for i in order:
            alloc.free(blocks[i])
        assert alloc.next_place(4096 * 3 - 100) == (lowest.heap.index, lowest.offset)   # (same size class)
        again = alloc.malloc(4096 * 3)
        assert again is lowest
        alloc.free(again)


def _swap_conv(monkeypatch, handler):
    monkeypatch.setitem(dispatch.OPS, CONV, handler)


@pytest.mark.parametrize("what, why", [
    ("read", "reads the device"),
    ("random", "draws random numbers"),
    ("keep", "keeps memory it does not return"),
    ("old", "returns memory it did not allocate"),
])
def test_calls_a_plan_cannot_repeat_run_their_handler_every_time(fresh_plans, monkeypatch, what, why):
    kept = []
    old = rnd(5, seed=9).to(DEV)
    calls = []

    def handler(x, w, bias, stride, padding, dilation, transposed, output_padding, groups):
        calls.append(1)
        y = aten.mul.Tensor(x, 2.0)
        if what == "read":
            y = aten.add.Tensor(y, float(aten.sum.default(x).cpu()))
        elif what == "random":
            y = aten.add.Tensor(y, aten.rand_like.default(x))
        elif what == "keep":
            kept.append(aten.mul.Tensor(x, 3.0))
        elif what == "old":
            return old
        return y

    _swap_conv(monkeypatch, handler)
    x, w = rnd(2, 3, 4, 4, seed=1).to(DEV), rnd(4, 3, 3, 3, seed=2).to(DEV)
    results = [_conv(x, w).cpu() for _ in range(6)]
    assert len(calls) == 6   # the handler ran every time (the ops it calls may repeat their own plans)
    # Met once, then recorded (and refused) when met again: every other call tries.
    assert op_plans.stats[f"unplannable: {why}"] == 3, op_plans.stats
    if what == "random":
        assert not torch.equal(results[0], results[1])   # fresh numbers on every call


def test_a_plan_is_not_repeated_under_other_settings_its_handler_read(fresh_plans, monkeypatch):
    x, w = rnd(2, 3, 8, 8, seed=1).to(DEV), rnd(4, 3, 3, 3, seed=2).to(DEV)
    want = F.conv2d(x.cpu(), w.cpu(), padding=1)
    kernels = {}
    for mode in ("gemm", "winograd"):
        monkeypatch.setenv("NAVITRAIN_WGPU_CONV", mode)
        for _ in range(4):
            torch.testing.assert_close(_conv(x, w).cpu(), want, rtol=1e-4, atol=1e-4)
        (plans,) = runtime().plans.values()
        plan = list(plans.by_place.values())[-1][-1]
        assert dict(plan.env)["NAVITRAIN_WGPU_CONV"] == mode
        kernels[mode] = {d[0].name for d in plan.dispatches}
    assert op_plans.stats["repeated"] >= 2, op_plans.stats
    assert any("winograd" in k for k in kernels["winograd"]), kernels
    assert not any("winograd" in k for k in kernels["gemm"]), kernels


def test_verify_mode_finds_a_handler_that_does_other_work_for_the_same_arguments(fresh_plans, monkeypatch):
    factor = [2.0]

    def handler(x, w, bias, stride, padding, dilation, transposed, output_padding, groups):
        return aten.mul.Tensor(x, factor[0])   # decided by something the key does not hold

    _swap_conv(monkeypatch, handler)
    x, w = rnd(2, 3, 4, 4, seed=1).to(DEV), rnd(4, 3, 3, 3, seed=2).to(DEV)
    _conv(x, w)
    monkeypatch.setenv("NAVITRAIN_WGPU_PLANS", "verify")
    _conv(x, w)                        # the same work: fine
    factor[0] = 3.0
    with pytest.raises(op_plans.PlanMismatch, match="other work"):
        _conv(x, w)
    monkeypatch.setenv("NAVITRAIN_WGPU_PLANS", "1")   # and unverified, a repeat does what was recorded
    runtime().plans.clear()
    torch.testing.assert_close(_conv(x, w).cpu(), x.cpu() * 3)


def test_plans_off_runs_every_handler(fresh_plans, monkeypatch):
    monkeypatch.setenv("NAVITRAIN_WGPU_PLANS", "0")
    calls = []

    def handler(x, *rest):
        calls.append(1)
        return aten.mul.Tensor(x, 2.0)

    _swap_conv(monkeypatch, handler)
    x, w = rnd(2, 3, 4, 4, seed=1).to(DEV), rnd(4, 3, 3, 3, seed=2).to(DEV)
    for _ in range(3):
        _conv(x, w)
    assert len(calls) == 3 and not runtime().plans


def test_plans_are_dropped_when_the_tuner_remembers_a_new_answer(fresh_plans, monkeypatch):
    x, w = rnd(2, 3, 8, 8, seed=1).to(DEV), rnd(4, 3, 3, 3, seed=2).to(DEV)
    for _ in range(3):
        _conv(x, w)
    assert runtime().plans and op_plans.stats["repeated"] >= 1
    repeated = op_plans.stats["repeated"]
    monkeypatch.setattr(gemm_tuning, "_picked", {})   # (as a test forcing the tuner's answers does)
    _conv(x, w)
    assert op_plans.stats["repeated"] == repeated, "a plan made before the tuner's answers changed was repeated"


def test_numbers_are_keyed_by_type_and_sign(fresh_plans):
    """1, 1.0 and True are equal and hash alike in Python, as are 0.0 and -0.0; a plan of one is not the other's."""
    x = torch.tensor([1, -2, 3]).to(DEV)
    for v in (1, 1, 1, 1.0, 1.0, 1.0, True, True, True, 1, 1):
        got, want = (x + v).cpu(), x.cpu() + v
        assert got.dtype == want.dtype and torch.equal(got, want), (v, got, want)
    z = torch.tensor([-0.0, 2.0, float("nan"), -float("inf")]).to(DEV)
    for v in (0.0, 0.0, 0.0, -0.0, -0.0, -0.0, 0.0):
        got, want = torch.mul(z, v).cpu(), torch.mul(z.cpu(), v)
        torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True)
        assert torch.equal(torch.signbit(got), torch.signbit(want)), (v, got, want)
    assert op_plans.stats["repeated"] >= 4, op_plans.stats


def test_only_aten_ops_are_planned():
    assert op_plans.plannable(aten.mul.Tensor) and op_plans.plannable(aten._foreach_add_.List)
    assert not op_plans.plannable(aten.view.default)
    lib = torch.library.Library("navitrain_plans_test", "DEF")   # a library op named like a planned aten op
    lib.define("mul(Tensor x) -> Tensor")
    assert not op_plans.plannable(torch.ops.navitrain_plans_test.mul.default)
