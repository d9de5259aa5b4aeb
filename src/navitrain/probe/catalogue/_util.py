"""Small helpers shared by catalogue cases."""
from __future__ import annotations

from navitrain.probe.inputs import randn, torch


def backward(out, *leaves):
    """Backpropagate a random upstream gradient (not ones: a sum hides transposed or mixed-up
    gradients) and return the leaves' gradients. Written as a weighted sum because
    `out.backward(gradient)` makes torch import its symbolic-shapes machinery (half a second per child)."""
    upstream = randn(*out.shape, device=out.device, dtype=out.dtype)
    (out * upstream).sum().backward()
    return tuple(leaf.grad for leaf in leaves)


def leaf(t):
    """A tensor that collects a gradient."""
    return t.detach().requires_grad_(True)


def module_grads(m) -> dict:
    return {f"grad {name}": p.grad for name, p in m.named_parameters() if p.grad is not None}


def distinct(*shape: int, device, dtype):
    """Random values that are all different (a shuffled grid), so sorts and argmax have no ties that
    two correct implementations could break differently."""
    n = 1
    for size in shape:
        n *= size
    grid = torch.randperm(n).reshape(shape).to(torch.float32) * (8.0 / n) - 4.0
    return grid.to(device=device, dtype=dtype)
