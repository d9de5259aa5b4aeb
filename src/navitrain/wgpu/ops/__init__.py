"""Operator handlers of the wgpu device, one module per family; importing registers them all."""
from navitrain.wgpu.ops import (  # noqa: F401
    activations, amp, conv, copy, elementwise, factory, foreach, loss_nll, loss_pointwise, matmul, norm, row_norm, pooling, random, reductions, shape, softmax, upsample, views,
    embedding, indexing, masked, scatter_reduce, scan, sort, tensor_ops, attention, rnn, rnn_layers,
    special, search, distance, conv3d, pool3d, embedding_bag, multinomial,
)
from navitrain.wgpu.ops import complex  # noqa: E402,F401  (complex64: views, conj, arithmetic, sums; issue 17)
from navitrain.wgpu.ops import order_stats, histogram, segments  # noqa: F401,E402  (issue 17: order statistics, bucketing, segment_reduce)
from navitrain.wgpu.ops import linalg  # noqa: E402,F401  (LU, solve, inv, det, Cholesky, triangular solves; issue 17)
from navitrain.wgpu.ops import sync_batch_norm  # noqa: F401,E402  (issue 21: the ops nn.SyncBatchNorm calls)
from navitrain.wgpu.ops import special_functions  # noqa: F401,E402  (issue 17: Bessel, Airy, erfcx, ndtri, zeta, igamma, polynomials)
from navitrain.wgpu.ops import pdist, bilinear, rrelu, pool_fractional, upsample_aa, grid_sample3d, ctc  # noqa: F401,E402  (issue 17: nn ops that fell back)
from navitrain.wgpu.ops import fft  # noqa: E402,F401  (issue 17: _fft_c2c/_fft_r2c/_fft_c2r on the GPU)
