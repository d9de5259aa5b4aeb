"""Standard training workloads from plain torch.nn, with synthetic data and a loss for each.

Shared by `navitrain bench`, `navitrain run` and the wgpu tests, so every model here sticks to layers
that any PyTorch device must support. Each model comes with:
  - a builder (`mlp`, `cifar_resnet18`, `gpt_decoder`, `lstm_lm`, `unet_small`, `mnist_net`), sizes configurable so
    tests can build tiny versions;
  - a batch function `<model>_batch(batch_size, ..., seed=0, device="cpu") -> (inputs, targets)`;
  - a loss function `<model>_loss(output, targets) -> scalar tensor`.

Synthetic data is *learnable* (labels follow from the inputs through a fixed hidden rule), so fresh
batches still make the loss go down and a training run shows real learning. Batches are generated on
the CPU from a seeded torch.Generator and then moved, so every route sees exactly the same numbers for
the same seed (the bench compares first-step losses with the CPU).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# The hidden rules behind the labels come from this seed, never from the batch seed: batches with
# different seeds must share one rule or there would be nothing to learn.
_RULE_SEED = 20240229


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))


def _rule_generator(salt: int) -> torch.Generator:
    return torch.Generator().manual_seed(_RULE_SEED + salt)


# --------------------------------------------------------------------------------------------- MLP

def mlp(in_features: int = 784, hidden: tuple[int, ...] = (512, 512), num_classes: int = 10) -> nn.Sequential:
    """A plain ReLU multilayer perceptron classifier."""
    layers: list[nn.Module] = []
    width = in_features
    for size in hidden:
        layers += [nn.Linear(width, size), nn.ReLU()]
        width = size
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


def mlp_batch(batch_size: int, in_features: int = 784, num_classes: int = 10, *, seed: int = 0,
              device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Each class owns a fixed random feature vector; an input is its class vector plus as much noise."""
    prototypes = torch.randn(num_classes, in_features, generator=_rule_generator(1))
    gen = _generator(seed)
    y = torch.randint(0, num_classes, (batch_size,), generator=gen)
    x = prototypes[y] + torch.randn(batch_size, in_features, generator=gen)
    return x.to(device), y.to(device)


def mlp_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, targets)


# ---------------------------------------------------------------------------------- image classes

def _class_images(batch_size: int, channels: int, size: int, num_classes: int, seed: int,
                  salt: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each class owns a fixed random pattern; an image is its class pattern plus as much noise."""
    patterns = torch.randn(num_classes, channels, size, size, generator=_rule_generator(salt))
    gen = _generator(seed)
    labels = torch.randint(0, num_classes, (batch_size,), generator=gen)
    noise = torch.randn(batch_size, channels, size, size, generator=gen)
    return patterns[labels] + noise, labels


# ------------------------------------------------------------------------- CIFAR-style ResNet-18

class BasicBlock(nn.Module):
    """Two 3x3 convolutions with BatchNorm and an identity (or 1x1 projection) shortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet for 32x32 images: a 3x3 stem without max-pool keeps the full resolution in stage one."""

    def __init__(self, blocks: tuple[int, ...] = (2, 2, 2, 2), num_classes: int = 10, width: int = 64,
                 in_channels: int = 3):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
        )
        stages: list[nn.Module] = []
        channels = width
        for index, count in enumerate(blocks):
            out_channels = width * 2 ** index
            for block in range(count):
                stride = 2 if index > 0 and block == 0 else 1
                stages.append(BasicBlock(channels, out_channels, stride))
                channels = out_channels
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))
        return self.fc(torch.flatten(self.pool(x), 1))


def cifar_resnet18(num_classes: int = 10, width: int = 64, blocks: tuple[int, ...] = (2, 2, 2, 2)) -> CifarResNet:
    """CIFAR-style ResNet-18 (BasicBlocks [2,2,2,2]); `width` 64 is the standard model, 8 a tiny one."""
    return CifarResNet(blocks=blocks, num_classes=num_classes, width=width)


def cifar_batch(batch_size: int, image_size: int = 32, num_classes: int = 10, channels: int = 3, *,
                seed: int = 0, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    x, y = _class_images(batch_size, channels, image_size, num_classes, seed, salt=2)
    return x.to(device), y.to(device)


def cifar_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, targets)


# ----------------------------------------------------------------------------- GPT-style decoder

class CausalSelfAttention(nn.Module):
    def __init__(self, d_model: int, heads: int):
        super().__init__()
        if d_model % heads:
            raise ValueError(f"d_model={d_model} is not divisible by heads={heads}")
        self.heads = heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, d_model = x.shape
        q, k, v = self.qkv(x).split(d_model, dim=2)
        # (batch, length, d_model) -> (batch, heads, length, head_dim)
        q, k, v = (t.view(batch, length, self.heads, -1).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(out.transpose(1, 2).reshape(batch, length, d_model))


class DecoderBlock(nn.Module):
    """Pre-LayerNorm transformer block: causal attention, then a 4x GELU MLP, both residual."""

    def __init__(self, d_model: int, heads: int):
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = CausalSelfAttention(d_model, heads)
        self.ln2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, 4 * d_model), nn.GELU(), nn.Linear(4 * d_model, d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class GPTDecoder(nn.Module):
    def __init__(self, vocab: int, context: int, d_model: int, layers: int, heads: int):
        super().__init__()
        self.context = context
        self.token_embedding = nn.Embedding(vocab, d_model)
        self.position_embedding = nn.Embedding(context, d_model)
        self.blocks = nn.Sequential(*(DecoderBlock(d_model, heads) for _ in range(layers)))
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab, bias=False)
        # Tied weights: the output head reuses the token embedding, as GPT-2 does.
        self.head.weight = self.token_embedding.weight
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        # GPT-2's small normal init: with torch's default N(0, 1) embeddings the tied head would start
        # with huge logits and a first loss far above log(vocab).
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        length = tokens.shape[1]
        if length > self.context:
            raise ValueError(f"sequence length {length} exceeds the context {self.context}")
        positions = torch.arange(length, device=tokens.device)
        x = self.token_embedding(tokens) + self.position_embedding(positions)
        return self.head(self.ln_f(self.blocks(x)))


def gpt_decoder(vocab: int = 4096, context: int = 256, d_model: int = 384, layers: int = 6,
                heads: int = 6) -> GPTDecoder:
    """GPT-style decoder: token + position embedding, causal attention blocks, tied output head."""
    return GPTDecoder(vocab=vocab, context=context, d_model=d_model, layers=layers, heads=heads)


def gpt_batch(batch_size: int, context: int = 256, vocab: int = 4096, *, seed: int = 0,
              device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Token sequences that follow a fixed random successor table from a random start, so the next
    token is predictable from the current one; targets are the inputs shifted by one."""
    successor = torch.randint(0, vocab, (vocab,), generator=_rule_generator(3))
    start = torch.randint(0, vocab, (batch_size,), generator=_generator(seed))
    sequence = torch.empty(batch_size, context + 1, dtype=torch.long)
    sequence[:, 0] = start
    for position in range(1, context + 1):
        sequence[:, position] = successor[sequence[:, position - 1]]
    return sequence[:, :-1].contiguous().to(device), sequence[:, 1:].contiguous().to(device)


def gpt_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten())


class LSTMLanguageModel(nn.Module):
    """The shape of PyTorch's word_language_model example (medium: 2 x 650, bptt 35): embedding,
    stacked LSTM, linear decoder. batch_first, so it trains on gpt_batch data with gpt_loss."""

    def __init__(self, vocab: int, d_model: int, layers: int, dropout: float = 0.0):
        super().__init__()
        self.embedding = nn.Embedding(vocab, d_model)
        self.lstm = nn.LSTM(d_model, d_model, num_layers=layers, dropout=dropout, batch_first=True)
        self.decoder = nn.Linear(d_model, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.lstm(self.embedding(tokens))[0])


def lstm_lm(vocab: int = 10000, d_model: int = 650, layers: int = 2, dropout: float = 0.0) -> LSTMLanguageModel:
    """LSTM language model; dropout 0 by default so every device computes the same first-step loss."""
    return LSTMLanguageModel(vocab=vocab, d_model=d_model, layers=layers, dropout=dropout)


class TransformerLanguageModel(nn.Module):
    """The shape of PyTorch's word_language_model Transformer: scaled embedding, sinusoidal positions,
    nn.TransformerEncoder (post-LayerNorm layers, ReLU feed-forward) under a causal mask, linear decoder.
    batch_first, so it trains on gpt_batch data with gpt_loss."""

    def __init__(self, vocab: int, d_model: int, heads: int, feedforward: int, layers: int, context: int,
                 dropout: float = 0.0):
        super().__init__()
        self.d_model = d_model
        self.embedding = nn.Embedding(vocab, d_model)
        position = torch.arange(context, dtype=torch.float32).unsqueeze(1)
        frequency = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))
        table = torch.zeros(context, d_model)
        table[:, 0::2], table[:, 1::2] = torch.sin(position * frequency), torch.cos(position * frequency)
        self.register_buffer("positions", table)
        self.register_buffer("causal", nn.Transformer.generate_square_subsequent_mask(context))
        layer = nn.TransformerEncoderLayer(d_model, heads, feedforward, dropout, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.decoder = nn.Linear(d_model, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        length = tokens.shape[1]
        x = self.embedding(tokens) * math.sqrt(self.d_model) + self.positions[:length]
        return self.decoder(self.encoder(x, mask=self.causal[:length, :length], is_causal=True))


def transformer_lm(vocab: int = 10000, d_model: int = 512, heads: int = 8, feedforward: int = 2048,
                   layers: int = 6, context: int = 128, dropout: float = 0.0) -> TransformerLanguageModel:
    """nn.TransformerEncoder language model; dropout 0 so every device computes the same first-step loss."""
    return TransformerLanguageModel(vocab, d_model, heads, feedforward, layers, context, dropout)


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, loss_fn):
    """step(x, y) -> loss: one plain training step (zero grads, forward, backward, optimizer step),
    the unit that benchmarks time and captured graphs record."""
    def step(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
        return loss

    return step


# ------------------------------------------------------------------------------------ small U-Net

def _conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(),
        nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(),
    )


class UNetSmall(nn.Module):
    """Two-level U-Net. The deep level upsamples with ConvTranspose2d, the shallow one with bilinear
    Upsample and a 1x1 convolution, so both common upsampling layers are exercised."""

    def __init__(self, in_channels: int = 3, out_channels: int = 3, width: int = 16):
        super().__init__()
        self.enc1 = _conv_block(in_channels, width)
        self.enc2 = _conv_block(width, 2 * width)
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = _conv_block(2 * width, 4 * width)
        self.up2 = nn.ConvTranspose2d(4 * width, 2 * width, kernel_size=2, stride=2)
        self.dec2 = _conv_block(4 * width, 2 * width)
        self.up1 = nn.Sequential(
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
            nn.Conv2d(2 * width, width, kernel_size=1),
        )
        self.dec1 = _conv_block(2 * width, width)
        self.head = nn.Conv2d(width, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip1 = self.enc1(x)
        skip2 = self.enc2(self.pool(skip1))
        x = self.bottleneck(self.pool(skip2))
        x = self.dec2(torch.cat([self.up2(x), skip2], dim=1))
        x = self.dec1(torch.cat([self.up1(x), skip1], dim=1))
        return self.head(x)


def unet_small(in_channels: int = 3, out_channels: int = 3, width: int = 16) -> UNetSmall:
    """A small U-Net for denoising; the image side must be divisible by 4."""
    return UNetSmall(in_channels=in_channels, out_channels=out_channels, width=width)


def unet_batch(batch_size: int, image_size: int = 64, channels: int = 3, *, seed: int = 0,
               device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Denoising: the target is a smooth random image, the input the same image with noise added."""
    if image_size % 4:
        raise ValueError(f"unet image_size must be divisible by 4, got {image_size}")
    gen = _generator(seed)
    coarse = torch.randn(batch_size, channels, image_size // 4, image_size // 4, generator=gen)
    clean = F.interpolate(coarse, size=(image_size, image_size), mode="bilinear", align_corners=False)
    noisy = clean + 0.5 * torch.randn(clean.shape, generator=gen)
    return noisy.to(device), clean.to(device)


def unet_loss(output: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(output, targets)


# ---------------------------------------------------------------------------------- MNIST network

class MnistNet(nn.Module):
    """The shape of PyTorch's classic MNIST example: two 3x3 convolutions, one 2x2 max-pool, dropout,
    two fully connected layers and log_softmax (use with nll_loss)."""

    def __init__(self, image_size: int = 28, channels: tuple[int, int] = (32, 64), hidden: int = 128,
                 num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, channels[0], 3)
        self.conv2 = nn.Conv2d(channels[0], channels[1], 3)
        self.dropout1 = nn.Dropout(0.25)
        self.dropout2 = nn.Dropout(0.5)
        pooled = (image_size - 4) // 2  # two unpadded 3x3 convolutions, then a 2x2 pool
        self.fc1 = nn.Linear(channels[1] * pooled * pooled, hidden)  # 64 * 12 * 12 = 9216 at 28x28
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        x = self.dropout1(F.max_pool2d(x, 2))
        x = self.dropout2(F.relu(self.fc1(torch.flatten(x, 1))))
        return F.log_softmax(self.fc2(x), dim=1)


def mnist_net(image_size: int = 28, channels: tuple[int, int] = (32, 64), hidden: int = 128,
              num_classes: int = 10) -> MnistNet:
    return MnistNet(image_size=image_size, channels=channels, hidden=hidden, num_classes=num_classes)


def mnist_batch(batch_size: int, image_size: int = 28, num_classes: int = 10, *, seed: int = 0,
                device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    x, y = _class_images(batch_size, 1, image_size, num_classes, seed, salt=4)
    return x.to(device), y.to(device)


def mnist_loss(log_probs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.nll_loss(log_probs, targets)


def parameter_count(model: nn.Module) -> int:
    """Distinct parameters (tied weights counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def chance_loss(num_classes: int) -> float:
    """Cross-entropy of a uniform guess: a trained classifier must get below it."""
    return math.log(num_classes)
