"""End-to-end training on the wgpu device with NAVITRAIN_WGPU_STRICT=1 (zero CPU fallbacks): the same
model, seed and batches on the CPU and on wgpu give the same losses step after step."""
import copy

import pytest
import torch

import navitrain.wgpu as nw
from navitrain.bench import models

DEV = "wgpu"


def _train(model, batches, loss_fn, make_opt, device, steps, sched=None):
    model = copy.deepcopy(model).to(device)
    opt = make_opt(model.parameters())
    scheduler = sched(opt) if sched else None
    losses = []
    for x, y in batches[:steps]:
        x, y = x.to(device), y.to(device)
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        if scheduler:
            scheduler.step()
        losses.append(loss.item())
    return losses, model


def _same_run(model, batches, loss_fn, make_opt, steps, rtol, sched=None, reference_dtype=torch.float32):
    """Train on the CPU and on wgpu from the same weights and batches. For deep models the CPU run is
    done in float64: two float32 runs drift apart chaotically over many steps (BatchNorm amplifies
    rounding), and what matters is that wgpu stays as close to the exact result as float32 allows."""
    nw.reset_fallback_counts()
    if reference_dtype != torch.float32:
        ref_model = copy.deepcopy(model).to(reference_dtype)
        ref_batches = [(x.to(reference_dtype) if x.is_floating_point() else x, y.to(reference_dtype)
                        if y.is_floating_point() else y) for x, y in batches]
        cpu_losses, cpu_model = _train(ref_model, ref_batches, loss_fn, make_opt, "cpu", steps, sched)
    else:
        cpu_losses, cpu_model = _train(model, batches, loss_fn, make_opt, "cpu", steps, sched)
    dev_losses, dev_model = _train(model, batches, loss_fn, make_opt, DEV, steps, sched)
    assert nw.fallback_report()["total_fallback_calls"] == 0
    torch.testing.assert_close(torch.tensor(dev_losses), torch.tensor(cpu_losses, dtype=torch.float32), rtol=rtol,
                               atol=rtol)
    assert dev_losses[-1] < dev_losses[0], f"loss did not go down: {dev_losses}"
    for (name, p_cpu), p_dev in zip(cpu_model.named_parameters(), dev_model.parameters()):
        torch.testing.assert_close(p_dev.detach().cpu(), p_cpu.detach().float(), rtol=rtol * 10, atol=rtol * 10,
                                   msg=lambda m: f"parameter {name}: {m}")
    return dev_losses


OPTIMIZERS = {
    "sgd_momentum": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9),
    "sgd_nesterov_wd": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3),
    "adam": lambda p: torch.optim.Adam(p, lr=2e-3),
    "adamw": lambda p: torch.optim.AdamW(p, lr=2e-3, weight_decay=0.05),
    "adam_single_tensor": lambda p: torch.optim.Adam(p, lr=2e-3, foreach=False),
}


@pytest.mark.parametrize("opt", list(OPTIMIZERS))
def test_mlp_50_steps_matches_cpu(opt):
    torch.manual_seed(0)
    model = models.mlp(in_features=64, hidden=(48,), num_classes=10)
    batches = [models.mlp_batch(32, in_features=64, seed=s) for s in range(50)]
    _same_run(model, batches, models.mlp_loss, OPTIMIZERS[opt], 50, rtol=1e-4)


def test_mlp_with_lr_scheduler_and_clip_grad_norm():
    torch.manual_seed(1)
    model = models.mlp(in_features=32, hidden=(32, 32), num_classes=5)
    batches = [models.mlp_batch(16, in_features=32, num_classes=5, seed=s) for s in range(20)]

    def loss_fn(out, y):
        return models.mlp_loss(out, y)

    def make_opt(params):
        return torch.optim.SGD(params, lr=0.1, momentum=0.9)

    nw.reset_fallback_counts()
    results = {}
    for device in ("cpu", DEV):
        m = copy.deepcopy(model).to(device)
        opt = make_opt(m.parameters())
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=5, gamma=0.5)
        losses = []
        for x, y in batches:
            x, y = x.to(device), y.to(device)
            opt.zero_grad()
            loss = loss_fn(m(x), y)
            loss.backward()
            total = torch.nn.utils.clip_grad_norm_(m.parameters(), 0.5)
            opt.step()
            sched.step()
            losses.append((loss.item(), total.item()))
        results[device] = torch.tensor(losses)
    assert nw.fallback_report()["total_fallback_calls"] == 0
    torch.testing.assert_close(results[DEV], results["cpu"], rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_cifar_resnet18_7_steps_matches_cpu():
    torch.manual_seed(0)
    model = models.cifar_resnet18(num_classes=10, width=8)   # the ResNet-18 layout, narrow channels
    # Batch 8, lr 0.01 and a float64 reference, for 7 steps: this run bifurcates after step 7 (ReLUs
    # flip after BatchNorm), where PyTorch's own float32 CPU run leaves float64 by 4.8e-4 (step 8) and
    # 8.0e-3 (step 10) while staying within 1.5e-6 before. An H200 with other summation orders than
    # lavapipe's showed exactly that 8.0e-3 at step 10, so a longer check here tests luck, not kernels.
    batches = [models.cifar_batch(8, image_size=16, seed=s) for s in range(7)]
    _same_run(model, batches, models.cifar_loss, lambda p: torch.optim.SGD(p, lr=0.01, momentum=0.9), 7,
              rtol=2e-3, reference_dtype=torch.float64)


@pytest.mark.slow
def test_cifar_resnet18_channels_last_matches_cpu():
    torch.manual_seed(0)
    model = models.cifar_resnet18(num_classes=10, width=8).to(memory_format=torch.channels_last)
    # As above: batch 8, lr 0.01 and a float64 reference. With batch 4 and lr 0.05 the run is chaotic
    # enough that Winograd's rounding (chosen by the tuner on a real GPU) moved the loss past 2e-3.
    batches = [models.cifar_batch(8, image_size=16, seed=s) for s in range(6)]
    batches = [(x.contiguous(memory_format=torch.channels_last), y) for x, y in batches]
    _same_run(model, batches, models.cifar_loss, lambda p: torch.optim.SGD(p, lr=0.01, momentum=0.9), 6,
              rtol=2e-3, reference_dtype=torch.float64)


@pytest.mark.slow
def test_gpt_decoder_20_steps_matches_cpu():
    torch.manual_seed(0)
    model = models.gpt_decoder(vocab=64, context=16, d_model=32, layers=2, heads=2)
    batches = [models.gpt_batch(4, context=16, vocab=64, seed=s) for s in range(20)]
    _same_run(model, batches, models.gpt_loss, OPTIMIZERS["adamw"], 20, rtol=2e-3)


@pytest.mark.slow
def test_unet_20_steps_matches_cpu():
    torch.manual_seed(0)
    model = models.unet_small(width=8)
    batches = [models.unet_batch(2, image_size=16, seed=s) for s in range(20)]
    _same_run(model, batches, models.unet_loss, OPTIMIZERS["adam"], 20, rtol=2e-3)


@pytest.mark.slow
def test_ported_mnist_example_runs_unmodified_but_for_the_device():
    """The structure of PyTorch's classic MNIST example (Adadelta, StepLR, log_softmax + nll_loss, dropout,
    a train loop printing loss.item(), a test loop counting correct argmax predictions) on synthetic data
    of MNIST's shapes. Only the device line differs from the CPU version."""
    torch.manual_seed(1)
    device = torch.device(DEV)
    images = torch.randn(256, 1, 28, 28)
    labels = (images[:, 0, 10:18, 10:18].mean((1, 2)) > 0).long() + 2 * (images[:, 0, :8, :8].mean((1, 2)) > 0).long()
    train_set = torch.utils.data.TensorDataset(images[:192], labels[:192])
    test_set = torch.utils.data.TensorDataset(images[192:], labels[192:])
    train_loader = torch.utils.data.DataLoader(train_set, batch_size=32, shuffle=True)
    test_loader = torch.utils.data.DataLoader(test_set, batch_size=64)
    model = models.mnist_net(channels=(8, 16), hidden=32).to(device)
    optimizer = torch.optim.Adadelta(model.parameters(), lr=1.0)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.7)
    nw.reset_fallback_counts()
    first = last = None
    for epoch in range(1, 4):
        model.train()
        for batch_idx, (data, target) in enumerate(train_loader):
            data, target = data.to(device), target.to(device)
            optimizer.zero_grad()
            output = model(data)
            loss = torch.nn.functional.nll_loss(output, target)
            loss.backward()
            optimizer.step()
            value = loss.item()
            first = value if first is None else first
            last = value
        scheduler.step()
    model.eval()
    test_loss, correct = 0.0, 0
    with torch.no_grad():
        for data, target in test_loader:
            data, target = data.to(device), target.to(device)
            output = model(data)
            test_loss += torch.nn.functional.nll_loss(output, target, reduction="sum").item()
            pred = output.argmax(dim=1, keepdim=True)
            correct += pred.eq(target.view_as(pred)).sum().item()
    assert nw.fallback_report()["total_fallback_calls"] == 0
    assert last < first
    assert 0 <= correct <= len(test_set) and test_loss > 0


@pytest.mark.slow
def test_no_memory_growth_over_1000_training_steps():
    torch.manual_seed(0)
    model = models.mlp(in_features=16, hidden=(16,), num_classes=4).to(DEV)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = models.mlp_batch(8, in_features=16, num_classes=4)
    x, y = x.to(DEV), y.to(DEV)

    def step():
        opt.zero_grad()
        loss = models.mlp_loss(model(x), y)
        loss.backward()
        opt.step()
        return loss

    for _ in range(5):
        step()
    nw.synchronize()
    allocated, reserved = nw.memory_allocated(), nw.memory_reserved()
    for i in range(1000):
        loss = step()
        if i % 100 == 0:
            loss.item()
    del loss
    nw.synchronize()
    assert nw.memory_reserved() == reserved, "the caching allocator grew over a steady training loop"
    assert nw.memory_allocated() == allocated, "tensors leaked over 1000 steps"
