"""Operator handlers of the wgpu device, one module per family; importing registers them all.

A family whose ops or modules this PyTorch release lacks (an older one than CI's: the device machines run 2.11)
is left out with a warning instead of making `import navitrain.wgpu` fail; `SKIPPED` names them and why, and
tests/wgpu/test_older_torch_imports.py requires it empty on the PyTorch CI runs.
"""
# The order does not matter: dispatch.implements raises on a second handler for an op, and conv3d imports conv
# itself before replacing its handlers.
from __future__ import annotations

import importlib
import warnings

FAMILIES = (
    "activations",
    "amp",
    "attention",
    "bilinear",  # issue 17: nn ops that fell back (pdist, bilinear, rrelu, fractional pooling, AA upsampling, ...)
    "bit_ops",  # issue 17: bitwise shifts (int64 too) and frexp
    "complex",  # complex64: views, conj, arithmetic, sums (issue 17)
    "conv",
    "conv3d",
    "copy",
    "ctc",
    "decomposed_backward",  # issue 17: grid_sampler_2d, bicubic, trilinear and margin-loss backwards
    "distance",
    "elementwise",
    "embedding",
    "embedding_bag",
    "factory",
    "fft",  # issue 17: _fft_c2c/_fft_r2c/_fft_c2r on the GPU
    "foreach",
    "global_avg_pool",  # issue 23: adaptive_avg_pool2d(x, 1) as one autograd node (squeeze-excitation)
    "grid_sample3d",
    "grouped_mm",  # issue 17 (T4): aten._grouped_mm (transformers' mixture-of-experts layers)
    "histogram",  # issue 17: order statistics, bucketing, segment_reduce (with order_stats, segments)
    "indexing",
    "linalg",  # LU, solve, inv, det, Cholesky, triangular solves (issue 17)
    "linalg_decompositions",  # eigh (Jacobi), SVD (issue 17)
    "linear_cross_entropy",  # issue 17: F.linear_cross_entropy's chunked custom ops run their body on the device
    "logspace",  # issue 17: logspace in float32 / float16 / bfloat16 (the decomposition needs float64)
    "loss_nll",
    "loss_pointwise",
    "masked",
    "matmul",
    "multinomial",
    "norm",
    "order_stats",
    "out_forms",  # issue 17: amax/amin/addmm/index_select out= (linear_cross_entropy's chunks)
    "pdist",
    "pool3d",
    "pool_fractional",
    "pooling",
    "random",
    "reductions",
    "renorm",  # issue 17: renorm as one autograd node (float16 / bfloat16 forward, float32 gradient)
    "resize_as",  # issue 17: resize_as_ on the device
    "rnn",
    "rnn_layers",
    "row_norm",
    "rrelu",
    "scan",
    "scatter_reduce",
    "search",
    "segments",
    "shape",
    "softmax",
    "sort",
    "special",
    "special_functions",  # issue 17: Bessel, Airy, erfcx, ndtri, zeta, igamma, polynomials
    "sync_batch_norm",  # issue 21: the ops nn.SyncBatchNorm calls
    "tensor_ops",
    "transformer_fastpath",  # nn.TransformerEncoder / MultiheadAttention inference fast paths
    "upsample",
    "upsample_aa",
    "upsample_autograd",
    "views",
    "weight_norm",  # issue 17 (T4): _weight_norm_interface_backward (wav2vec2's weight-normed conv)
)

SKIPPED: dict[str, str] = {}
for _family in FAMILIES:
    try:
        importlib.import_module(f"{__name__}.{_family}")
    except (ImportError, AttributeError) as _missing:  # e.g. torch.ops.aten has no such op in this release
        SKIPPED[_family] = f"{type(_missing).__name__}: {_missing}"
        warnings.warn(f"navitrain wgpu: the {_family} handlers are off on this PyTorch ({_missing}); those ops take "
                      "the counted CPU fallback", stacklevel=2)

