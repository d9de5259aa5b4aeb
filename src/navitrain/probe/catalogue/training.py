"""Optimiser steps, autocast, and the two short training runs navitrain.device() trusts a route by."""
from __future__ import annotations

from navitrain.probe.cases import case
from navitrain.probe.inputs import F, module, nn, randint, randn, require_autocast, torch


def _params_with_grads(device, dtype, steps):
    """Three parameter tensors and, per step, random gradients for them (all drawn up front, on the CPU)."""
    shapes = ((20, 30), (30,), (5, 4, 3, 3))
    params = [randn(*s, device=device, dtype=dtype).requires_grad_(True) for s in shapes]
    grads = [[randn(*s, device=device, dtype=dtype) for s in shapes] for _ in range(steps)]
    return params, grads


def _run_optimizer(opt_class, device, dtype, **options):
    params, grads = _params_with_grads(device, dtype, steps=3)
    opt = opt_class(params, **options)
    for step_grads in grads:
        for p, g in zip(params, step_grads):
            p.grad = g.clone()
        opt.step()
    state = {f"param {i}": p.detach() for i, p in enumerate(params)}
    for i, p in enumerate(params):
        for key, value in opt.state[p].items():
            if torch.is_tensor(value) and value.dim() > 0:
                state[f"{key} {i}"] = value
    return state


@case("sgd-step", dtype="float32", group="optim")
def sgd_step(device, dtype):
    """Three torch.optim.SGD steps (momentum 0.9, Nesterov, weight decay): parameters and momentum buffers."""
    return _run_optimizer(torch.optim.SGD, device, dtype, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4)


@case("adamw-step", dtype="float32", group="optim")
def adamw_step(device, dtype):
    """Three torch.optim.AdamW steps: parameters and both moment estimates."""
    return _run_optimizer(torch.optim.AdamW, device, dtype, lr=1e-2, weight_decay=0.01)


def _autocast_case(device, dtype, amp_dtype):
    """Linear and conv layers under autocast, loss and backward; the reference (float64) runs without
    autocast, since autocast leaves float64 alone."""
    amp = dtype != torch.float64
    if amp:
        require_autocast(device, amp_dtype)
    param_dtype = torch.float32 if amp else dtype
    net = module(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 10)),
                 device, param_dtype)
    x = randn(4, 3, 6, 6, device=device, dtype=param_dtype)
    target = randint(10, 4, device=device)
    with torch.autocast(device.type, dtype=amp_dtype, enabled=amp):
        logits = net(x)
        loss = F.cross_entropy(logits, target)
    loss.backward()
    return {"logits": logits.float() if amp else logits, "loss": loss,
            **{f"grad {n}": p.grad for n, p in net.named_parameters()}}


@case("autocast-fp16", dtype="float16", group="autocast")
def autocast_fp16(device, dtype):
    """torch.autocast(float16): a conv+linear forward, loss and backward (mixed-precision training)."""
    return _autocast_case(device, dtype, torch.float16)


@case("autocast-bf16", dtype="bfloat16", group="autocast")
def autocast_bf16(device, dtype):
    """torch.autocast(bfloat16): a conv+linear forward, loss and backward."""
    return _autocast_case(device, dtype, torch.bfloat16)


def _tiny_cnn():
    """Conv, BatchNorm, ReLU, MaxPool, Conv, ReLU, global average pool, Linear: a small image classifier."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))


@case("tiny-cnn-3-steps", dtype="float32", essential=True, group="training")
def tiny_cnn_3_steps(device, dtype):
    """Three SGD (momentum) training steps of a small CNN on random 16x16 images: losses, final
    weights and the trained model's predictions."""
    net = module(_tiny_cnn(), device, dtype)
    batches = [(randn(8, 3, 16, 16, device=device, dtype=dtype), randint(10, 8, device=device)) for _ in range(3)]
    held_out = randn(4, 3, 16, 16, device=device, dtype=dtype)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    losses = []
    net.train()
    for x, y in batches:
        opt.zero_grad()
        loss = F.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.detach())
    net.eval()
    with torch.no_grad():
        logits = net(held_out)
    return {"losses": torch.stack(losses), "first conv weight": net[0].weight.detach(),
            "linear weight": net[-1].weight.detach(), "held-out logits": logits}


def _tiny_transformer(vocab, width, length):
    # Defined here, not at module level: nn is imported lazily, so the catalogue lists without torch.
    class TinyLM(nn.Module):
        """Token and position embeddings, one causal TransformerEncoderLayer, a linear head."""

        def __init__(self):
            super().__init__()
            self.tokens = nn.Embedding(vocab, width)
            self.positions = nn.Parameter(torch.randn(length, width) * 0.1)
            self.block = nn.TransformerEncoderLayer(width, nhead=4, dim_feedforward=2 * width, dropout=0.0,
                                                    activation="gelu", batch_first=True)
            self.head = nn.Linear(width, vocab)

        def forward(self, idx, mask):
            h = self.tokens(idx) + self.positions[: idx.shape[1]]
            return self.head(self.block(h, src_mask=mask, is_causal=True))

    return TinyLM()


@case("tiny-transformer-3-steps", dtype="float32", essential=True, group="training")
def tiny_transformer_3_steps(device, dtype):
    """Three AdamW steps of a one-block causal transformer language model: losses and held-out logits."""
    vocab, width, length = 40, 32, 12
    net = module(_tiny_transformer(vocab, width, length), device, dtype)
    mask = nn.Transformer.generate_square_subsequent_mask(length).to(device=device, dtype=dtype)
    batches = [randint(vocab, 4, length + 1, device=device) for _ in range(3)]
    held_out = randint(vocab, 2, length, device=device)
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3)
    losses = []
    net.train()
    for seq in batches:
        opt.zero_grad()
        logits = net(seq[:, :-1], mask)
        loss = F.cross_entropy(logits.reshape(-1, vocab), seq[:, 1:].reshape(-1))
        loss.backward()
        opt.step()
        losses.append(loss.detach())
    with torch.no_grad():
        logits = net(held_out, mask)
    return {"losses": torch.stack(losses), "held-out logits": logits}
