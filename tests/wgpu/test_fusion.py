"""Fusion of pointwise chains (navitrain.wgpu.fusion) in graphs of torch.compile(backend="wgpu").

Every rule of fusion_ops.RULES: a small aten graph (make_fx) fused into one kernel against the same ops
run unfused through their handlers (float32 rounding only: rtol/atol 1e-6, NaN and infinities equal)
and against the CPU, on random inputs with NaN, +-inf, signed zeros and large values. Then whole models
through torch.compile: outputs and gradients against eager wgpu and the CPU, with fewer dispatches than
the same compiled graphs unfused."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.fx.experimental.proxy_tensor import make_fx

import navitrain.wgpu.compile as wc
from navitrain.wgpu import fusion, fusion_ops
from navitrain.wgpu.runtime import runtime

aten = torch.ops.aten
SHAPE = (5, 7)
SPECIALS = [float("nan"), float("inf"), float("-inf"), 0.0, -0.0, 1e30, -1e30, 1e-30, 0.5, -3.0, 3.0]


def _inputs(seed, dtype=torch.float32):
    """x, y: fresh random values with every special value in each; row: broadcasts along dim 0; mask."""
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(SHAPE, generator=g) * 2, torch.randn(SHAPE, generator=g) * 2
    flat_x, flat_y = x.view(-1), y.view(-1)
    for k, v in enumerate(SPECIALS):
        flat_x[k] = v
        flat_y[len(SPECIALS) + k] = v
        flat_y[(3 * k + 1) % flat_y.numel()] = SPECIALS[-1 - k]
    row = torch.randn(SHAPE[1], generator=g)
    row[0] = float("nan")
    mask = torch.rand(SHAPE, generator=g) > 0.5
    return x.to(dtype), y.to(dtype), row, mask


CASES = {
    "add": lambda x, y, r, m: torch.relu(x + y),
    "add_alpha": lambda x, y, r, m: torch.add(x, y, alpha=-0.5) * x,
    "add_scalar": lambda x, y, r, m: aten.add.Scalar(x * y, 2.5),
    "sub": lambda x, y, r, m: (x - y) * 3.0,
    "sub_alpha_scalar": lambda x, y, r, m: aten.sub.Scalar(torch.sub(x, y, alpha=3), 0.1),
    "rsub": lambda x, y, r, m: (1.5 - x) * y,
    "rsub_tensor": lambda x, y, r, m: torch.rsub(x, y, alpha=2) + 1,
    "mul_div": lambda x, y, r, m: x * y / (y + 1.0),
    "mul_div_scalar": lambda x, y, r, m: aten.div.Scalar(aten.mul.Scalar(x, 3), 7),
    "neg": lambda x, y, r, m: -(x * y),
    "exp_log": lambda x, y, r, m: torch.log(torch.exp(x) + y),
    "sqrt_rsqrt": lambda x, y, r, m: torch.sqrt(x) * torch.rsqrt(y),
    "tanh_sigmoid": lambda x, y, r, m: torch.tanh(x) + torch.sigmoid(y),
    "silu": lambda x, y, r, m: F.silu(x * y),
    "gelu": lambda x, y, r, m: F.gelu(x + y),
    "gelu_tanh": lambda x, y, r, m: F.gelu(x + y, approximate="tanh"),
    "leaky_relu_hardtanh": lambda x, y, r, m: F.hardtanh(F.leaky_relu(x, 0.2) * y, -2.0, 3.0),
    "gelu_backward": lambda x, y, r, m: aten.gelu_backward(x * 2, y) + aten.gelu_backward(x, y, approximate="tanh"),
    "sigmoid_tanh_backward": lambda x, y, r, m: aten.sigmoid_backward(x, y) - aten.tanh_backward(x, y),
    "threshold_backward": lambda x, y, r, m: aten.threshold_backward(x * 3, y, 0.5),
    "where": lambda x, y, r, m: torch.where(m, x * 2, y),
    "clamp": lambda x, y, r, m: torch.clamp(x * 2, -1.0, 1.5),
    "clamp_tensor": lambda x, y, r, m: torch.clamp(x + 1, min=y, max=y + 2),
    "clamp_min_max": lambda x, y, r, m: aten.clamp_max(aten.clamp_min(x * 2, -0.5), 0.5),
    "clamp_min_max_tensor": lambda x, y, r, m: aten.clamp_max.Tensor(aten.clamp_min.Tensor(x * 2, y), r),
    "pow": lambda x, y, r, m: (x * y) ** 2 + (x + y) ** 0.5 + x ** 3.0 + y ** -1.5,
    "to_bfloat16": lambda x, y, r, m: (x * y).to(torch.bfloat16) * 2,
    "convert_to_float16": lambda x, y, r, m: (x - y).to(torch.float16) + 1,   # as prims.convert_element_type
    "dropout_backward": lambda x, y, r, m: aten.native_dropout_backward(x * y, m, 2.0),
    "bool_as_number": lambda x, y, r, m: x * m + 1,
    "broadcast_row": lambda x, y, r, m: torch.relu(x * r + y),
    # A decomposed attention's operand: scaled, expanded to its own shape, copied contiguous.
    "expand_clone": lambda x, y, r, m: (x * 0.5).expand(SHAPE).clone(memory_format=torch.contiguous_format) * y,
}


def _traced(name, args):
    gm = make_fx(CASES[name])(*args)
    if name == "convert_to_float16":
        # Graphs of torch.compile may convert with prims.convert_element_type, which eager code (and
        # so make_fx on real wgpu tensors) never reaches: put it in place of the _to_copy.
        for node in gm.graph.nodes:
            if node.target is aten._to_copy.default:
                node.target, node.args, node.kwargs = torch.ops.prims.convert_element_type.default, \
                    (node.args[0], node.kwargs["dtype"]), {}
        gm.recompile()
    return gm


def _fused_graph(fn, args):
    gm = make_fx(fn)(*args) if callable(fn) else _traced(fn, args)
    targets = {n.target for n in gm.graph.nodes if n.op == "call_function"}
    result = fusion.fuse(gm)
    return gm, targets, result


@pytest.mark.parametrize("name", sorted(CASES))
def test_fused_rule_equals_the_unfused_ops_and_the_cpu(name):
    fn = CASES[name]
    cpu = _inputs(sum(map(ord, name)))
    dev = [t.to("wgpu") for t in cpu]
    gm, targets, result = _fused_graph(name, dev)
    assert result.groups == 1 and not [n for n in gm.graph.nodes if n.op == "call_function"], gm.graph
    fused, unfused, expected = gm(*dev).cpu(), fn(*dev).cpu(), fn(*cpu)
    assert fused.dtype == expected.dtype
    torch.testing.assert_close(fused, unfused, rtol=1e-6, atol=1e-6, equal_nan=True)
    # Against the CPU where the unfused handlers agree with it (they differ at a few special values,
    # gelu(+inf) for one: inf on wgpu, NaN from the CPU's vectorized kernel; not fusion's business).
    agree = torch.isclose(unfused.double(), expected.double(), rtol=1e-5, atol=1e-5, equal_nan=True)
    assert agree.float().mean() > 0.85
    torch.testing.assert_close(fused[agree], expected[agree], rtol=1e-5, atol=1e-5, equal_nan=True)


def test_every_rule_has_a_case():
    dev = [t.to("wgpu") for t in _inputs(0)]
    covered = set()
    for name in CASES:
        covered |= {n.target for n in _traced(name, dev).graph.nodes if n.op == "call_function"}
    assert set(fusion_ops.RULES) <= covered, set(fusion_ops.RULES) - covered


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_narrow_intermediates_round_as_the_unfused_ops_store_them(dtype):
    cpu = _inputs(11, dtype)
    dev = [t.to("wgpu") for t in cpu]

    def fn(x, y, r, m):
        return torch.sigmoid(x * y + 0.1) * x - y / 3

    gm, _, result = _fused_graph(fn, dev)
    assert result.groups == 1 and result.ops == 6
    # Each bf16/f16 intermediate rounded exactly as the unfused op stores it: equal, not close.
    torch.testing.assert_close(gm(*dev).cpu(), fn(*dev).cpu(), rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(gm(*dev).cpu(), fn(*cpu), rtol=1e-2, atol=1e-2, equal_nan=True)


def test_what_is_not_understood_stays_unfused(lenient):   # float64 takes the CPU fallback
    dev = [t.to("wgpu") for t in _inputs(12)]

    def fn(x, y, r, m):
        a = x * y
        b = a + 1                       # a is also a result: a and b cannot share one kernel
        c = torch.sum(b, dim=0)         # a reduction
        d = (x > 0).int() + 1           # integers
        e = torch.div(x, y, rounding_mode="floor") * 2   # a rounding mode no rule covers
        f = (x * r).double() + 1        # float64 runs on the CPU
        return a, b, c, d, e, f

    gm, targets, result = _fused_graph(fn, dev)
    assert result.groups == 0
    for got, want in zip(gm(*dev), fn(*dev)):
        torch.testing.assert_close(got.cpu(), want.cpu(), equal_nan=True)


def test_a_group_keeps_at_most_four_inputs():
    dev = [torch.randn(SHAPE).to("wgpu") for _ in range(6)]

    def fn(a, b, c, d, e, f):
        return torch.relu(a * b + c * d + e * f)

    gm, _, result = _fused_graph(fn, dev)
    modules = [m for m in gm.modules() if isinstance(m, fusion.FusedPointwise)]
    assert result.groups >= 1 and result.ops < 6 and all(len(m.load_types) <= 4 for m in modules)
    torch.testing.assert_close(gm(*dev).cpu(), fn(*dev).cpu(), rtol=1e-6, atol=1e-6)


# -- whole models through torch.compile ---------------------------------------------------------------
class GeluResidualMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.head = nn.Linear(6, 6), nn.Linear(6, 6), nn.Linear(6, 3)

    def forward(self, x):
        h = F.gelu(self.a(x))
        h = torch.relu(self.b(h) + x)           # residual + ReLU
        return self.head(torch.sigmoid(h) * 2.0 - 0.5)


class BatchNormApplyReLU(nn.Module):
    """BatchNorm applied by hand from given statistics, then ReLU (a chain over broadcast inputs)."""

    def __init__(self, channels=3):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 1)
        self.weight, self.bias = nn.Parameter(torch.rand(channels) + 0.5), nn.Parameter(torch.randn(channels))
        self.register_buffer("mean", torch.randn(channels))
        self.register_buffer("var", torch.rand(channels) + 0.1)

    def forward(self, x):
        shape = (1, -1, 1, 1)
        scale = (self.weight * torch.rsqrt(self.var + 1e-5)).view(shape)
        y = (self.conv(x) - self.mean.view(shape)) * scale + self.bias.view(shape)
        return torch.relu(y)


def _train(model, x, device, compiled, fuse=True, steps=2):
    """Outputs and parameter gradients of `steps` forward/backward calls, and dispatches of the last."""
    fusion.ENABLED = fuse
    try:
        net = copy.deepcopy(model).to(device)
        run = torch.compile(net, backend="wgpu") if compiled else net
        outs = []
        for _ in range(steps):
            net.zero_grad(set_to_none=True)
            if device == "wgpu":
                runtime().synchronize()
                before = runtime().dispatch_count
            out = run(x.to(device))
            out.square().sum().backward()
            dispatches = runtime().dispatch_count - before if device == "wgpu" else 0
            outs.append(out.detach().cpu())
        grads = {k: p.grad.cpu() for k, p in net.named_parameters()}
        return outs[-1], grads, dispatches
    finally:
        fusion.ENABLED = True


@pytest.mark.parametrize("make_model, shape", [(GeluResidualMLP, (4, 6)), (BatchNormApplyReLU, (2, 3, 4, 4))])
def test_compiled_fused_model_matches_eager_and_cpu_with_fewer_dispatches(fresh_compile_state, make_model, shape):
    torch.manual_seed(13)
    model = make_model()
    x = torch.randn(shape)
    x.view(-1)[1], x.view(-1)[5] = float("inf"), float("-inf")
    x.view(-1)[-1] = float("nan")
    out_cpu, grads_cpu, _ = _train(model, x, "cpu", compiled=False)
    out_eager, grads_eager, _ = _train(model, x, "wgpu", compiled=False)
    out, grads, fused_dispatches = _train(model, x, "wgpu", compiled=True, steps=3)
    # (The MLP's chains after its products run in the products' stores: fusion_gemm.py.)
    assert wc.stats["fused_groups"] + wc.stats["gemm_epilogues"] >= 2
    assert wc.stats["forward_replays"] >= 1 and wc.stats["backward_replays"] >= 1
    torch.testing.assert_close(out, out_eager, rtol=1e-6, atol=1e-6, equal_nan=True)
    torch.testing.assert_close(out, out_cpu, rtol=1e-5, atol=1e-5, equal_nan=True)
    assert torch.isnan(out).any()
    for name in grads:
        torch.testing.assert_close(grads[name], grads_eager[name], rtol=1e-5, atol=1e-5, equal_nan=True, msg=name)
        torch.testing.assert_close(grads[name], grads_cpu[name], rtol=1e-4, atol=1e-5, equal_nan=True, msg=name)
    torch._dynamo.reset()
    _, _, unfused_dispatches = _train(model, x, "wgpu", compiled=True, fuse=False, steps=3)
    assert fused_dispatches < unfused_dispatches
