"""Model code nobody here wrote, on the wgpu device against the CPU: transformers models from tiny configs,
torchvision models at small image sizes, and small versions of PyTorch's example scripts (word LM LSTM,
VAE, DCGAN). Random weights, fixed seeds, no downloads.

For each model: build it on the CPU, copy it to wgpu, run forward + backward + one optimizer step with
NAVITRAIN_WGPU_STRICT=0 while counting CPU fallbacks, and compare the loss, the outputs, every gradient and
every updated parameter with the same step on the CPU. Errors are ||a - b|| / ||b|| per tensor against a
float64 CPU run (||b|| taken as at least 1e-3 of the largest value of the tensor's group, per element); a
tensor is a mismatch when wgpu's error is above both `TOL` and 20x the error of the float32 CPU run (two
float32 runs already differ by their summation order, more so in deep models). The norm, not the largest
element: a ReLU whose input is float32 noise (|x| ~ 1e-5 after a deep stack) may pass its gradient on one
device and not on the other, a legitimate difference that moves one element of a gradient by its full value.

The third-party packages are not project dependencies: install them into a separate target and put it on
PYTHONPATH, e.g.

    .venv/bin/python -m pip install --no-deps --target /tmp/site17 transformers tokenizers safetensors \\
        huggingface_hub regex pyyaml tqdm httpx2 httpcore2 anyio idna truststore h11 hf-xet torchvision==0.28.0
    PYTHONPATH=/tmp/site17 .venv/bin/python benchmarks/third_party_models.py               # every model
    PYTHONPATH=/tmp/site17 .venv/bin/python benchmarks/third_party_models.py bert gpt2     # some of them
    PYTHONPATH=/tmp/site17 .venv/bin/python benchmarks/third_party_models.py --list
    PYTHONPATH=/tmp/site17 .venv/bin/python benchmarks/third_party_models.py --compile resnet18 gpt2   # 3 steps

A model whose package is missing is reported as `skipped`. torchvision's compiled ops (nms, roi_align) are
not needed by the classification models, so a torchvision wheel built for another torch variant (CUDA) is
imported without its operator registrations.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field

os.environ.setdefault("NAVITRAIN_WGPU_STRICT", "0")

import torch  # noqa: E402
from torch import nn  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import import_torchvision  # noqa: E402

DEV = "wgpu"
TOL = 2e-3           # ||wgpu - f64|| / ||f64|| allowed per tensor ...
CPU_NOISE_FACTOR = 20  # ... unless float32 on the CPU is already within 1/20 of that
BATCH, SEQ = 2, 12
VERBOSE = bool(os.environ.get("VERBOSE"))  # print every tensor over its limit


# ---------------------------------------------------------------------------------------------
# A case: a CPU model, inputs for it, and how to get (loss, outputs to compare) from its result.
@dataclass
class Case:
    model: nn.Module
    inputs: dict                                  # keyword arguments of forward (tensors on the CPU)
    loss: Callable                                # (model output) -> (loss, dict of tensors to compare)
    optimizer: str = "adamw"


def _hf_loss(out):
    outputs = {}
    for key in ("logits", "logits_per_image", "last_hidden_state"):
        value = getattr(out, key, None)
        if isinstance(value, torch.Tensor):
            outputs[key] = value
    return out.loss, outputs


def _classifier_loss(labels):
    def loss(out):
        return nn.functional.cross_entropy(out, labels.to(out.device)), {"logits": out}
    return loss


def _tokens(vocab, n=SEQ, batch=BATCH):
    return torch.randint(4, vocab, (batch, n))


def _no_dropout(config):
    for key in ("dropout", "attention_dropout", "activation_dropout", "hidden_dropout", "hidden_dropout_prob",
                "attention_probs_dropout_prob", "resid_pdrop", "embd_pdrop", "attn_pdrop", "dropout_rate",
                "feat_proj_dropout", "final_dropout", "layerdrop", "mask_time_prob", "classifier_dropout",
                "seq_classif_dropout", "qa_dropout", "encoder_layerdrop", "decoder_layerdrop", "summary_first_dropout",
                "router_jitter_noise", "projection_dropout", "mask_feature_prob"):
        if hasattr(config, key):
            setattr(config, key, 0.0)
    return config


# transformers: the smallest configs (hidden 32-64, 2 layers, vocab <= 1000, seq 12, batch 2)
def bert():
    from transformers import BertConfig, BertForMaskedLM
    cfg = _no_dropout(BertConfig(vocab_size=500, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                 intermediate_size=64, max_position_embeddings=64))
    ids = _tokens(500)
    labels = torch.where(torch.rand(ids.shape) < 0.3, ids, torch.full_like(ids, -100))
    mask = torch.ones_like(ids)
    mask[1, -3:] = 0
    return Case(BertForMaskedLM(cfg), dict(input_ids=ids, attention_mask=mask, labels=labels), _hf_loss)


def distilbert():
    from transformers import DistilBertConfig, DistilBertForSequenceClassification
    cfg = _no_dropout(DistilBertConfig(vocab_size=500, dim=32, n_layers=2, n_heads=4, hidden_dim=64,
                                       max_position_embeddings=64, num_labels=3))
    ids = _tokens(500)
    mask = torch.ones_like(ids)
    mask[0, -4:] = 0
    return Case(DistilBertForSequenceClassification(cfg),
                dict(input_ids=ids, attention_mask=mask, labels=torch.tensor([0, 2])), _hf_loss)


def gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel
    cfg = _no_dropout(GPT2Config(vocab_size=500, n_embd=32, n_layer=2, n_head=4, n_positions=64))
    ids = _tokens(500)
    return Case(GPT2LMHeadModel(cfg), dict(input_ids=ids, labels=ids), _hf_loss)


def llama():
    from transformers import LlamaConfig, LlamaForCausalLM
    cfg = _no_dropout(LlamaConfig(vocab_size=500, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64))
    ids = _tokens(500)
    return Case(LlamaForCausalLM(cfg), dict(input_ids=ids, labels=ids), _hf_loss)


def mixtral():
    from transformers import MixtralConfig, MixtralForCausalLM
    cfg = _no_dropout(MixtralConfig(vocab_size=500, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                    num_attention_heads=4, num_key_value_heads=2, num_local_experts=4,
                                    num_experts_per_tok=2, max_position_embeddings=64,
                                    output_router_logits=True))
    ids = _tokens(500)
    return Case(MixtralForCausalLM(cfg), dict(input_ids=ids, labels=ids), _hf_loss)


def t5():
    from transformers import T5Config, T5ForConditionalGeneration
    cfg = _no_dropout(T5Config(vocab_size=500, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                               decoder_start_token_id=0, pad_token_id=0))
    return Case(T5ForConditionalGeneration(cfg), dict(input_ids=_tokens(500), labels=_tokens(500, 8)), _hf_loss)


def bart():
    from transformers import BartConfig, BartForConditionalGeneration
    cfg = _no_dropout(BartConfig(vocab_size=500, d_model=32, encoder_layers=2, decoder_layers=2,
                                 encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64,
                                 decoder_ffn_dim=64, max_position_embeddings=64))
    return Case(BartForConditionalGeneration(cfg), dict(input_ids=_tokens(500), labels=_tokens(500, 8)), _hf_loss)


def vit():
    from transformers import ViTConfig, ViTForImageClassification
    cfg = _no_dropout(ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
                                num_attention_heads=4, intermediate_size=64, num_labels=10))
    return Case(ViTForImageClassification(cfg),
                dict(pixel_values=torch.randn(BATCH, 3, 32, 32), labels=torch.tensor([1, 7])), _hf_loss)


def clip():
    from transformers import CLIPConfig, CLIPModel
    text = dict(vocab_size=500, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                max_position_embeddings=64, projection_dim=32)
    vision = dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, projection_dim=32)
    cfg = _no_dropout(CLIPConfig(text_config=text, vision_config=vision, projection_dim=32))
    return Case(CLIPModel(cfg), dict(input_ids=_tokens(500), pixel_values=torch.randn(BATCH, 3, 32, 32),
                                     return_loss=True), _hf_loss)


def wav2vec2():
    from transformers import Wav2Vec2Config, Wav2Vec2ForCTC
    cfg = _no_dropout(Wav2Vec2Config(vocab_size=32, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=64, conv_dim=(16, 16, 16), conv_stride=(5, 2, 2),
                                     conv_kernel=(10, 3, 3), num_conv_pos_embeddings=16,
                                     num_conv_pos_embedding_groups=4, do_stable_layer_norm=False,
                                     feat_extract_norm="group", ctc_loss_reduction="mean", pad_token_id=0))
    labels = torch.randint(1, 32, (BATCH, 6))
    return Case(Wav2Vec2ForCTC(cfg), dict(input_values=torch.randn(BATCH, 1600), labels=labels), _hf_loss)


def whisper():
    from transformers import WhisperConfig, WhisperForConditionalGeneration
    cfg = _no_dropout(WhisperConfig(vocab_size=500, num_mel_bins=16, d_model=32, encoder_layers=2,
                                    decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4,
                                    encoder_ffn_dim=64, decoder_ffn_dim=64, max_source_positions=16,
                                    max_target_positions=32, decoder_start_token_id=1, pad_token_id=0,
                                    bos_token_id=1, eos_token_id=2, suppress_tokens=None, begin_suppress_tokens=None))
    return Case(WhisperForConditionalGeneration(cfg),
                dict(input_features=torch.randn(BATCH, 16, 32), labels=_tokens(500, 8)), _hf_loss)


# torchvision: classification models at small image sizes (BatchNorm in training mode), SGD with momentum
def _torchvision(name, size=64, factory=None, **kwargs):
    def build():
        import_torchvision()
        import torchvision
        model = getattr(torchvision.models, factory or name)(num_classes=10, **kwargs)
        labels = torch.tensor([3, 8])
        return Case(model, dict(x=torch.randn(BATCH, 3, size, size)), _classifier_loss(labels), "sgd")
    build.__name__ = name
    return build


# timm: a few architectures beyond torchvision's (keyword arguments shrink them where timm allows)
def _timm(name, size=64, **kwargs):
    def build():
        import timm
        model = timm.create_model(name, pretrained=False, num_classes=10, **kwargs)
        labels = torch.tensor([3, 8])
        return Case(model, dict(x=torch.randn(BATCH, 3, size, size)), _classifier_loss(labels), "adamw")
    build.__name__ = name
    return build


# PyTorch's examples, written small here: word language model (LSTM), VAE, DCGAN
class WordLM(nn.Module):
    def __init__(self, vocab=200, emb=32, hidden=32, layers=2):
        super().__init__()
        self.encoder, self.decoder = nn.Embedding(vocab, emb), nn.Linear(hidden, vocab)
        self.rnn = nn.LSTM(emb, hidden, layers, dropout=0.0)
        self.decoder.weight = self.encoder.weight  # tied weights, as the example's --tied

    def forward(self, x, targets):
        h0 = torch.zeros(self.rnn.num_layers, x.shape[1], self.rnn.hidden_size, device=x.device,
                         dtype=self.encoder.weight.dtype)
        out, _ = self.rnn(self.encoder(x), (h0, h0.clone()))
        logits = self.decoder(out).view(-1, self.decoder.out_features)
        return nn.functional.log_softmax(logits, dim=1), targets


def word_lm():
    data = torch.randint(0, 200, (SEQ + 1, 4))
    loss = lambda out: (nn.functional.nll_loss(out[0], out[1].reshape(-1)), {"log_probs": out[0]})  # noqa: E731
    return Case(WordLM(), dict(x=data[:-1], targets=data[1:]), loss, "sgd")


class VAE(nn.Module):
    def __init__(self, d=784, h=64, z=8):
        super().__init__()
        self.fc1, self.fc21, self.fc22 = nn.Linear(d, h), nn.Linear(h, z), nn.Linear(h, z)
        self.fc3, self.fc4 = nn.Linear(z, h), nn.Linear(h, d)

    def forward(self, x, noise):
        h = nn.functional.relu(self.fc1(x.view(-1, 784)))
        mu, logvar = self.fc21(h), self.fc22(h)
        z = mu + noise * torch.exp(0.5 * logvar)
        recon = torch.sigmoid(self.fc4(nn.functional.relu(self.fc3(z))))
        bce = nn.functional.binary_cross_entropy(recon, x.view(-1, 784), reduction="sum")
        kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
        return bce + kld, recon


def vae():
    return Case(VAE(), dict(x=torch.rand(4, 1, 28, 28), noise=torch.randn(4, 8)),
                lambda out: (out[0], {"recon": out[1]}), "adamw")


class DCGAN(nn.Module):
    """Generator and discriminator of the DCGAN example at 32 px, scored together: the discriminator's
    BCE on a real batch and on the generator's images."""
    def __init__(self, nz=16, ngf=16, ndf=16):
        super().__init__()
        self.g = nn.Sequential(
            nn.ConvTranspose2d(nz, ngf * 4, 4, 1, 0, bias=False), nn.BatchNorm2d(ngf * 4), nn.ReLU(True),
            nn.ConvTranspose2d(ngf * 4, ngf * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf * 2), nn.ReLU(True),
            nn.ConvTranspose2d(ngf * 2, ngf, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf), nn.ReLU(True),
            nn.ConvTranspose2d(ngf, 3, 4, 2, 1, bias=False), nn.Tanh())
        self.d = nn.Sequential(
            nn.Conv2d(3, ndf, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(ndf, ndf * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ndf * 2), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(ndf * 2, ndf * 4, 4, 2, 1, bias=False), nn.BatchNorm2d(ndf * 4), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(ndf * 4, 1, 4, 1, 0, bias=False), nn.Sigmoid())

    def forward(self, real, noise):
        fake = self.g(noise)
        p_real, p_fake = self.d(real).view(-1), self.d(fake).view(-1)
        bce = nn.functional.binary_cross_entropy
        return bce(p_real, torch.ones_like(p_real)) + bce(p_fake, torch.zeros_like(p_fake)), fake


def dcgan():
    return Case(DCGAN(), dict(real=torch.rand(4, 3, 32, 32) * 2 - 1, noise=torch.randn(4, 16, 1, 1)),
                lambda out: (out[0], {"fake": out[1]}), "adamw")


class StyleNet(nn.Module):
    """fast_neural_style's TransformerNet at 1/4 width: reflection-padded convolutions, affine InstanceNorm,
    residual blocks, nearest upsampling; trained here against a target image with MSE (the example's content
    loss without its VGG)."""
    def __init__(self, w=8):
        super().__init__()

        def conv(cin, cout, k, stride=1, up=None):
            layers = [nn.Upsample(scale_factor=up, mode="nearest")] if up else []
            return nn.Sequential(*layers, nn.ReflectionPad2d(k // 2), nn.Conv2d(cin, cout, k, stride))

        def norm_relu(c):
            return nn.Sequential(nn.InstanceNorm2d(c, affine=True), nn.ReLU())

        self.down = nn.Sequential(conv(3, w, 9), norm_relu(w), conv(w, 2 * w, 3, 2), norm_relu(2 * w),
                                  conv(2 * w, 4 * w, 3, 2), norm_relu(4 * w))
        self.res = nn.ModuleList(nn.Sequential(conv(4 * w, 4 * w, 3), nn.InstanceNorm2d(4 * w, affine=True),
                                               nn.ReLU(), conv(4 * w, 4 * w, 3),
                                               nn.InstanceNorm2d(4 * w, affine=True)) for _ in range(2))
        self.up = nn.Sequential(conv(4 * w, 2 * w, 3, up=2), norm_relu(2 * w), conv(2 * w, w, 3, up=2),
                                norm_relu(w), conv(w, 3, 9))

    def forward(self, x, target):
        h = self.down(x)
        for block in self.res:
            h = h + block(h)
        y = self.up(h)
        return nn.functional.mse_loss(y, target), y


def fast_neural_style():
    return Case(StyleNet(), dict(x=torch.rand(2, 3, 32, 32) * 255, target=torch.rand(2, 3, 32, 32) * 255),
                lambda out: (out[0], {"styled": out[1]}), "adamw")


class SuperResolution(nn.Module):
    """super_resolution's sub-pixel network (ESPCN): convolutions, then PixelShuffle by 3."""
    def __init__(self, factor=3):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 32, 5, padding=2), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1),
                                  nn.ReLU(), nn.Conv2d(32, 16, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(16, factor ** 2, 3, padding=1), nn.PixelShuffle(factor))

    def forward(self, x, target):
        y = self.body(x)
        return nn.functional.mse_loss(y, target), y


def super_resolution():
    return Case(SuperResolution(), dict(x=torch.rand(2, 1, 16, 16), target=torch.rand(2, 1, 48, 48)),
                lambda out: (out[0], {"upscaled": out[1]}), "adamw")


class MnistNet(nn.Module):
    """The mnist example's network (dropout off): two convolutions, max pooling, log_softmax, nll_loss."""
    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 32, 3, 1), nn.Conv2d(32, 64, 3, 1)
        self.fc1, self.fc2 = nn.Linear(9216, 128), nn.Linear(128, 10)

    def forward(self, x, labels):
        h = nn.functional.max_pool2d(nn.functional.relu(self.conv2(nn.functional.relu(self.conv1(x)))), 2)
        out = nn.functional.log_softmax(self.fc2(nn.functional.relu(self.fc1(torch.flatten(h, 1)))), dim=1)
        return nn.functional.nll_loss(out, labels), out


def mnist():
    return Case(MnistNet(), dict(x=torch.randn(4, 1, 28, 28), labels=torch.tensor([3, 1, 4, 1])),
                lambda out: (out[0], {"log_probs": out[1]}), "sgd")



def _causal_lm(config_name, model_name, **kwargs):
    """A decoder-only transformers model (config class, model class, small config) as a causal-LM case."""
    def build():
        import transformers
        cfg = _no_dropout(getattr(transformers, config_name)(**kwargs))
        ids = _tokens(500)
        return Case(getattr(transformers, model_name)(cfg), dict(input_ids=ids, labels=ids), _hf_loss)
    return build


def _masked_lm(config_name, model_name, **kwargs):
    """An encoder transformers model as a masked-LM case: a padded second sequence, 30% of tokens scored."""
    def build():
        import transformers
        cfg = _no_dropout(getattr(transformers, config_name)(**kwargs))
        ids = _tokens(500)
        labels = torch.where(torch.rand(ids.shape) < 0.3, ids, torch.full_like(ids, -100))
        mask = torch.ones_like(ids)
        mask[1, -3:] = 0
        return Case(getattr(transformers, model_name)(cfg), dict(input_ids=ids, attention_mask=mask, labels=labels),
                    _hf_loss)
    return build


_SMALL_DECODER = dict(vocab_size=500, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, max_position_embeddings=64)
_SMALL_ENCODER = dict(vocab_size=500, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      intermediate_size=64, max_position_embeddings=64)

MODELS: dict[str, Callable[[], Case]] = {
    "bert": bert, "distilbert": distilbert, "gpt2": gpt2, "llama": llama, "mixtral": mixtral, "t5": t5,
    "bart": bart, "vit": vit, "clip": clip, "wav2vec2": wav2vec2, "whisper": whisper,
    "resnet18": _torchvision("resnet18"), "mobilenet_v3_small": _torchvision("mobilenet_v3_small"),
    "efficientnet_b0": _torchvision("efficientnet_b0"), "convnext_tiny": _torchvision("convnext_tiny"),
    # vit_b_16's architecture (VisionTransformer, 16 px patches) at 2 layers and width 64 instead of 12 and 768
    "vit_b_16": _torchvision("vit_b_16", size=32, factory="VisionTransformer", image_size=32, patch_size=16,
                             num_layers=2, num_heads=4, hidden_dim=64, mlp_dim=128),
    # At 64 px RegNet and ShuffleNet end at 2x2: BatchNorm over 8 values there turns one ReLU whose input is
    # float32 noise (|x| ~ 5e-5, on the CPU in float32 as well) into a ~20% change of every gradient. Every
    # op was checked against float64 on its own inputs; at 96 px (3x3) the step is well conditioned. DenseNet
    # at 32 px ends at 1x1 (BatchNorm over 2 values: the CPU's float32 step is 280% off its float64 one).
    "regnet_y_400mf": _torchvision("regnet_y_400mf", size=96), "densenet121": _torchvision("densenet121", size=96),
    "squeezenet1_1": _torchvision("squeezenet1_1"), "shufflenet_v2_x0_5": _torchvision("shufflenet_v2_x0_5", size=96),
    "swin_t": _torchvision("swin_t"),
    "timm_vit_tiny": _timm("vit_tiny_patch16_224", size=32, img_size=32, depth=2),
    "timm_convnext_atto": _timm("convnext_atto"), "timm_mobilevitv2_050": _timm("mobilevitv2_050"),
    "word_lm": word_lm, "vae": vae, "dcgan": dcgan, "fast_neural_style": fast_neural_style,
    "super_resolution": super_resolution, "mnist": mnist,
    # Session 18: more architectures a user may bring (same checks).
    "roberta": _masked_lm("RobertaConfig", "RobertaForMaskedLM", **_SMALL_ENCODER, pad_token_id=1),
    "electra": _masked_lm("ElectraConfig", "ElectraForMaskedLM", **_SMALL_ENCODER, embedding_size=32),
    "deberta_v2": _masked_lm("DebertaV2Config", "DebertaV2ForMaskedLM", **_SMALL_ENCODER),
    "mistral": _causal_lm("MistralConfig", "MistralForCausalLM", **_SMALL_DECODER, num_key_value_heads=2,
                          sliding_window=8),
    "qwen2": _causal_lm("Qwen2Config", "Qwen2ForCausalLM", **_SMALL_DECODER, num_key_value_heads=2),
    "phi": _causal_lm("PhiConfig", "PhiForCausalLM", **_SMALL_DECODER),
    "gemma": _causal_lm("GemmaConfig", "GemmaForCausalLM", **_SMALL_DECODER, num_key_value_heads=2, head_dim=8),
    "gpt_neox": _causal_lm("GPTNeoXConfig", "GPTNeoXForCausalLM", **_SMALL_DECODER),
    "opt": _causal_lm("OPTConfig", "OPTForCausalLM", vocab_size=500, hidden_size=32, ffn_dim=64, num_hidden_layers=2,
                      num_attention_heads=4, max_position_embeddings=64, word_embed_proj_dim=32),
    "bloom": _causal_lm("BloomConfig", "BloomForCausalLM", vocab_size=500, hidden_size=32, n_layer=2, n_head=4),
    "falcon": _causal_lm("FalconConfig", "FalconForCausalLM", vocab_size=500, hidden_size=32, num_hidden_layers=2,
                         num_attention_heads=4),
    "mamba": _causal_lm("MambaConfig", "MambaForCausalLM", vocab_size=500, hidden_size=32, state_size=8,
                        num_hidden_layers=2, expand=2, conv_kernel=4),
    "resnet50": _torchvision("resnet50"), "resnext50_32x4d": _torchvision("resnext50_32x4d"),
    "wide_resnet50_2": _torchvision("wide_resnet50_2"), "mobilenet_v2": _torchvision("mobilenet_v2"),
    "mobilenet_v3_large": _torchvision("mobilenet_v3_large"), "mnasnet0_5": _torchvision("mnasnet0_5", size=96),
    "googlenet": _torchvision("googlenet", size=96, aux_logits=False, init_weights=True),
    # (inception_v3 at 96 px ends at 1x1: BatchNorm over 2 values made the CPU's own float32 step differ from its
    # float64 one by 200% in Mixed_7, so three compiled steps were noise against noise; 160 px ends at 3x3.)
    "inception_v3": _torchvision("inception_v3", size=160, aux_logits=False, init_weights=True),
    # (AlexNet is not here: its 9216 x 4096 classifier weight is 144 MiB, over lavapipe's 128 MiB storage binding;
    # GPUs bind 2 GiB and more, and it trained at 224 px on an H100 in run 14.)
    "regnet_x_400mf": _torchvision("regnet_x_400mf", size=96),
    "efficientnet_v2_s": _torchvision("efficientnet_v2_s"), "swin_v2_t": _torchvision("swin_v2_t"),
}


# ---------------------------------------------------------------------------------------------
def _no_random_layers(model):
    """Dropout and stochastic depth off, so the CPU and wgpu runs compute the same function."""
    for m in model.modules():
        if isinstance(m, nn.modules.dropout._DropoutNd):
            m.p = 0.0
        for key in ("p", "drop_prob"):  # torchvision's StochasticDepth, timm's DropPath
            if type(m).__name__ in ("StochasticDepth", "DropPath") and hasattr(m, key):
                setattr(m, key, 0.0)
    return model


def _make_optimizer(kind, params):
    if kind == "sgd":
        return torch.optim.SGD(params, lr=0.05, momentum=0.9)
    return torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01)


def _step(case, model, device, dtype, steps=1, compiled=False):
    """`steps` training steps (the whole step under torch.compile(backend="wgpu") if `compiled`); returns the
    last step's loss, outputs and gradients and the updated parameters on the CPU (float64)."""
    model = copy.deepcopy(model).to(device=device, dtype=dtype)
    model.train()
    inputs = {k: (v.to(device=device, dtype=dtype if v.is_floating_point() else v.dtype)
                  if isinstance(v, torch.Tensor) else v) for k, v in case.inputs.items()}
    opt = _make_optimizer(case.optimizer, model.parameters())

    def train_step(inputs):
        opt.zero_grad()
        loss, outputs = case.loss(model(**inputs))
        loss.backward()
        opt.step()
        return loss, outputs

    if compiled:
        # A compiled graph runs eagerly on its first call, is captured on its second and replayed after: three
        # steps reach the replays.
        train_step = torch.compile(train_step, backend="wgpu")
    for _ in range(steps):
        loss, outputs = train_step(inputs)
    grads = {n: p.grad.detach().cpu().double() for n, p in model.named_parameters() if p.grad is not None}
    fetch = lambda t: t.detach().cpu().double()  # noqa: E731
    return dict(loss={"loss": fetch(loss)}, outputs={k: fetch(v) for k, v in outputs.items()}, grads=grads,
                params={n: fetch(p) for n, p in model.named_parameters()})


def _rel_err(a, b, floor=0.0):
    if a.shape != b.shape:
        return float("inf")
    nan_a, nan_b = torch.isnan(a), torch.isnan(b)
    if not torch.equal(nan_a, nan_b):
        return float("inf")
    a, b = a[~nan_a], b[~nan_b]
    if a.numel() == 0:
        return 0.0
    if torch.isinf(a).any() or torch.isinf(b).any():
        return 0.0 if torch.equal(a, b) else float("inf")
    scale = max(b.norm().item(), floor * b.numel() ** 0.5, 1e-12)
    return (a - b).norm().item() / scale


@dataclass
class Result:
    name: str
    status: str = "ok"
    worst: str = ""
    fallbacks: dict = field(default_factory=dict)
    seconds: float = 0.0
    detail: str = ""
    compile: dict = field(default_factory=dict)   # --compile: the compiled graphs' eager runs and replays


def run_model(name, build, steps=1, compiled=False) -> Result:
    import navitrain.wgpu as nw
    import navitrain.wgpu.compile as wc

    result = Result(name)
    try:
        torch.manual_seed(0)
        case = build()
        model = _no_random_layers(case.model)
    except ImportError as e:
        result.status, result.detail = "skipped", f"{type(e).__name__}: {e}"
        return result
    try:
        ref = _step(case, model, "cpu", torch.float64, steps)
    except Exception as e:  # some models pin float32 somewhere: then float32 is the reference
        ref, result.detail = None, f"float64 reference failed ({type(e).__name__}); float32 reference"
    cpu = _step(case, model, "cpu", torch.float32, steps)
    ref = ref or cpu
    nw.reset_fallback_counts()
    t0 = time.perf_counter()
    try:
        if compiled:
            torch._dynamo.reset()
            wc.reset_stats()
        dev = _step(case, model, DEV, torch.float32, steps, compiled)
        nw.synchronize()
    except Exception as e:
        result.seconds = time.perf_counter() - t0
        result.status = "error"
        result.detail = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
        result.fallbacks = dict(nw.fallback_report()["cpu_fallbacks"])
        if os.environ.get("TRACE"):
            traceback.print_exc()
        return result
    result.seconds = time.perf_counter() - t0
    result.fallbacks = dict(nw.fallback_report()["cpu_fallbacks"])
    if compiled:
        result.compile = {k: v for k, v in sorted(wc.stats.items())
                          if k.endswith(("_replays", "_eager", "_uncapturable", "_capture_failures"))}
    worst, worst_ratio = None, -1.0
    for group in ("loss", "outputs", "grads", "params"):
        # A gradient that is zero in exact arithmetic (a key bias under softmax) is rounding noise: each
        # tensor is measured against at least 1e-3 of the group's largest value.
        floor = 1e-3 * max((t.abs().max().item() for t in ref[group].values() if t.numel()), default=0.0)
        for key, want in ref[group].items():
            err_dev = _rel_err(dev[group][key], want, floor)
            err_cpu = _rel_err(cpu[group][key], want, floor)
            limit = max(TOL, CPU_NOISE_FACTOR * err_cpu)
            ratio = err_dev / limit
            if VERBOSE and ratio > 1:
                print(f"    {group}:{key} {err_dev:.1e} (cpu f32 {err_cpu:.1e}; {ratio:.2f} of limit)")
            if ratio > worst_ratio:
                worst, worst_ratio = f"{group}:{key} {err_dev:.1e} (cpu f32 {err_cpu:.1e}; {ratio:.2f} of limit)", ratio
    result.worst = worst or ""
    if worst_ratio > 1:
        result.status = "mismatch"
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="*", help="models to run (default: all)")
    parser.add_argument("--list", action="store_true", help="list the models and exit")
    parser.add_argument("--json", help="write the results to this file")
    parser.add_argument("--compile", action="store_true",
                        help='run the training step under torch.compile(backend="wgpu") (CPU reference: eager)')
    parser.add_argument("--steps", type=int, help="training steps compared (default 1; with --compile 3, which "
                        "reaches the captured graphs' replays)")
    args = parser.parse_args(argv)
    steps = args.steps or (3 if args.compile else 1)
    if args.list:
        print("\n".join(MODELS))
        return 0
    names = args.models or list(MODELS)
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        parser.error(f"unknown models {unknown}; --list shows them")
    import warnings

    import navitrain.wgpu  # noqa: F401  (registers the device)
    try:  # transformers imports torchvision where it is installed
        import_torchvision()
    except ImportError:
        pass
    warnings.filterwarnings("ignore", message="navitrain wgpu: .* runs on the CPU")
    results = []
    print(f"{'model':<20} {'status':<9} {'time s':>7}  fallbacks / worst error", flush=True)
    for name in names:
        r = run_model(name, MODELS[name], steps, args.compile)
        results.append(r)
        falls = ", ".join(f"{op} x{n}" for op, n in sorted(r.fallbacks.items())) or "-"
        graphs = f"; graphs: {', '.join(f'{k} {v}' for k, v in r.compile.items())}" if args.compile else ""
        print(f"{name:<20} {r.status:<9} {r.seconds:7.1f}  fallbacks: {falls}{graphs}", flush=True)
        for line in (r.worst and f"worst: {r.worst}", r.detail):
            if line:
                print(f"{'':<39}{line}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump([r.__dict__ for r in results], f, indent=1)
    return 0 if all(r.status in ("ok", "skipped") for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
