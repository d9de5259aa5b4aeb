"""A compiled backward's incoming gradients keep looking plain when PyTorch restrides them.

Tracing sees a wgpu tensor's fake as a plain tensor (WgpuTensor.__tensor_unflatten__), so AOTAutograd
records each tangent as plain, and at run time WgpuTensor.__coerce_same_metadata_as_tangent__ hands it a
`TracedAsPlain`. When the gradient's layout differs from the traced output's (the output of a permute, as
ConvNeXt's LayerNorm2d returns), AOTAutograd's `coerce_to_expected_memory_format` copies it into a fresh
`torch.empty_strided(..., device=wgpu)`: a WgpuTensor again, which it then refuses ("expected
SubclassCreationMeta, got PlainTensorMeta"). The wrapper below gives the restrided copy the same plain
face as the gradient it came from; everything else goes to PyTorch's function unchanged.
"""
from __future__ import annotations

from navitrain.wgpu.tensor import TracedAsPlain, as_traced_plain


def _keeps_plain(coerce):
    def coerce_keeping_plain(x, memory_format):
        out = coerce(x, memory_format)
        if isinstance(x, TracedAsPlain) and out is not x and not isinstance(out, TracedAsPlain):
            return as_traced_plain(out)
        return out

    coerce_keeping_plain.__wrapped__ = coerce
    coerce_keeping_plain.navitrain_tangents = True
    return coerce_keeping_plain


def patch_tangent_restride() -> bool:
    """Wrap torch's coerce_to_expected_memory_format where AOTAutograd's runtime calls it (once)."""
    import torch._functorch.aot_autograd  # noqa: F401  (runtime_wrappers imported alone is a circular import)
    from torch._functorch._aot_autograd import runtime_wrappers

    coerce = getattr(runtime_wrappers, "coerce_to_expected_memory_format", None)
    if coerce is None or getattr(coerce, "navitrain_tangents", False):
        return False
    runtime_wrappers.coerce_to_expected_memory_format = _keeps_plain(coerce)
    return True
