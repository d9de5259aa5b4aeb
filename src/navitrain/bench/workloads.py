"""Named bench workloads: a model, its synthetic data, loss and optimizer, at a tiny and a standard size.

`standard` sizes are the models people train and the sizes benchmarks/bench_wgpu_train.py times (CIFAR
ResNet-18 at width 64 on 32x32 images, batch 128; the GPT decoder 6 x 384 at context 256, vocabulary
4096, batch 16; an MLP 784-1024-1024-10 at batch 512): only they say what a GPU is worth, because at
small sizes a step is Python per op, not arithmetic (issue 18: a tiny bench called an H200 0.18x the
CPU). `navitrain bench --quick` and the full bench both use them; quick bounds time, not size (runner.py).
`tiny` sizes exist for CI on lavapipe (`--tiny`): they measure per-op overhead, and navitrain.device()
never chooses from them (storage.representative_speeds).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:  # torch is imported only when a workload is built, so listing names stays cheap
    import torch
    from torch import nn

SIZES = ("tiny", "standard")
REPRESENTATIVE_SIZE = "standard"  # the only size whose speeds choose a device
DEFAULT_WORKLOADS = ("mlp", "resnet18", "gpt")


@dataclass(frozen=True)
class Workload:
    name: str
    size: str
    title: str                 # what a reader sees in tables and charts
    batch_size: int
    build: Callable[[], nn.Module]
    make_batch: Callable[..., tuple[torch.Tensor, torch.Tensor]]  # (batch_size, seed=, device=)
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    optimizer: str             # "sgd" (momentum 0.9) or "adamw"
    lr: float
    # False when the model has dropout: its training loss then depends on the device's random stream,
    # so agreement with the CPU is checked on an eval-mode forward instead.
    deterministic: bool = True
    shape: dict[str, Any] = field(default_factory=dict)  # sizes, for reports

    def batch(self, seed: int, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        return self.make_batch(self.batch_size, seed=seed, device=device)

    def make_optimizer(self, params, capturable: bool = False) -> torch.optim.Optimizer:
        import torch

        # foreach left to PyTorch, as in a user's script: the multi-tensor update where the device has it
        # (CUDA, ROCm, wgpu), the per-tensor one elsewhere. Forcing the per-tensor update (as this bench
        # once did) made the wgpu GPT step twice bench_wgpu_train.py's on an H100 (run 12): ~6 small ops
        # per parameter is host time no user pays. capturable: a captured graph replays AdamW's step
        # count, so it must live on the device (SGD keeps none on the host).
        if self.optimizer == "sgd":
            return torch.optim.SGD(params, lr=self.lr, momentum=0.9)
        if self.optimizer == "adamw":
            return torch.optim.AdamW(params, lr=self.lr, capturable=capturable)
        raise ValueError(f"unknown optimizer {self.optimizer!r}")

    def signature(self) -> dict[str, Any]:
        """What makes two results of this workload comparable: the model's shape and optimizer (not the
        batch, which memory may force smaller; samples/s already divides by it). Stored beside every
        result, so results of another size, old or new, are recognised and ignored."""
        # "update": results timed with the forced per-tensor update are not comparable (see make_optimizer)
        return {"name": self.name, "size": self.size, "optimizer": self.optimizer, "update": "torch-default",
                **self.shape}

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "size": self.size, "title": self.title, "batch_size": self.batch_size,
                "optimizer": self.optimizer, "lr": self.lr, **self.shape}


def _mlp(size: str) -> Workload:
    from navitrain.bench import models

    s = {"tiny": dict(in_features=256, hidden=(256, 256), batch=64),
         "standard": dict(in_features=784, hidden=(1024, 1024), batch=512)}[size]
    return Workload(
        name="mlp", size=size, title=f"MLP {s['in_features']}-{'-'.join(map(str, s['hidden']))}-10",
        batch_size=s["batch"], build=partial(models.mlp, s["in_features"], s["hidden"], 10),
        make_batch=partial(models.mlp_batch, in_features=s["in_features"], num_classes=10),
        loss=models.mlp_loss, optimizer="sgd", lr=0.05,
        shape={"in_features": s["in_features"], "hidden": list(s["hidden"])})


def _resnet18(size: str) -> Workload:
    from navitrain.bench import models

    s = {"tiny": dict(width=8, image=16, batch=16), "standard": dict(width=64, image=32, batch=128)}[size]
    return Workload(
        name="resnet18", size=size, title=f"ResNet-18 w{s['width']} {s['image']}px",
        batch_size=s["batch"], build=partial(models.cifar_resnet18, num_classes=10, width=s["width"]),
        make_batch=partial(models.cifar_batch, image_size=s["image"], num_classes=10),
        loss=models.cifar_loss, optimizer="sgd", lr=0.05,
        shape={"width": s["width"], "image_size": s["image"]})


def _gpt(size: str) -> Workload:
    from navitrain.bench import models

    s = {"tiny": dict(vocab=256, context=32, d_model=64, layers=2, heads=2, batch=8),
         "standard": dict(vocab=4096, context=256, d_model=384, layers=6, heads=6, batch=16)}[size]
    return Workload(
        name="gpt", size=size, title=f"GPT {s['layers']}x{s['d_model']} ctx{s['context']}",
        batch_size=s["batch"],
        build=partial(models.gpt_decoder, vocab=s["vocab"], context=s["context"], d_model=s["d_model"],
                      layers=s["layers"], heads=s["heads"]),
        make_batch=partial(models.gpt_batch, context=s["context"], vocab=s["vocab"]),
        loss=models.gpt_loss, optimizer="adamw", lr=3e-3,
        shape={k: s[k] for k in ("vocab", "context", "d_model", "layers", "heads")})


def _unet(size: str) -> Workload:
    from navitrain.bench import models

    s = {"tiny": dict(width=4, image=16, batch=4), "standard": dict(width=32, image=128, batch=16)}[size]
    return Workload(
        name="unet", size=size, title=f"U-Net w{s['width']} {s['image']}px", batch_size=s["batch"],
        build=partial(models.unet_small, width=s["width"]),
        make_batch=partial(models.unet_batch, image_size=s["image"]),
        loss=models.unet_loss, optimizer="adamw", lr=3e-3,
        shape={"width": s["width"], "image_size": s["image"]})


def _mnist(size: str) -> Workload:
    from navitrain.bench import models

    s = {"tiny": dict(batch=16), "standard": dict(batch=128)}[size]
    return Workload(
        name="mnist", size=size, title="MNIST CNN", batch_size=s["batch"], build=models.mnist_net,
        make_batch=models.mnist_batch, loss=models.mnist_loss, optimizer="adamw", lr=1e-3,
        deterministic=False, shape={"image_size": 28})


_FACTORIES: dict[str, Callable[[str], Workload]] = {
    "mlp": _mlp, "resnet18": _resnet18, "gpt": _gpt, "unet": _unet, "mnist": _mnist,
}


def names() -> list[str]:
    return list(_FACTORIES)


def get(name: str, size: str = "tiny") -> Workload:
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; sizes: {', '.join(SIZES)}")
    try:
        factory = _FACTORIES[name]
    except KeyError:
        raise ValueError(f"unknown workload {name!r}; workloads: {', '.join(_FACTORIES)}") from None
    return factory(size)
