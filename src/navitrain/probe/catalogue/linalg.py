"""Matrix products in fp32/fp16/bf16 (the vendor BLAS path) and Linear forward/backward."""
from __future__ import annotations

from navitrain.probe.cases import case
from navitrain.probe.catalogue._util import backward, leaf, module_grads
from navitrain.probe.inputs import module, nn, randn, torch


def _products(device, dtype):
    """mm (square, odd sizes, a transposed operand), bmm, addmm, broadcasting matmul, matrix-vector."""
    a = randn(64, 96, device=device, dtype=dtype)
    b = randn(96, 80, device=device, dtype=dtype)
    odd_a = randn(33, 17, device=device, dtype=dtype)
    odd_b = randn(31, 17, device=device, dtype=dtype)
    batch_a = randn(5, 24, 40, device=device, dtype=dtype)
    batch_b = randn(5, 40, 12, device=device, dtype=dtype)
    bias = randn(80, device=device, dtype=dtype)
    vec = randn(96, device=device, dtype=dtype)
    return {
        "mm": a @ b,
        "mm odd sizes, transposed operand": odd_a @ odd_b.t(),
        "bmm": torch.bmm(batch_a, batch_b),
        "addmm": torch.addmm(bias, a, b, beta=0.5, alpha=2.0),
        "broadcast matmul": batch_a @ randn(40, 7, device=device, dtype=dtype),
        "matrix-vector": a @ vec,
    }


@case("matmul-fp32", dtype="float32", essential=True, group="matmul")
def matmul_fp32(device, dtype):
    """fp32 matrix products, forward and backward (the first rocBLAS/cuBLAS call of any training run)."""
    out = _products(device, dtype)
    a = leaf(randn(48, 72, device=device, dtype=dtype))
    b = leaf(randn(72, 40, device=device, dtype=dtype))
    out["grad a"], out["grad b"] = backward(a @ b, a, b)
    return out


@case("matmul-fp16", dtype="float16", group="matmul")
def matmul_fp16(device, dtype):
    """fp16 matrix products (tensor cores / half GEMM kernels)."""
    return _products(device, dtype)


@case("matmul-bf16", dtype="bfloat16", group="matmul")
def matmul_bf16(device, dtype):
    """bf16 matrix products."""
    return _products(device, dtype)


@case("linear-fwd-bwd", dtype="float32", group="matmul")
def linear_fwd_bwd(device, dtype):
    """nn.Linear with bias on a 3-d input: output, input gradient, weight and bias gradients."""
    layer = module(nn.Linear(37, 29), device, dtype)
    x = leaf(randn(4, 11, 37, device=device, dtype=dtype))
    y = layer(x)
    (gx,) = backward(y, x)
    return {"output": y, "grad input": gx, **module_grads(layer)}


@case("einsum-baddbmm", dtype="float32", group="matmul")
def einsum_baddbmm(device, dtype):
    """einsum contractions and baddbmm (attention-style batched products)."""
    q = randn(3, 4, 10, 8, device=device, dtype=dtype)
    k = randn(3, 4, 12, 8, device=device, dtype=dtype)
    base = randn(6, 10, 12, device=device, dtype=dtype)
    return (torch.einsum("bhqd,bhkd->bhqk", q, k), torch.einsum("bhqd->bd", q),
            torch.baddbmm(base, q.reshape(12, 10, 8)[:6], k.reshape(12, 12, 8)[:6].transpose(1, 2), alpha=0.5))
