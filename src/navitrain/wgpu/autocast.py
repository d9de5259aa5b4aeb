"""torch.autocast("wgpu"): mixed precision on the wgpu device.

PyTorch ships autocast kernels for CUDA, CPU, XPU, MPS, ... but none for the PrivateUse1 key, so
navitrain registers them: every op falls through the AutocastPrivateUse1 key untouched, except
- matrix products and convolutions, which run in the autocast dtype (float16 or bfloat16): their inputs
  are cast down, so storage and bandwidth are halved, while the kernels still accumulate in f32;
- ops whose precision matters (softmax, norms, losses, exp/log, sums), which run in float32.
The lists follow the ones PyTorch uses for CUDA.
"""
from __future__ import annotations

import torch

_LOWER = (
    "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d.input", "convolution",
    "_convolution", "matmul", "mm", "bmm", "addmm", "addbmm", "baddbmm", "linear", "mv", "dot", "chain_matmul",
    "prelu", "scaled_dot_product_attention",
)
_FP32 = (
    "softmax.int", "log_softmax.int", "_softmax", "_log_softmax", "layer_norm", "native_layer_norm",
    "group_norm", "native_group_norm", "batch_norm", "norm.Scalar", "norm.ScalarOpt_dim", "exp", "log", "log10",
    "log2", "log1p", "expm1", "pow.Tensor_Scalar", "pow.Tensor_Tensor", "sum", "sum.dim_IntList", "prod",
    "cumsum", "cross_entropy_loss", "nll_loss", "nll_loss2d", "mse_loss", "l1_loss", "smooth_l1_loss",
    "binary_cross_entropy_with_logits", "kl_div", "cosine_similarity", "rsqrt", "reciprocal", "acos", "asin",
    "cosh", "sinh", "tan", "erfinv", "softplus", "logsumexp",
)

_KEY = "AutocastPrivateUse1"
_EXCLUDE = torch._C.DispatchKeySet(torch._C.DispatchKey.AutocastPrivateUse1)
_libs: list = []


def _cast(value, dtype):
    if isinstance(value, torch.Tensor):
        if value.is_floating_point() and value.dtype != dtype and value.device.type == "wgpu":
            return value.to(dtype)
        return value
    if isinstance(value, (list, tuple)):
        return type(value)(_cast(v, dtype) for v in value)
    return value


def _wrapper(op, target):
    def run(*args, **kwargs):
        dtype = torch.get_autocast_dtype("wgpu") if target == "lower" else torch.float32
        args = _cast(args, dtype)
        kwargs = {k: _cast(v, dtype) for k, v in kwargs.items()}
        with torch._C._ExcludeDispatchKeyGuard(_EXCLUDE):
            return op(*args, **kwargs)
    return run


def register() -> None:
    if _libs:
        return
    fallthrough = torch.library.Library("_", "IMPL")
    fallthrough.fallback(torch.library.fallthrough_kernel, _KEY)
    lib = torch.library.Library("aten", "IMPL")
    for names, target in ((_LOWER, "lower"), (_FP32, "fp32")):
        for name in names:
            packet_name, _, overload = name.partition(".")
            packet = getattr(torch.ops.aten, packet_name, None)
            if packet is None:
                continue
            overloads = [overload] if overload else list(packet.overloads())
            for ov in overloads:
                if ov not in packet.overloads() or ov.endswith("out"):
                    continue
                full = f"{packet_name}.{ov}" if ov != "default" else packet_name
                try:
                    if torch._C._dispatch_has_kernel_for_dispatch_key(f"aten::{full}", _KEY):
                        continue  # PyTorch already handles it on this key
                except RuntimeError:  # an overload name with no operator behind it
                    continue
                try:
                    lib.impl(full, _wrapper(getattr(packet, ov), target), _KEY)
                except RuntimeError:  # already registered, or not an op autocast can see
                    pass
    _libs.extend([fallthrough, lib])
