"""The short real training run of `navitrain run`: the classic MNIST-shaped CNN learns a synthetic digit
task on the chosen device, on fresh batches every step, and is then scored on batches it never saw.

It runs in the caller's process on the device `navitrain.device()` returned: this is what a user's
own training script would do, so it is the honest end-to-end check.
"""
from __future__ import annotations

import time
from typing import Any, Callable

from navitrain.bench import models

StepCallback = Callable[[int, int, float], None]


def train(device, *, steps: int = 40, batch_size: int = 32, seed: int = 0,
          on_step: StepCallback | None = None) -> dict[str, Any]:
    """Train mnist_net for `steps` steps with Adam; return losses, held-out accuracy and timings."""
    import torch

    if steps < 2:
        raise ValueError(f"steps must be at least 2, got {steps}")
    torch.manual_seed(seed)
    started = time.perf_counter()
    model = models.mnist_net().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, foreach=False)
    losses: list[float] = []
    for step in range(steps):
        # fresh data every step: the falling loss shows learning, not memorising
        x, y = models.mnist_batch(batch_size, seed=seed * 100_003 + step, device=device)
        optimizer.zero_grad(set_to_none=True)
        loss = models.mnist_loss(model(x), y)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.item()))
        if on_step is not None:
            on_step(step + 1, steps, losses[-1])
    train_s = time.perf_counter() - started

    model.eval()
    correct = total = 0
    with torch.no_grad():
        for index in range(4):
            x, y = models.mnist_batch(64, seed=10_000_000 + index, device=device)
            correct += int((model(x).argmax(dim=1) == y).sum().item())
            total += y.shape[0]
    window = max(1, steps // 5)
    return {
        "model": "mnist_net (conv 1-32-64, fc 9216-128-10)",
        "device": str(device),
        "steps": steps,
        "batch_size": batch_size,
        "losses": losses,
        "loss_start": sum(losses[:window]) / window,
        "loss_end": sum(losses[-window:]) / window,
        "held_out_accuracy": correct / total,
        "chance_accuracy": 0.1,
        "seconds": train_s,
        "samples_per_s": steps * batch_size / train_s,
    }
