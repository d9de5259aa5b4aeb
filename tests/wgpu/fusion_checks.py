"""Shared by the tests of compiled-graph fusion passes: a few forward/backward steps of a model eagerly or
compiled, with fusion on or off, and the comparison of a fused run against the same graphs unfused, eager
wgpu and the CPU."""
import copy

import torch

from navitrain.wgpu import fusion
from navitrain.wgpu.runtime import runtime


def train_steps(model, x, device, compiled, fuse=True, steps=3, channels_last=False):
    """(output, parameter gradients, state dict, dispatches of the last step) after `steps` forward and
    backward calls of a copy of `model` on `device`, the loss weighting each output element differently."""
    fusion.ENABLED = fuse
    try:
        net = copy.deepcopy(model).to(device)
        if channels_last:
            net = net.to(memory_format=torch.channels_last)
        run = torch.compile(net, backend="wgpu") if compiled else net
        xd = x.to(device)
        if channels_last:
            xd = xd.contiguous(memory_format=torch.channels_last)
        dispatches = 0
        for _ in range(steps):
            net.zero_grad(set_to_none=True)
            if device == "wgpu":
                runtime().synchronize()
                before = runtime().dispatch_count
            out = run(xd)
            (out * torch.linspace(-1, 2, out.numel(), device=device).view(out.shape)).sum().backward()
            if device == "wgpu":
                dispatches = runtime().dispatch_count - before
    finally:
        fusion.ENABLED = True
    state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    grads = {k: p.grad.cpu() for k, p in net.named_parameters()}
    return out.detach().cpu(), grads, state, dispatches


def assert_matches_unfused_eager_and_cpu(fused, unfused, eager, cpu):
    """Each argument is train_steps' (output, gradients, ...): the fused run against the others, NaN where
    they have NaN."""
    (out, grads), (out_u, grads_u), (out_e, grads_e), (out_c, grads_c) = (r[:2] for r in (fused, unfused, eager, cpu))
    torch.testing.assert_close(out, out_u, rtol=1e-5, atol=1e-5, equal_nan=True)
    torch.testing.assert_close(out, out_e, rtol=1e-5, atol=1e-5, equal_nan=True)
    torch.testing.assert_close(out, out_c, rtol=1e-4, atol=1e-4, equal_nan=True)
    for name in grads:
        torch.testing.assert_close(grads[name], grads_u[name], rtol=1e-4, atol=1e-5, equal_nan=True, msg=name)
        torch.testing.assert_close(grads[name], grads_e[name], rtol=1e-4, atol=1e-5, equal_nan=True, msg=name)
        torch.testing.assert_close(grads[name], grads_c[name], rtol=1e-3, atol=1e-4, equal_nan=True, msg=name)
