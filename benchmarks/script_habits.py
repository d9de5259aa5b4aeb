"""Habits of ordinary training and inference scripts, on the wgpu device against the CPU in one run: each
check builds the same thing on both (same seed), compares every tensor it returns (largest difference over
the largest value; NaN where the CPU has NaN), and reports ok, DIFF or ERROR. Run strict to count any
CPU fallback as an error:

    NAVITRAIN_WGPU_STRICT=1 PYTHONPATH=/tmp/site17 .venv/bin/python benchmarks/script_habits.py

transformers (for the GPT-2 generate() and BERT checks) is optional, installed as third_party_models.py says.
"""

import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import import_torchvision  # noqa: E402

import navitrain.wgpu as nw  # noqa: E402

try:  # transformers imports torchvision where it is installed; a wheel of another torch build needs the stubs
    import_torchvision()
except ImportError:
    pass

D = "wgpu"
results = []


def check(name, fn):
    try:
        torch.manual_seed(0)
        want = fn("cpu")
        torch.manual_seed(0)
        got = fn(D)

        def flat(x):
            if isinstance(x, torch.Tensor):
                return [x]
            if isinstance(x, (list, tuple)):
                return [t for y in x for t in flat(y)]
            if isinstance(x, dict):
                return [t for y in x.values() for t in flat(y)]
            return []

        errs = []
        for a, b in zip(flat(got), flat(want)):
            a = a.detach().cpu().double()
            b = b.detach().double()
            if a.shape != b.shape:
                errs.append(f"shape {tuple(a.shape)} vs {tuple(b.shape)}")
                continue
            if a.numel() == 0:
                continue
            e = ((a - b).abs().nan_to_num(0).max() / (b.abs().nan_to_num(0).max() + 1e-6)).item()
            if (a.isnan() != b.isnan()).any():
                errs.append("nan mismatch")
            if e > 1e-3:
                errs.append(f"rel {e:.1e}")
        results.append((name, "ok" if not errs else "DIFF " + ", ".join(errs[:3])))
    except Exception as e:
        if isinstance(e, ImportError):
            results.append((name, f"skipped ({e.name or e} not installed)"))
        else:
            results.append((name, f"ERROR {type(e).__name__}: {str(e)[:200]}"))


def transformer_full(d):
    m = nn.Transformer(16, 4, 2, 2, 32, 0.0, batch_first=True).to(d)
    src, tgt = torch.randn(2, 7, 16).to(d), torch.randn(2, 5, 16).to(d)
    mask = nn.Transformer.generate_square_subsequent_mask(5).to(d)
    out = m(src, tgt, tgt_mask=mask, tgt_is_causal=True)
    (out * torch.linspace(-1, 1, out.numel()).to(d).view(out.shape)).sum().backward()  # not out.sum(): a
    # LayerNorm's outputs sum to a constant, so every gradient before it would be float noise
    m.eval()
    with torch.no_grad():
        ev = m(
            src, tgt, tgt_mask=mask, src_key_padding_mask=torch.tensor([[False] * 7, [False] * 5 + [True] * 2]).to(d)
        )
    return out, ev, m.encoder.layers[0].linear1.weight.grad


check("nn.Transformer train+eval", transformer_full)


def interp(d):
    x = torch.randn(2, 3, 9, 11).to(d)
    return [
        F.interpolate(
            x, scale_factor=1.7, mode=m, **({} if m in ("nearest", "area", "nearest-exact") else {"align_corners": ac})
        )
        for m in ("bicubic", "bilinear", "area", "nearest-exact")
        for ac in (False, True)
    ]


check("interpolate modes", interp)


def emb_maxnorm(d):
    e = nn.Embedding(10, 4, max_norm=1.0).to(d)
    with torch.no_grad():
        e.weight.mul_(3)
    out = e(torch.tensor([1, 2, 2, 7]).to(d))
    out.sum().backward()
    return out, e.weight, e.weight.grad


check("Embedding max_norm", emb_maxnorm)


def dists(d):
    n = torch.distributions.Normal(torch.zeros(5).to(d), torch.ones(5).to(d))
    c = torch.distributions.Categorical(logits=torch.randn(4, 6).to(d))
    x = torch.randn(5).to(d)
    return (
        n.log_prob(x),
        c.log_prob(torch.tensor([0, 5, 2, 1]).to(d)),
        c.entropy(),
        n.cdf(x),
        torch.distributions.kl_divergence(c, c),
    )


check("distributions", dists)


def optims(d):
    outs = []
    for cls, kw in (
        (torch.optim.RMSprop, {}),
        (torch.optim.Adagrad, {}),
        (torch.optim.Adamax, {}),
        (torch.optim.NAdam, {}),
        (torch.optim.RAdam, {}),
        (torch.optim.Adadelta, {}),
        (torch.optim.ASGD, {}),
        (torch.optim.Rprop, {}),
    ):
        torch.manual_seed(1)
        lin = nn.Linear(4, 3).to(d)
        opt = cls(lin.parameters(), lr=0.01, **kw)
        for _ in range(3):
            opt.zero_grad()
            lin(torch.ones(2, 4).to(d)).pow(2).sum().backward()
            opt.step()
        outs.append(lin.weight)
    return outs


check("optimizers x8", optims)


def lbfgs(d):
    torch.manual_seed(1)
    lin = nn.Linear(4, 1).to(d)
    opt = torch.optim.LBFGS(lin.parameters(), lr=0.5, max_iter=5)
    x, y = torch.randn(8, 4).to(d), torch.randn(8, 1).to(d)

    def closure():
        opt.zero_grad()
        l = F.mse_loss(lin(x), y)
        l.backward()
        return l

    for _ in range(2):
        opt.step(closure)
    return lin.weight


check("LBFGS", lbfgs)


def sched(d):
    lin = nn.Linear(2, 2).to(d)
    opt = torch.optim.SGD(lin.parameters(), lr=0.1)
    s = torch.optim.lr_scheduler.OneCycleLR(opt, 1.0, total_steps=5)
    for _ in range(4):
        opt.zero_grad()
        lin(torch.ones(1, 2).to(d)).sum().backward()
        opt.step()
        s.step()
    return lin.weight


check("OneCycleLR", sched)


def swa(d):
    lin = nn.Linear(3, 3).to(d)
    ema = torch.optim.swa_utils.AveragedModel(lin, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(0.9))
    opt = torch.optim.SGD(lin.parameters(), lr=0.1)
    for _ in range(3):
        opt.zero_grad()
        lin(torch.ones(1, 3).to(d)).sum().backward()
        opt.step()
        ema.update_parameters(lin)
    return ema.module.weight


check("AveragedModel EMA", swa)


def cpu_round_trip(d):
    """Save or evaluate on the CPU mid-training, move back, keep the same optimizer."""
    net = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2)).to(d)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    x, y = torch.randn(6, 4), torch.randn(6, 2)
    for i in range(4):
        if i == 2:
            net.cpu()
            net.to(d)
        opt.zero_grad()
        F.mse_loss(net(x.to(d)), y.to(d)).backward()
        opt.step()
    return [p for p in net.parameters()]


check("model.cpu() and back", cpu_round_trip)


def spectral(d):
    torch.manual_seed(2)
    lin = nn.utils.parametrizations.spectral_norm(nn.Linear(5, 4)).to(d)
    out = lin(torch.randn(3, 5).to(d))
    out.sum().backward()
    return out


check("spectral_norm", spectral)


def foldunfold(d):
    x = torch.randn(2, 3, 8, 8).to(d).requires_grad_()
    u = F.unfold(x, 3, padding=1, stride=2)
    f = F.fold(u, (8, 8), 3, padding=1, stride=2)
    f.sum().backward()
    return u, f, x.grad, F.pixel_unshuffle(x.detach(), 2)


check("fold/unfold/pixel_unshuffle", foldunfold)


def gridsample(d):
    x = torch.randn(2, 3, 6, 7).to(d).requires_grad_()
    theta = torch.tensor([[[0.9, 0.1, 0.05], [-0.1, 1.1, 0.0]]] * 2).to(d)
    grid = F.affine_grid(theta, (2, 3, 5, 5), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    out.sum().backward()
    return out, x.grad


check("affine_grid/grid_sample", gridsample)


def half(d):
    m = nn.Sequential(nn.Linear(8, 8), nn.GELU(), nn.LayerNorm(8)).to(d).half()
    return m(torch.randn(4, 8).to(d).half()).float()


check("model.half()", half)


def misc(d):
    a, b = torch.randn(5, 3).to(d), torch.randn(4, 3).to(d)
    return (
        torch.cdist(a, b),
        torch.einsum("ik,jk->ij", a, b),
        torch.bucketize(a, torch.tensor([-1.0, 0.0, 1.0]).to(d)),
        torch.cumprod(a, 0),
        torch.logcumsumexp(a, 0),
        torch.tril_indices(4, 4).to(d),
    )


check("cdist/einsum/bucketize/cumprod", misc)


def gru_packed_eval(d):
    g = nn.GRU(4, 5, batch_first=True, bidirectional=True).to(d).eval()
    x = torch.randn(3, 6, 4).to(d)
    p = nn.utils.rnn.pack_padded_sequence(x, torch.tensor([6, 4, 2]), batch_first=True)
    with torch.no_grad():
        out, h = g(p)
    return nn.utils.rnn.pad_packed_sequence(out, batch_first=True)[0], h


check("GRU packed eval", gru_packed_eval)


def decoder_eval(d):
    dec = (
        nn.TransformerDecoder(nn.TransformerDecoderLayer(16, 4, 32, 0.0, batch_first=True, norm_first=True), 2)
        .to(d)
        .eval()
    )
    with torch.no_grad():
        return dec(
            torch.randn(2, 5, 16).to(d),
            torch.randn(2, 7, 16).to(d),
            tgt_is_causal=True,
            tgt_mask=nn.Transformer.generate_square_subsequent_mask(5).to(d),
            memory_key_padding_mask=torch.tensor([[False] * 7, [False] * 4 + [True] * 3]).to(d),
        )


check("TransformerDecoder eval", decoder_eval)


def hf_generate(d):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    m = GPT2LMHeadModel(GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=4, n_positions=64)).eval().to(d)
    ids = torch.randint(0, 100, (2, 5)).to(d)
    return m.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=0, attention_mask=torch.ones_like(ids))


check("HF GPT-2 generate (kv cache)", hf_generate)


def hf_bert_eval(d):
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    m = (
        BertModel(
            BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
        )
        .eval()
        .to(d)
    )
    ids = torch.randint(0, 100, (2, 9)).to(d)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    with torch.no_grad():
        return m(input_ids=ids, attention_mask=mask).last_hidden_state


check("HF BERT eval with padding", hf_bert_eval)

for n, r in results:
    print(f"{n:34} {r}")
print(nw.fallback_report())
