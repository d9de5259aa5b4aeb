"""WGSL expressions of activations that both the eager handlers (`ops/activations.py`) and the fusion of
compiled graphs (`fusion_ops.py`) emit, written once so a fused kernel computes exactly what the unfused
op does. `{a}` is the input."""
from __future__ import annotations

SQRT_2_OVER_PI = 0.7978845608028654
INV_SQRT_2 = 0.7071067811865476

# gelu(+inf) is NaN in the CPU's float32 (vectorized) kernel, its erf meeting inf * 0; the tanh form keeps
# inf there. (Its x > ~1.7e38 overflow to inf is left: drivers reassociate the products.)
GELU_ERF = ("select(0.5 * {a} * (1.0 + erf_f({a} * %r)), bitcast<f32>(0x7fc00000u), "
            "{a} == bitcast<f32>(0x7f800000u))" % INV_SQRT_2)
GELU_TANH = "0.5 * {a} * (1.0 + tanh_f(%r * ({a} + 0.044715 * {a} * {a} * {a})))" % SQRT_2_OVER_PI
