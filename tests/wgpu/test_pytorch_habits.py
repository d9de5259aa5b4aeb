"""What ordinary PyTorch scripts do around the model, on the wgpu device: pinned DataLoaders, checkpoints
saved and loaded with every map_location form, mixed-device mistakes raising PyTorch's own error,
f-strings of losses, device indices that do not exist, torch.accelerator, seeding, channels_last."""
import io

import pytest
import torch
import torch.nn.functional as F

import navitrain.wgpu as nw

DEV = "wgpu"


def rnd(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_pin_memory_gives_a_cpu_copy_that_moves_to_wgpu():
    x = rnd(4, 5, seed=1)
    x[0, 0], x[0, 1], x[0, 2] = float("nan"), float("inf"), -float("inf")
    pinned = x.pin_memory()
    assert pinned.device.type == "cpu" and pinned.data_ptr() != x.data_ptr()
    torch.testing.assert_close(pinned, x, equal_nan=True)
    moved = pinned.to(DEV, non_blocking=True)
    torch.testing.assert_close(moved.cpu(), x, equal_nan=True)
    ints = torch.randint(-9, 9, (6,), dtype=torch.int64)
    assert torch.equal(ints.pin_memory().to(DEV).cpu(), ints)


def test_dataloader_with_pin_memory_trains_like_the_cpu(strict):
    g = torch.Generator().manual_seed(3)
    xs, ys = torch.randn(64, 10, generator=g), torch.randint(0, 3, (64,), generator=g)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(xs, ys), batch_size=16, pin_memory=True,
                                         num_workers=0)
    torch.manual_seed(0)
    ref = torch.nn.Sequential(torch.nn.Linear(10, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))

    def train(device):
        model = torch.nn.Sequential(torch.nn.Linear(10, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
        model.load_state_dict(ref.state_dict())
        model.to(device)
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        losses = []
        for x, y in loader:
            assert x.device.type == "cpu"
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(f"{loss:.4f}")  # the examples' way of printing a loss
        return losses

    nw.reset_fallback_counts()
    dev, cpu = train(DEV), train("cpu")
    assert len(dev) == 4
    torch.testing.assert_close(torch.tensor([float(v) for v in dev]), torch.tensor([float(v) for v in cpu]),
                               atol=2e-4, rtol=0)
    assert nw.fallback_report()["total_fallback_calls"] == 0


def _model():
    torch.manual_seed(5)
    return torch.nn.Sequential(torch.nn.Embedding(7, 4), torch.nn.Linear(4, 3))


@pytest.mark.parametrize("map_location", ["wgpu", "wgpu:0", torch.device("wgpu"), torch.device("wgpu", 0),
                                          {"cpu": "wgpu"}, {"cpu": "wgpu:0"}])
def test_cpu_checkpoint_loads_onto_wgpu(map_location):
    model = _model()
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, map_location=map_location)
    for key, value in model.state_dict().items():
        assert state[key].device == torch.device("wgpu", 0)
        assert torch.equal(state[key].cpu(), value)


@pytest.mark.parametrize("map_location,where", [
    (None, "wgpu"), ("wgpu", "wgpu"), ("cpu", "cpu"), (torch.device("cpu"), "cpu"), ({"wgpu:0": "cpu"}, "cpu"),
    (lambda storage, location: storage, "cpu"), (lambda storage, location: None, "wgpu")])
def test_wgpu_checkpoint_comes_back_where_map_location_says(map_location, where):
    model = _model().to(DEV)
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, map_location=map_location)
    for key, value in model.state_dict().items():
        assert state[key].device.type == where, key
        assert torch.equal(state[key].cpu(), value.cpu())


def test_whole_model_comes_back_on_wgpu_and_runs():
    model = _model().to(DEV)
    model[1].weight.requires_grad_(False)
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    assert all(p.device.type == DEV for p in loaded.parameters())
    assert isinstance(loaded[1].weight, torch.nn.Parameter) and not loaded[1].weight.requires_grad
    idx = torch.randint(0, 7, (5,))
    torch.testing.assert_close(loaded(idx.to(DEV)).cpu(), model(idx.to(DEV)).cpu())
    # tied weights (one Parameter under two names) stay one tensor
    tied = torch.nn.Sequential(torch.nn.Embedding(5, 4), torch.nn.Linear(4, 5, bias=False)).to(DEV)
    tied[1].weight = tied[0].weight
    buf = io.BytesIO()
    torch.save(tied, buf)
    buf.seek(0)
    back = torch.load(buf, weights_only=False)
    assert back[1].weight is back[0].weight and back[0].weight.device.type == DEV


def test_map_location_to_a_missing_adapter_raises():
    buf = io.BytesIO()
    torch.save({"w": rnd(3)}, buf)
    buf.seek(0)
    missing = torch.accelerator.device_count()
    with pytest.raises(RuntimeError, match=f"wgpu:{missing} does not exist"):
        torch.load(buf, map_location=f"wgpu:{missing}")


@pytest.mark.parametrize("make", [
    lambda x, c: x + c,
    lambda x, c: c * x,
    lambda x, c: F.linear(x.reshape(2, 4), c.reshape(2, 4)),
    lambda x, c: F.embedding(torch.tensor([0, 1], device=DEV), c.reshape(2, 4)),
    lambda x, c: torch.where(x > 0, x, c),
    lambda x, c: torch.cat([x, c]),
])
def test_mixing_a_cpu_tensor_raises_pytorchs_error(make):
    x, c = rnd(8, seed=2).to(DEV), rnd(8, seed=3)
    with pytest.raises(RuntimeError, match="Expected all tensors to be on the same device"):
        make(x, c)


def test_zero_dim_cpu_tensors_are_scalars_and_cpu_indices_index():
    x = rnd(6, seed=4)
    d = x.to(DEV)
    s = torch.tensor(2.5)
    torch.testing.assert_close((d * s + s).cpu(), x * s + s)
    idx = torch.tensor([5, 0, 2])
    torch.testing.assert_close(d[idx].cpu(), x[idx])


def test_format_of_a_wgpu_scalar():
    loss = rnd(1, seed=6)[0] * 3
    d = loss.to(DEV)
    assert f"{d:.3f}" == f"{loss:.3f}" and f"{d:>10.2e}" == f"{loss:>10.2e}"
    assert f"{torch.tensor(7, device=DEV):d}" == "7"
    assert "device='wgpu:0'" in f"{d.reshape(1)}"
    with pytest.raises(TypeError):
        f"{d.reshape(1):.3f}"  # as on the CPU: only 0-d tensors format as numbers


@pytest.mark.parametrize("make", [
    lambda dev: torch.ones(3, device=dev),
    lambda dev: torch.empty(2, 2, device=dev),
    lambda dev: torch.randn(3, device=dev),
    lambda dev: rnd(3).to(dev),
    lambda dev: torch.tensor([1.0, 2.0], device=dev),
])
def test_a_device_index_without_an_adapter_raises(make):
    missing = torch.accelerator.device_count()  # wgpu:0..N-1 exist
    with pytest.raises(RuntimeError, match=rf"wgpu:{missing} does not exist.*adapters on this machine"):
        make(f"wgpu:{missing}")
    assert make("wgpu:0").device == torch.device("wgpu", 0)


def test_accelerator_calls_scripts_make():
    assert torch.accelerator.is_available()
    assert torch.accelerator.current_accelerator() == torch.device("wgpu")
    assert torch.accelerator.device_count() >= 1
    assert torch.accelerator.current_device_index() == 0


def test_manual_seed_repeats_wgpu_random_numbers():
    torch.manual_seed(11)
    a = torch.randn(100, device=DEV).cpu()
    b = torch.rand(100, device=DEV).cpu()
    torch.manual_seed(11)
    assert torch.equal(torch.randn(100, device=DEV).cpu(), a)
    assert torch.equal(torch.rand(100, device=DEV).cpu(), b)


def test_channels_last_model_matches_the_cpu(strict):
    torch.manual_seed(2)
    conv = torch.nn.Conv2d(3, 4, 3, padding=1)
    x = rnd(2, 3, 6, 6, seed=8)
    dev = torch.nn.Conv2d(3, 4, 3, padding=1)
    dev.load_state_dict(conv.state_dict())
    dev = dev.to(DEV).to(memory_format=torch.channels_last)
    assert dev.weight.is_contiguous(memory_format=torch.channels_last)
    out = dev(x.to(DEV).to(memory_format=torch.channels_last))
    torch.testing.assert_close(out.cpu(), conv(x), atol=1e-5, rtol=1e-5)
