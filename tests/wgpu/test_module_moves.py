"""A module moved off the wgpu device and back keeps its Parameter objects, so the optimizer made before the
move goes on training it (navitrain.wgpu.module_moves), as with CUDA."""
import copy
import weakref

import pytest
import torch
from torch import nn

import navitrain.wgpu as nw  # noqa: F401
from navitrain.wgpu import module_moves


def _net():
    torch.manual_seed(31)
    return nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5), nn.Tanh(), nn.Linear(5, 3))


def _train(model, device, steps, move_at):
    g = torch.Generator().manual_seed(32)
    data = [(torch.randn(4, 6, generator=g), torch.randn(4, 3, generator=g)) for _ in range(steps)]
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    losses = []
    for i, (x, y) in enumerate(data):
        if i == move_at:
            # A script saving or evaluating on the CPU mid-training; the gradients of the last step go along.
            model.cpu()
            model.to(device)
        opt.zero_grad(set_to_none=False)
        loss = nn.functional.mse_loss(model(x.to(device)), y.to(device))
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_a_round_trip_through_the_cpu_keeps_the_parameters_and_the_optimizer_trains_them():
    base = _net()
    cpu_model, model = copy.deepcopy(base), copy.deepcopy(base).to("wgpu")
    before = [id(p) for p in model.parameters()]
    cpu_losses = _train(cpu_model, "cpu", 8, move_at=4)
    losses = _train(model, "wgpu", 8, move_at=4)
    assert [id(p) for p in model.parameters()] == before
    assert all(p.device.type == "wgpu" and isinstance(p, nn.Parameter) for p in model.parameters())
    assert losses == pytest.approx(cpu_losses, rel=1e-5, abs=1e-6)
    for a, b in zip(model.state_dict().values(), cpu_model.state_dict().values()):
        torch.testing.assert_close(a.cpu(), b, rtol=1e-5, atol=1e-6)
    assert not torch.__future__.get_swap_module_params_on_conversion()


def test_a_move_with_weak_references_to_the_parameters_warns_that_optimizers_must_be_made_again(monkeypatch):
    monkeypatch.setattr(module_moves, "_warned", False)
    model = _net().to("wgpu")
    held = weakref.ref(model[0].weight)   # as dynamo's guards hold them: swapping is refused
    with pytest.warns(RuntimeWarning, match="create its optimizer again"):
        model.cpu()
    assert model[0].weight is not held() and model[0].weight.device.type == "cpu"


def test_moves_that_keep_the_parameters_anyway_do_not_warn(monkeypatch, recwarn):
    monkeypatch.setattr(module_moves, "_warned", False)
    cpu_model = _net()
    ids = [id(p) for p in cpu_model.parameters()]
    cpu_model.double()        # no wgpu parameter: PyTorch's own path (in place)
    model = _net().to("wgpu")
    wgpu_ids = [id(p) for p in model.parameters()]
    model.to("wgpu")          # already there
    model.float()
    assert [id(p) for p in cpu_model.parameters()] == ids and [id(p) for p in model.parameters()] == wgpu_ids
    assert not [w for w in recwarn if "create its optimizer again" in str(w.message)]
    assert not torch.__future__.get_swap_module_params_on_conversion()


def test_a_move_between_forward_and_backward_warns_rather_than_failing(monkeypatch):
    monkeypatch.setattr(module_moves, "_warned", False)
    model = _net().to("wgpu")
    out = model(torch.randn(4, 6).to("wgpu"))   # the linear layers' weights are saved for the backward
    with pytest.warns(RuntimeWarning, match="create its optimizer again"):
        model.cpu()
    assert model[0].weight.device.type == "cpu"
    out.sum().backward()    # the pending backward still runs, into the tensors it saved


def test_a_lazy_module_moved_before_its_first_forward_trains_like_the_cpu():
    """nn.LazyLinear / LazyConv2d / LazyBatchNorm2d make their parameters in place at the first forward, which a
    wgpu tensor (another Python class) cannot be made: they were refused. They are now made on the CPU (with
    the CPU's initialization) and moved before that forward runs, keeping the objects, so an optimizer made
    before the first forward trains them. Four SGD-momentum steps against the same model on the CPU."""
    def net():
        torch.manual_seed(21)
        return nn.Sequential(nn.LazyConv2d(4, 3), nn.LazyBatchNorm2d(), nn.ReLU(), nn.Flatten(), nn.LazyLinear(5))

    g = torch.Generator().manual_seed(22)
    batches = [(torch.randn(3, 2, 6, 6, generator=g), torch.randint(0, 5, (3,), generator=g)) for _ in range(4)]
    results = {}
    for device in ("cpu", "wgpu", "wgpu-compile"):
        where = device.removesuffix("-compile")
        model = net().to(where)
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)   # before the first forward
        # Compiled: dynamo initializes lazy modules itself before tracing them (and rewinds the RNG after each
        # traced piece: a hook left in place broke the graph, and the linear layer got the convolution's draws).
        run = torch.compile(model, backend="wgpu") if device == "wgpu-compile" else model
        losses = []
        for x, y in batches:
            loss = nn.functional.cross_entropy(run(x.to(where)), y.to(where))
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        results[device] = (losses, model)
    cpu_losses, cpu_model = results["cpu"]
    for device in ("wgpu", "wgpu-compile"):
        losses, model = results[device]
        assert losses == pytest.approx(cpu_losses, rel=1e-4, abs=1e-5), device
        assert all(type(p) is not nn.parameter.UninitializedParameter and p.device.type == "wgpu"
                   for p in model.parameters())
        for (name, a), b in zip(model.state_dict().items(), cpu_model.state_dict().values()):
            torch.testing.assert_close(a.cpu(), b, rtol=1e-4, atol=1e-5, msg=lambda m, name=name: f"{name}: {m}")
    with pytest.raises(RuntimeError, match="lazy module .* run one forward on the CPU first"):
        nn.parameter.UninitializedParameter().to("wgpu")   # a lazy tensor moved alone is still refused, clearly
    back = net().to("wgpu").cpu()   # moved back before the first forward: the last move is the one that holds
    back(batches[0][0])
    assert all(p.device.type == "cpu" for p in back.parameters())
