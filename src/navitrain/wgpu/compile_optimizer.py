"""A compiled optimizer step keeps its step counts on the device, as dynamo arranges for CUDA.

When torch.compile traces `optimizer.step()`, dynamo sets `capturable=True` on every param group whose
parameters are all on CUDA (or XPU) and whose state is not created yet (OptimizerVariable._set_capturable):
the step counts are then created on the device and the whole update is one graph of device ops. For
any other device it leaves the real group as it was, while the traced code still takes the capturable
branch (dynamo forces the flag in what it traces): Adam's and AdamW's step counts are created on the
CPU and every step's graph mixes CPU scalars into the device's list ops. On wgpu that graph cannot be
captured and its fused multi-tensor kernel cannot index CPU tensors (fusion_foreach.py), so it ran its
traced ops eagerly: 224 dispatches for a 36-parameter U-Net's AdamW, where the fused chain is two
(and the whole compiled U-Net step slower than its captured graph, run 15).

So the same rule is applied to wgpu parameters before dynamo's own: a group whose parameters are all
wgpu tensors and have no state yet becomes capturable, exactly the change dynamo makes for CUDA. A
group with state already (compiled after eager steps) keeps its CPU step counts and runs correctly,
only slower. Where this torch's dynamo has no such hook the step is left as it is.
"""
from __future__ import annotations

import logging

from navitrain.wgpu.tensor import WgpuTensor

log = logging.getLogger("navitrain.wgpu")


def make_capturable(optimizer) -> int:
    """Set capturable=True on the optimizer's param groups that have the flag off, parameters all on wgpu
    and no state yet (dynamo's condition for CUDA); returns how many."""
    changed = 0
    for group in optimizer.param_groups:
        params = group.get("params", [])
        if (group.get("capturable") is False and params and all(isinstance(p, WgpuTensor) for p in params)
                and not any(p in optimizer.state for p in params)):
            group["capturable"] = True
            changed += 1
    return changed


def patch_dynamo_capturable() -> bool:
    """Extend dynamo's capturable rule to wgpu parameters; False where this torch has no such rule."""
    try:
        from torch._dynamo.variables.optimizer import OptimizerVariable
    except ImportError:
        return False
    original = getattr(OptimizerVariable, "_set_capturable", None)
    if original is None:
        log.info("navitrain wgpu compile: this torch's dynamo sets no capturable optimizers; compiled "
                 "optimizer steps keep their step counts on the CPU")
        return False
    if getattr(original, "_navitrain", False):
        return True

    def _set_capturable(self, tx):
        make_capturable(self.value)
        return original(self, tx)

    _set_capturable._navitrain = True
    OptimizerVariable._set_capturable = _set_capturable
    return True
