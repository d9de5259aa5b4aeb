"""`_foreach_*` ops (what torch.optim uses by default on accelerators): the single-tensor op per element.

PyTorch's optimizers pick their foreach implementation for the PrivateUse1 device, so every Adam/SGD
step arrives here as a handful of list ops. Each becomes one kernel per tensor; the fused optimizer
kernels in navitrain.wgpu.ops.optim take over where they apply.
"""
from __future__ import annotations

import torch

from navitrain.wgpu.dispatch import implements

aten = torch.ops.aten

# Ops whose trailing Scalar/ScalarList/Tensor argument is the keyword `value` of the single-tensor op.
_VALUE_KW = {"addcmul", "addcdiv"}


def _per_element(name: str, inplace: bool):
    single = getattr(aten, name + ("_" if inplace else ""))

    def run(*args, **kwargs):
        lists = [a for a in args if isinstance(a, (list, tuple))]
        n = len(lists[0]) if lists else 0
        results = []
        for i in range(n):
            call_args, call_kwargs = [], dict(kwargs)
            for pos, a in enumerate(args):
                if isinstance(a, (list, tuple)):
                    v = a[i]
                elif isinstance(a, torch.Tensor) and name in _VALUE_KW and pos == 3 and a.dim() == 1:
                    v = a[i].item()  # the Tensor overload of addcmul/addcdiv carries one scalar per element
                else:
                    v = a
                call_args.append(v)
            if name in _VALUE_KW and len(call_args) == 4:
                call_kwargs["value"] = call_args.pop()
            results.append(single(*call_args, **call_kwargs))
        return None if inplace else results

    return run


def _register_all() -> None:
    for op_name in dir(aten):
        if not op_name.startswith("_foreach_"):
            continue
        base = op_name[len("_foreach_"):]
        inplace = base.endswith("_")
        single = base[:-1] if inplace else base
        if single in ("norm", "copy", "zero", "max") or not hasattr(torch.ops.aten, single + ("_" if inplace else "")):
            continue
        packet = getattr(aten, op_name)
        handler = _per_element(single, inplace)
        for ov in packet.overloads():
            if ov.endswith("out"):
                continue
            implements(getattr(packet, ov))(handler)


_register_all()


@implements(aten._foreach_norm.Scalar)
def foreach_norm(tensors, ord=2, dtype=None):
    return [aten.linalg_vector_norm.default(t, ord, dtype=dtype) for t in tensors]


@implements(aten._foreach_copy_.default)
def foreach_copy_(tensors, src, non_blocking=False):
    for t, s in zip(tensors, src):
        aten.copy_.default(t, s)


@implements(aten._foreach_zero_.default)
def foreach_zero_(tensors):
    for t in tensors:
        aten.zero_.default(t)
