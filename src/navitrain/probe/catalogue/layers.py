"""Pooling, normalisation, softmax and losses, embedding, dropout, attention: forward and backward."""
from __future__ import annotations

from navitrain.probe.cases import case
from navitrain.probe.catalogue._util import backward, distinct, leaf, module_grads
from navitrain.probe.inputs import F, module, nn, randint, randn, torch


def _fwd_bwd(fn, x):
    x = leaf(x)
    y = fn(x)
    (gx,) = backward(y, x)
    return y, gx


@case("maxpool2d", dtype="float32", group="pooling")
def maxpool2d(device, dtype):
    """MaxPool2d(3, stride 2, padding 1) and MaxPool2d(2): outputs, indices and gradients (distinct
    inputs, so every window has one maximum)."""
    x = distinct(2, 4, 13, 11, device=device, dtype=dtype)
    y, gx = _fwd_bwd(lambda t: F.max_pool2d(t, 3, stride=2, padding=1), x)
    y2, gx2 = _fwd_bwd(lambda t: F.max_pool2d(t, 2), x)
    _, indices = F.max_pool2d(x, 2, return_indices=True)
    return y, gx, y2, gx2, indices


@case("avgpool2d-adaptive", dtype="float32", group="pooling")
def avgpool2d_adaptive(device, dtype):
    """AvgPool2d(2), AvgPool2d(3, stride 2, padding 1) and AdaptiveAvgPool2d(1) and (3, 3), with gradients."""
    x = randn(2, 5, 12, 9, device=device, dtype=dtype)
    outs = {}
    for name, fn in (("avg 2", lambda t: F.avg_pool2d(t, 2)),
                     ("avg 3/2 pad 1", lambda t: F.avg_pool2d(t, 3, stride=2, padding=1)),
                     ("adaptive 1", lambda t: F.adaptive_avg_pool2d(t, 1)),
                     ("adaptive 3x3", lambda t: F.adaptive_avg_pool2d(t, (3, 3)))):
        outs[name], outs[f"grad {name}"] = _fwd_bwd(fn, x)
    return outs


@case("batchnorm2d-train", dtype="float32", essential=True, group="norm")
def batchnorm2d_train(device, dtype):
    """BatchNorm2d(8) in training mode, forward and backward, and the running statistics it updates
    (MIOpen's batch-norm kernels are where RDNA1's missing DPP instructions bite)."""
    bn = module(nn.BatchNorm2d(8), device, dtype)
    with torch.no_grad():
        bn.weight.copy_(randn(8, device=device, dtype=dtype))
        bn.bias.copy_(randn(8, device=device, dtype=dtype))
    x = leaf(randn(4, 8, 6, 7, device=device, dtype=dtype) * 2 + 0.5)
    y = bn(x)
    (gx,) = backward(y, x)
    return {"output": y, "grad input": gx, **module_grads(bn), "running mean": bn.running_mean,
            "running var": bn.running_var}


@case("batchnorm2d-eval", dtype="float32", group="norm")
def batchnorm2d_eval(device, dtype):
    """BatchNorm2d in eval mode (inference path with stored statistics) and BatchNorm1d in training mode."""
    bn = module(nn.BatchNorm2d(6), device, dtype)
    with torch.no_grad():
        bn.running_mean.copy_(randn(6, device=device, dtype=dtype))
        bn.running_var.copy_(randn(6, device=device, dtype=dtype).abs() + 0.5)
    bn.eval()
    bn1d = module(nn.BatchNorm1d(10), device, dtype)
    y1, gx1 = _fwd_bwd(bn1d, randn(16, 10, device=device, dtype=dtype))
    return bn(randn(3, 6, 5, 5, device=device, dtype=dtype)), y1, gx1


@case("layernorm", dtype="float32", group="norm")
def layernorm(device, dtype):
    """LayerNorm(32) with affine parameters on a (4, 10, 32) input: output and all gradients."""
    ln = module(nn.LayerNorm(32), device, dtype)
    with torch.no_grad():
        ln.weight.copy_(randn(32, device=device, dtype=dtype))
        ln.bias.copy_(randn(32, device=device, dtype=dtype))
    y, gx = _fwd_bwd(ln, randn(4, 10, 32, device=device, dtype=dtype) * 3 + 1)
    return {"output": y, "grad input": gx, **module_grads(ln)}


@case("groupnorm", dtype="float32", group="norm")
def groupnorm(device, dtype):
    """GroupNorm(4 groups, 8 channels): output and gradients."""
    gn = module(nn.GroupNorm(4, 8), device, dtype)
    y, gx = _fwd_bwd(gn, randn(2, 8, 6, 6, device=device, dtype=dtype))
    return {"output": y, "grad input": gx, **module_grads(gn)}


@case("softmax-logsoftmax", dtype="float32", group="loss")
def softmax_logsoftmax(device, dtype):
    """softmax and log_softmax over the last and a middle dimension, with gradients; large logits."""
    x = randn(6, 9, 50, device=device, dtype=dtype) * 8
    s, gs = _fwd_bwd(lambda t: F.softmax(t, dim=-1), x)
    ls, gls = _fwd_bwd(lambda t: F.log_softmax(t, dim=1), x)
    return s, gs, ls, gls


@case("cross-entropy", dtype="float32", group="loss")
def cross_entropy(device, dtype):
    """cross_entropy (mean, label smoothing, ignore_index) and nll_loss with gradients."""
    logits = randn(16, 10, device=device, dtype=dtype) * 3
    target = randint(10, 16, device=device)
    target[3] = -100
    outs = {}
    for name, fn in (("mean", lambda t: F.cross_entropy(t, target)),
                     ("label smoothing", lambda t: F.cross_entropy(t, target, label_smoothing=0.1)),
                     ("sum", lambda t: F.cross_entropy(t, target, reduction="sum")),
                     ("nll", lambda t: F.nll_loss(F.log_softmax(t, dim=1), target))):
        x = leaf(logits)
        loss = fn(x)
        loss.backward()
        outs[name], outs[f"grad {name}"] = loss, x.grad
    return outs


@case("regression-losses", dtype="float32", group="loss")
def regression_losses(device, dtype):
    """mse_loss, l1_loss, smooth_l1_loss, binary_cross_entropy_with_logits, with gradients."""
    pred = randn(8, 12, device=device, dtype=dtype)
    target = randn(8, 12, device=device, dtype=dtype)
    labels = (randn(8, 12, device=device, dtype=dtype) > 0).to(dtype)
    outs = {}
    for name, fn in (("mse", lambda t: F.mse_loss(t, target)), ("l1", lambda t: F.l1_loss(t, target)),
                     ("smooth l1", lambda t: F.smooth_l1_loss(t, target)),
                     ("bce with logits", lambda t: F.binary_cross_entropy_with_logits(t, labels))):
        x = leaf(pred)
        loss = fn(x)
        loss.backward()
        outs[name], outs[f"grad {name}"] = loss, x.grad
    return outs


@case("embedding", dtype="float32", group="embedding")
def embedding(device, dtype):
    """nn.Embedding(50, 16, padding_idx 0) with repeated indices: output and the accumulated weight grad."""
    emb = module(nn.Embedding(50, 16, padding_idx=0), device, dtype)
    idx = randint(50, 4, 20, device=device)
    idx[0, :3] = 0
    idx[1, :5] = 7  # repeated index: gradients must accumulate
    y = emb(idx)
    backward(y)
    return {"output": y, **module_grads(emb)}


@case("dropout-statistics", dtype="float32", rtol=0.0, atol=0.05, group="dropout")
def dropout_statistics(device, dtype):
    """Dropout(p=0.3) in training mode: the dropped fraction, the scale of kept values and a gradient
    that follows the same mask (statistics, not values: the device's random numbers differ)."""
    x = randn(256, 512, device=device, dtype=dtype) + 3.0  # never 0, so a zero output means dropped
    upstream = randn(256, 512, device=device, dtype=dtype).abs() + 0.1
    x = leaf(x)
    y = F.dropout(x, p=0.3, training=True)
    (y * upstream).sum().backward()
    kept = y != 0
    ratio = (y[kept] / x.detach()[kept]).mean()
    grad_ratio = (x.grad[kept] / upstream[kept]).mean()
    # Each statistic is 1 when dropout is right; 0.05 is 8 standard deviations of the dropped fraction.
    stats = torch.stack([(~kept).to(dtype).mean() / 0.3, ratio * 0.7, grad_ratio * 0.7])
    mask_disagreements = ((x.grad != 0) != kept).sum()
    return {"dropped fraction/p, kept scale and grad scale times (1-p)": stats,
            "positions where gradient and output masks disagree": mask_disagreements,
            "eval mode is the identity": F.dropout(x.detach(), p=0.3, training=False)}


@case("sdpa", dtype="float32", group="attention")
def sdpa(device, dtype):
    """scaled_dot_product_attention with a float mask, and causal, forward and backward."""
    q, k, v = (leaf(randn(2, 4, 16, 8, device=device, dtype=dtype)) for _ in range(3))
    mask = randn(16, 16, device=device, dtype=dtype)
    y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    gq, gk, gv = backward(y, q, k, v)
    q2, k2, v2 = (leaf(t.detach()) for t in (q, k, v))
    yc = F.scaled_dot_product_attention(q2, k2, v2, is_causal=True)
    gq2, gk2, gv2 = backward(yc, q2, k2, v2)
    return {"masked": y, "grad q": gq, "grad k": gk, "grad v": gv, "causal": yc, "causal grad q": gq2,
            "causal grad k": gk2, "causal grad v": gv2}
