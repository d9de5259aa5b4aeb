"""What a route is: one way to run a PyTorch training step on this machine.

A route has a name, says cheaply whether it could work here (`availability`), and prepares itself
(`prepare`: install overrides, register a device) before handing back the torch.device to train on.
Whether it *does* work is the probe's job (navitrain.probe), never the route's.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Availability:
    ok: bool
    reason: str  # one line a user can act on, also when ok ("torch 2.13.0+rocm6.4 sees 1 GPU")


class Route(ABC):
    name: ClassVar[str]
    summary: ClassVar[str]
    # Speed order used when `navitrain bench` has measured nothing: lower is faster.
    default_rank: ClassVar[int]

    @abstractmethod
    def availability(self) -> Availability:
        """Whether this route can run at all here. Must not raise; may import torch."""

    @abstractmethod
    def prepare(self) -> "torch.device":
        """Make the route active in this process and return the device to train on."""

    def release(self) -> None:
        """Undo what prepare() changed in global state (default: nothing to undo)."""

    def __repr__(self) -> str:
        return f"<route {self.name}>"
