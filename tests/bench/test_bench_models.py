"""The shared workload models: standard shapes, synthetic data that can be learned, losses that train."""
import pytest
import torch

from navitrain.bench import models as m


def test_cifar_resnet18_has_the_standard_parameter_count():
    # CIFAR ResNet-18 (3x3 stem, no max-pool, 10 classes) is widely quoted at 11,173,962 parameters.
    assert m.parameter_count(m.cifar_resnet18()) == 11_173_962


def test_cifar_resnet18_keeps_full_resolution_in_stage_one():
    model = m.cifar_resnet18(width=8)
    assert not any(isinstance(layer, torch.nn.MaxPool2d) for layer in model.modules())
    stem_conv = model.stem[0]
    assert stem_conv.kernel_size == (3, 3) and stem_conv.stride == (1, 1)
    assert len(model.stages) == 8


def test_mnist_net_matches_the_classic_shape():
    model = m.mnist_net()
    assert model.fc1.in_features == 9216 and model.fc1.out_features == 128
    out = model.eval()(torch.randn(3, 1, 28, 28))
    # log_softmax rows are log-probabilities
    torch.testing.assert_close(out.exp().sum(1), torch.ones(3))


def test_gpt_decoder_is_causal_and_ties_its_head():
    torch.manual_seed(1)
    model = m.gpt_decoder(vocab=50, context=12, d_model=16, layers=2, heads=4).eval()
    assert model.head.weight is model.token_embedding.weight
    tokens = torch.randint(0, 50, (2, 12))
    changed = tokens.clone()
    changed[:, 8:] = (changed[:, 8:] + 7) % 50
    with torch.no_grad():
        a, b = model(tokens), model(changed)
    torch.testing.assert_close(a[:, :8], b[:, :8])  # the past never sees the future
    assert not torch.allclose(a[:, 8:], b[:, 8:])
    with pytest.raises(ValueError, match="context"):
        model(torch.randint(0, 50, (1, 13)))


def test_transformer_lm_is_causal_and_matches_on_wgpu():
    """The nn.TransformerEncoder LM (bench_wgpu_train.py's tlm): causal, and the same logits on wgpu."""
    import navitrain.wgpu  # noqa: F401

    torch.manual_seed(2)
    model = m.transformer_lm(vocab=40, d_model=16, heads=2, feedforward=32, layers=2, context=10).eval()
    tokens = torch.randint(0, 40, (2, 10))
    changed = tokens.clone()
    changed[:, 6:] = (changed[:, 6:] + 5) % 40
    with torch.no_grad():
        a, b = model(tokens), model(changed)
        on_wgpu = model.to("wgpu")(tokens.to("wgpu")).cpu()
    torch.testing.assert_close(a[:, :6], b[:, :6])   # the past never sees the future
    assert not torch.allclose(a[:, 6:], b[:, 6:])
    torch.testing.assert_close(on_wgpu, a, rtol=1e-4, atol=1e-4)


def test_gpt_batch_targets_are_inputs_shifted_by_one():
    x, y = m.gpt_batch(3, context=10, vocab=40, seed=5)
    assert x.shape == y.shape == (3, 10) and x.dtype == torch.long
    torch.testing.assert_close(x[:, 1:], y[:, :-1])


def test_unet_keeps_the_image_size_and_uses_both_upsamplers():
    model = m.unet_small(in_channels=3, out_channels=2, width=4)
    kinds = {type(layer) for layer in model.modules()}
    assert torch.nn.ConvTranspose2d in kinds and torch.nn.Upsample in kinds
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 2, 16, 16)
    with pytest.raises(ValueError, match="divisible by 4"):
        m.unet_batch(1, image_size=18)


def test_batches_are_reproducible_per_seed_and_differ_between_seeds():
    a = m.cifar_batch(4, image_size=8, seed=3)
    b = m.cifar_batch(4, image_size=8, seed=3)
    c = m.cifar_batch(4, image_size=8, seed=4)
    torch.testing.assert_close(a[0], b[0])
    assert torch.equal(a[1], b[1])
    assert not torch.allclose(a[0], c[0])


TINY = {
    "mlp": (lambda: m.mlp(32, (64,), 4), lambda s: m.mlp_batch(32, 32, 4, seed=s), m.mlp_loss),
    "cifar_resnet18": (lambda: m.cifar_resnet18(num_classes=4, width=4),
                       lambda s: m.cifar_batch(16, image_size=8, num_classes=4, seed=s), m.cifar_loss),
    "gpt_decoder": (lambda: m.gpt_decoder(vocab=32, context=8, d_model=16, layers=1, heads=2),
                    lambda s: m.gpt_batch(16, context=8, vocab=32, seed=s), m.gpt_loss),
    "unet_small": (lambda: m.unet_small(width=4), lambda s: m.unet_batch(8, image_size=8, seed=s), m.unet_loss),
    "mnist_net": (lambda: m.mnist_net(image_size=12, channels=(4, 8), hidden=128, num_classes=4),
                  lambda s: m.mnist_batch(16, image_size=12, num_classes=4, seed=s), m.mnist_loss),
}


@pytest.mark.parametrize("name", sorted(TINY))
def test_tiny_model_learns_fresh_synthetic_batches(name):
    build, batch, loss_fn = TINY[name]
    torch.manual_seed(0)
    model = build()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for step in range(25):
        x, y = batch(step)  # a fresh batch every step: only a real rule can be learned
        loss = loss_fn(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.8 * first, (name, first, last)
    # the model is judged on data it has never seen
    model.eval()
    with torch.no_grad():
        held_out = loss_fn(model(batch(10_000)[0]), batch(10_000)[1]).item()
    assert held_out < first
