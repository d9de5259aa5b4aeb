"""Deliberately broken routes for the bench runner's tests. Imported only inside the bench's child
processes (run_bench(route_modules=...)), never in the test process, so no other test sees them."""
import os
import signal
import sys
import time

import torch
import torch.nn.functional as F

from navitrain.routes.base import Availability, Route
from navitrain.routes.registry import register

_cross_entropy = F.cross_entropy


class _OnTheCpu(Route):
    summary = "a test route that runs on the CPU and then misbehaves"
    default_rank = 1000

    def availability(self):
        return Availability(True, "test route")

    def prepare(self):
        self.sabotage()
        return torch.device("cpu")

    def sabotage(self):
        pass


def _patch_loss(fn):
    F.cross_entropy = fn


@register
class Wrong(_OnTheCpu):
    name = "test-wrong"

    def sabotage(self):
        # mlp (10 classes) trains, but every loss is 1.5x the truth: it disagrees with the CPU
        def scaled(logits, *a, **k):
            loss = _cross_entropy(logits, *a, **k)
            return loss * 1.5 if logits.shape[-1] == 10 else loss

        _patch_loss(scaled)

        # gpt (AdamW) climbs instead of descending: its loss rises
        def ascend(self, closure=None):
            with torch.no_grad():
                for group in self.param_groups:
                    for p in group["params"]:
                        if p.grad is not None:
                            p.add_(p.grad.sign(), alpha=group["lr"])

        torch.optim.AdamW.step = ascend


@register
class Segfault(_OnTheCpu):
    name = "test-segfault"

    def sabotage(self):
        os.kill(os.getpid(), signal.SIGSEGV)


@register
class Faulty(_OnTheCpu):
    name = "test-faulty"

    def sabotage(self):
        # mlp (10 classes): Python raises what a wheel without code for the GPU raises;
        # gpt: the process faults like HSA_OVERRIDE_GFX_VERSION=10.3.0 on RDNA1 and aborts
        def fault(logits, *a, **k):
            if logits.shape[-1] == 10:
                raise RuntimeError("HIP error: invalid device function")
            sys.stderr.write("HSA_STATUS_ERROR_MEMORY_APERTURE_VIOLATION: The agent attempted to access memory "
                             "beyond the largest legal address. code: 0x29\n")
            sys.stderr.flush()
            os.abort()

        _patch_loss(fault)


@register
class Hang(_OnTheCpu):
    name = "test-hang"

    def sabotage(self):
        _patch_loss(lambda *a, **k: time.sleep(3600))


@register
class Unavailable(_OnTheCpu):
    name = "test-unavailable"

    def availability(self):
        return Availability(False, "no such device here")
