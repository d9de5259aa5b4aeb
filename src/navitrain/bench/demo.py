"""The short real training run of `navitrain run`: a small CNN of the classic MNIST network's shape
learns a synthetic digit task on the chosen device, on fresh batches every step, and is then scored on
batches it never saw.

It runs in the caller's process on the device `navitrain.device()` returned: this is what a user's
own training script would do, so it is the honest end-to-end check. The network is the MNIST shape at
a quarter of the channels (8 and 16, 150 k parameters): the full one (1.2 M) takes tens of seconds a
step on a software Vulkan rasteriser, and a demo must finish in a few minutes on any route; a time
budget stops it early on anything slower still.

The digit images alone would be too easy (every held-out image classified right after 30 steps, which
says nothing), so LABEL_NOISE of the labels, in training and in the held-out set alike, are replaced by
random ones, as mislabelled examples are in real data sets. No model can then score above the share of
held-out labels that are still the true class: that ceiling is measured on the held-out set and reported
beside chance level, so "86% (chance 10%, best possible 87%)" says how much of the rule was learned.
"""
from __future__ import annotations

import time
from typing import Any, Callable

from navitrain.bench import models

StepCallback = Callable[[int, int, float], None]


CHANNELS = (8, 16)
HIDDEN = 64
NUM_CLASSES = 10
LABEL_NOISE = 0.15
HELD_OUT_BATCHES = 4


def _batch(batch_size: int, seed: int, device):
    """(images, labels with LABEL_NOISE of them replaced by random classes, the true classes), made on the
    CPU from `seed` so every route sees the same data."""
    import torch

    x, truth = models.mnist_batch(batch_size, num_classes=NUM_CLASSES, seed=seed)
    gen = torch.Generator().manual_seed(seed ^ 0x5EED)
    replaced = torch.rand(batch_size, generator=gen) < LABEL_NOISE
    labels = torch.where(replaced, torch.randint(0, NUM_CLASSES, (batch_size,), generator=gen), truth)
    return x.to(device), labels.to(device), truth


def train(device, *, steps: int = 30, batch_size: int = 32, seed: int = 0, max_seconds: float | None = 90.0,
          on_step: StepCallback | None = None) -> dict[str, Any]:
    """Train the small MNIST-shaped CNN for `steps` steps with Adam (fewer when `max_seconds` runs out,
    never fewer than 2); return losses, held-out accuracy and timings."""
    import torch

    if steps < 2:
        raise ValueError(f"steps must be at least 2, got {steps}")
    torch.manual_seed(seed)
    started = time.perf_counter()
    model = models.mnist_net(channels=CHANNELS, hidden=HIDDEN).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3, foreach=False)
    train = models.train_step(model, optimizer, models.mnist_loss)
    losses: list[float] = []
    for step in range(steps):
        if step >= 2 and max_seconds is not None and time.perf_counter() - started > max_seconds:
            break
        # fresh data every step: the falling loss shows learning, not memorising
        x, y, _ = _batch(batch_size, seed * 100_003 + step, device)
        losses.append(float(train(x, y).item()))
        if on_step is not None:
            on_step(step + 1, steps, losses[-1])
    train_s = time.perf_counter() - started

    model.eval()
    correct = total = still_true = 0
    with torch.no_grad():
        for index in range(HELD_OUT_BATCHES):
            x, y, truth = _batch(64, 10_000_000 + index, device)
            correct += int((model(x).argmax(dim=1) == y).sum().item())
            still_true += int((y.cpu() == truth).sum())  # what a model that knows the rule scores
            total += y.shape[0]
    done = len(losses)
    window = max(1, done // 5)
    return {
        "model": f"MNIST-shaped CNN (conv 1-{CHANNELS[0]}-{CHANNELS[1]}, fc {model.fc1.in_features}-{HIDDEN}-10; "
                 f"{models.parameter_count(model):,} parameters)",
        "device": str(device),
        "steps": done,
        "steps_asked": steps,
        "stopped_by_time_budget": done < steps,
        "batch_size": batch_size,
        "losses": losses,
        "loss_start": sum(losses[:window]) / window,
        "loss_end": sum(losses[-window:]) / window,
        "held_out_accuracy": correct / total,
        "held_out_samples": total,
        "chance_accuracy": 1 / NUM_CLASSES,
        "best_possible_accuracy": still_true / total,
        "label_noise": LABEL_NOISE,
        "seconds": train_s,
        "samples_per_s": done * batch_size / train_s,
    }
