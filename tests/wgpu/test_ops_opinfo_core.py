"""Part-1 kernels against PyTorch's OpInfo samples: elementwise, comparisons, where, fill/copy,
reductions, matmul family, softmax/log_softmax, nll_loss (forward and backward where differentiable)."""
import pytest
import torch

from tests.wgpu import opinfo

F32 = torch.float32

# (OpInfo name, variant, dtypes, extra keyword arguments for opinfo.check)
CASES = [
    ("add", "", [F32, torch.int64, torch.float16], {}),
    ("sub", "", [F32, torch.int64], {}),
    ("mul", "", [F32, torch.int64, torch.bool], {}),
    ("div", "no_rounding_mode", [F32], {}),
    ("div", "trunc_rounding", [F32, torch.int64], {}),
    ("div", "floor_rounding", [F32, torch.int64], {}),
    ("remainder", "", [F32, torch.int64], {}),
    ("fmod", "", [F32], {}),
    ("pow", "", [F32], {"rtol": 1e-4}),
    ("maximum", "", [F32, torch.int64], {}),
    ("minimum", "", [F32], {}),
    ("neg", "", [F32, torch.int64], {}),
    ("abs", "", [F32, torch.int64], {}),
    ("exp", "", [F32, torch.bfloat16], {}),
    ("expm1", "", [F32], {}),
    ("log", "", [F32], {}),
    ("log1p", "", [F32], {}),
    ("log2", "", [F32], {}),
    ("sqrt", "", [F32], {}),
    ("rsqrt", "", [F32], {"rtol": 1e-4}),
    ("reciprocal", "", [F32], {}),
    ("sin", "", [F32], {"atol": 2e-5}),
    ("cos", "", [F32], {"atol": 2e-5}),
    ("tanh", "", [F32], {}),
    ("sigmoid", "", [F32], {}),
    ("erf", "", [F32], {"atol": 2e-7}),
    ("sign", "", [F32], {}),
    ("floor", "", [F32], {}),
    ("ceil", "", [F32], {}),
    ("round", "", [F32], {}),
    ("trunc", "", [F32], {}),
    ("clamp", "", [F32, torch.int64], {}),
    ("addcmul", "", [F32], {}),
    ("addcdiv", "", [F32], {}),
    ("lerp", "", [F32], {}),
    ("eq", "", [F32, torch.int64, torch.bool], {}),
    ("ne", "", [F32], {}),
    ("lt", "", [F32, torch.int64], {}),
    ("le", "", [F32], {}),
    ("gt", "", [F32], {}),
    ("ge", "", [F32], {}),
    ("logical_not", "", [torch.bool, F32], {}),
    ("logical_and", "", [torch.bool], {}),
    ("where", "", [F32, torch.int64], {}),
    ("masked_fill", "", [F32], {}),
    ("fill", "", [F32, torch.int64], {}),
    ("zero_", "", [F32], {}),
    ("clone", "", [F32, torch.int64, torch.bool], {}),
    ("contiguous", "", [F32], {}),
    ("sum", "", [F32, torch.int64, torch.bool], {"rtol": 1e-4, "atol": 1e-4}),
    ("mean", "", [F32], {"rtol": 1e-4, "atol": 1e-5}),
    ("prod", "", [F32], {"rtol": 1e-4, "atol": 1e-4}),
    ("amax", "", [F32, torch.int64], {}),
    ("amin", "", [F32], {}),
    ("max", "reduction_with_dim", [F32], {}),
    ("max", "reduction_no_dim", [F32], {}),
    ("min", "reduction_with_dim", [F32], {}),
    ("argmax", "", [F32, torch.int64], {}),
    ("argmin", "", [F32], {}),
    ("any", "", [torch.bool, F32], {}),
    ("all", "", [torch.bool], {}),
    ("var", "", [F32], {"rtol": 1e-4, "atol": 1e-5}),
    ("std", "", [F32], {"rtol": 1e-4, "atol": 1e-5}),
    ("linalg.vector_norm", "", [F32], {"rtol": 1e-4, "atol": 1e-5}),
    ("mm", "", [F32], {"rtol": 1e-4, "atol": 1e-4}),
    ("bmm", "", [F32], {"rtol": 1e-4, "atol": 1e-4}),
    ("addmm", "", [F32], {"rtol": 1e-4, "atol": 1e-4}),
    ("matmul", "", [F32], {"rtol": 1e-4, "atol": 1e-4}),
    ("baddbmm", "", [F32], {"rtol": 1e-4, "atol": 1e-4}),
    ("nn.functional.linear", "", [F32], {"rtol": 1e-4, "atol": 1e-4}),
    ("softmax", "", [F32], {"rtol": 1e-5, "atol": 1e-6}),
    ("log_softmax", "", [F32], {"rtol": 1e-5, "atol": 1e-5}),
    ("nn.functional.nll_loss", "", [F32], {"rtol": 1e-5, "atol": 1e-5}),
    ("nn.functional.cross_entropy", "", [F32], {"rtol": 1e-4, "atol": 1e-5}),
]


@pytest.mark.parametrize("name,variant,dtypes,kw", CASES, ids=[f"{c[0]}{'.' + c[1] if c[1] else ''}" for c in CASES])
def test_op_matches_cpu(name, variant, dtypes, kw):
    op = opinfo.find(name, variant)
    for dtype in dtypes:
        checked = opinfo.check(op, dtype, **kw)
        assert checked > 0, f"{name}: no samples for {dtype}"
