"""Losses on wgpu against PyTorch on the CPU: OpInfo samples, every CrossEntropyLoss variant, large
inputs (multi-workgroup reductions), extreme values, and clip_grad_norm_. Strict mode (conftest) makes
any op without a kernel fail the test, so "runs with zero fallbacks" is checked by every test here."""
import pytest
import torch
import torch.nn.functional as F

import navitrain.wgpu as nw
from navitrain.wgpu.dispatch import OPS
from tests.wgpu import opinfo

DEV = "wgpu"
F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16
aten = torch.ops.aten

# The CPU computes these composite or half-precision losses step by step in the input dtype, rounding
# every intermediate; the device keeps f32 until the store. They differ by a few units in the last place.
LOW = {"rtol": 1e-2, "atol": 1e-2}

OPINFO_CASES = [
    ("nn.functional.mse_loss", [F32, BF16], {}),
    ("nn.functional.mse_loss", [F16], LOW),
    ("nn.functional.l1_loss", [F32, F16], {}),
    ("nn.functional.smooth_l1_loss", [F32, F16], {}),
    ("nn.functional.huber_loss", [F32, F16], {}),
    ("nn.functional.binary_cross_entropy", [F32], {}),
    ("nn.functional.binary_cross_entropy", [F16], LOW),
    ("nn.functional.binary_cross_entropy_with_logits", [F32], {}),
    # bfloat16 is checked against float64 below: the CPU's bfloat16 result is 0.37 off in relative terms.
    ("nn.functional.binary_cross_entropy_with_logits", [F16], LOW),
    ("nn.functional.cross_entropy", [F32], {"rtol": 1e-4, "atol": 1e-5}),
    ("nn.functional.cross_entropy", [F16], {}),
    ("nn.functional.kl_div", [F32, F16], {}),
]


@pytest.mark.filterwarnings("ignore:reduction. 'mean' divides the total loss")
@pytest.mark.parametrize("name,dtypes,kw", OPINFO_CASES,
                         ids=[f"{c[0]}-{'-'.join(str(d)[6:] for d in c[1])}" for c in OPINFO_CASES])
def test_opinfo_matches_cpu(name, dtypes, kw):
    op = opinfo.find(name)
    torch.manual_seed(0)  # OpInfo draws its samples from the global generator
    for dtype in dtypes:
        assert opinfo.check(op, dtype, max_samples=30, **kw) > 0


def _run(fn, inputs, grad_of=(0,), tol=None):
    """fn(*inputs) forward and backward (w.r.t. inputs[grad_of]) on wgpu and on the CPU in float64."""
    tol = tol or {"rtol": 1e-4, "atol": 1e-5}
    cpu = [t.detach().to(torch.float64 if t.dtype.is_floating_point else t.dtype) for t in inputs]
    dev = [t.detach().to(DEV) for t in inputs]
    for k in grad_of:
        cpu[k].requires_grad_()
        dev[k].requires_grad_()
    ref, out = fn(*cpu), fn(*dev)
    assert out.device.type == DEV and out.dtype == inputs[0].dtype
    torch.testing.assert_close(out.detach().cpu().double(), ref.detach(), **tol, msg=lambda m: f"output: {m}")
    g = torch.randn(ref.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    ref.backward(g)
    out.backward(g.to(out.dtype).to(DEV))
    for k in grad_of:
        torch.testing.assert_close(dev[k].grad.cpu().double(), cpu[k].grad, **tol, msg=lambda m: f"grad {k}: {m}")


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


# -- pointwise losses at sizes that need several workgroups to reduce ------------------------------------
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_regression_losses_large(reduction):
    g = _gen(1)
    x, t = torch.randn(300, 257, generator=g), torch.randn(300, 257, generator=g)
    tol = {"rtol": 1e-4, "atol": 1e-3} if reduction == "sum" else None
    _run(lambda a, b: F.mse_loss(a, b, reduction=reduction), [x, t], tol=tol)
    _run(lambda a, b: F.l1_loss(a, b, reduction=reduction), [x, t], tol=tol)
    _run(lambda a, b: F.smooth_l1_loss(a, b, reduction=reduction, beta=0.5), [x, t], tol=tol)
    _run(lambda a, b: F.huber_loss(a, b, reduction=reduction, delta=0.7), [x, t], tol=tol)


def test_regression_losses_gradient_with_respect_to_target():
    g = _gen(2)
    x, t = torch.randn(40, 9, generator=g), torch.randn(40, 9, generator=g)
    for fn in (F.mse_loss, F.l1_loss, F.smooth_l1_loss, F.huber_loss):
        _run(fn, [x, t], grad_of=(0, 1))


def test_mse_loss_non_contiguous_and_broadcast_target():
    g = _gen(3)
    x = torch.randn(30, 20, generator=g).t()
    t = torch.randn(20, 1, generator=g)
    with pytest.warns(UserWarning, match="target size"):
        _run(lambda a, b: F.mse_loss(a, b), [x, t])


def test_half_regression_losses_match_float64():
    g = _gen(4)
    x, t = torch.randn(64, 33, generator=g).half(), torch.randn(64, 33, generator=g).half()
    for fn in (F.mse_loss, F.smooth_l1_loss, F.huber_loss):
        _run(fn, [x, t], tol=LOW)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_bce_with_logits_weight_and_pos_weight_large(reduction):
    g = _gen(5)
    x = torch.randn(500, 37, generator=g) * 4
    t = torch.rand(500, 37, generator=g)
    w = torch.rand(37, generator=g)
    pw = torch.rand(37, generator=g) * 3
    tol = {"rtol": 1e-4, "atol": 1e-3} if reduction == "sum" else None
    _run(lambda a, b, c, d: F.binary_cross_entropy_with_logits(a, b, weight=c, pos_weight=d, reduction=reduction),
         [x, t, w, pw], tol=tol)
    _run(lambda a, b, d: F.binary_cross_entropy_with_logits(a, b, pos_weight=d, reduction=reduction), [x, t, pw],
         grad_of=(0, 1), tol=tol)


@pytest.mark.parametrize("dtype", [F16, BF16])
def test_bce_with_logits_low_precision_matches_float64(dtype):
    g = _gen(13)
    x = (torch.randn(64, 9, generator=g) * 3).to(dtype)
    t = torch.rand(64, 9, generator=g).to(dtype)
    pw = (torch.rand(9, generator=g) * 2).to(dtype)
    _run(lambda a, b, d: F.binary_cross_entropy_with_logits(a, b, pos_weight=d, reduction="none"), [x, t, pw],
         tol={"rtol": 2e-2, "atol": 2e-2})
    _run(lambda a, b: F.binary_cross_entropy_with_logits(a, b), [x, t], tol={"rtol": 2e-2, "atol": 2e-2})


def test_bce_with_logits_extreme_logits_stay_finite():
    x = torch.tensor([-200.0, -90.0, -30.0, 0.0, 30.0, 90.0, 200.0])
    t = torch.tensor([1.0, 0.0, 1.0, 0.5, 0.0, 1.0, 0.0])
    pw = torch.full((7,), 2.5)
    _run(lambda a, b, d: F.binary_cross_entropy_with_logits(a, b, pos_weight=d, reduction="none"), [x, t, pw])


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_bce_large_with_weight(reduction):
    g = _gen(6)
    x = torch.rand(400, 50, generator=g) * 0.98 + 0.01
    t = torch.rand(400, 50, generator=g)
    w = torch.rand(400, 50, generator=g)
    tol = {"rtol": 1e-4, "atol": 1e-3} if reduction == "sum" else None
    _run(lambda a, b, c: F.binary_cross_entropy(a, b, weight=c, reduction=reduction), [x, t, w], tol=tol)


def test_bce_probabilities_of_exactly_zero_and_one_are_clamped():
    x = torch.tensor([0.0, 1.0, 0.0, 1.0, 0.5])
    t = torch.tensor([0.0, 1.0, 1.0, 0.0, 0.3])
    _run(lambda a, b: F.binary_cross_entropy(a, b, reduction="none"), [x, t])


# -- cross entropy ---------------------------------------------------------------------------------------
def _needs_gather(fn):
    # CrossEntropyLoss with class weights and label smoothing gathers the weights of the targets.
    return pytest.mark.skipif(aten.gather.default not in OPS,
                              reason="needs the indexing family's aten.gather kernel")(fn)


CE_INDEX_CASES = {
    "plain": dict(),
    "label_smoothing": dict(label_smoothing=0.1),
    "ignore_index": dict(ignore_index=2),
    "ignore_index_label_smoothing": dict(ignore_index=2, label_smoothing=0.2),
    "weights": dict(weight=True),
    "weights_ignore_index": dict(weight=True, ignore_index=0),
    "sum": dict(reduction="sum", label_smoothing=0.05),
    "none": dict(reduction="none", ignore_index=1),
}


@pytest.mark.parametrize("case", list(CE_INDEX_CASES))
@pytest.mark.parametrize("spatial", [False, True], ids=["flat", "spatial"])
def test_cross_entropy_class_indices(case, spatial):
    kw = dict(CE_INDEX_CASES[case])
    g = _gen(7)
    shape = (6, 5, 3, 4) if spatial else (37, 11)
    C = shape[1]
    x = torch.randn(shape, generator=g) * 3
    target = torch.randint(0, C, (shape[0],) + shape[2:], generator=g)
    inputs = [x, target]
    if kw.pop("weight", False):
        inputs.append(torch.rand(C, generator=g) + 0.1)
        _run(lambda a, t, w: F.cross_entropy(a, t, weight=w, **kw), inputs)
    else:
        _run(lambda a, t: F.cross_entropy(a, t, **kw), inputs)


@_needs_gather
def test_cross_entropy_weights_with_label_smoothing():
    g = _gen(8)
    x, target = torch.randn(37, 11, generator=g), torch.randint(0, 11, (37,), generator=g)
    w = torch.rand(11, generator=g) + 0.1
    _run(lambda a, t, c: F.cross_entropy(a, t, weight=c, label_smoothing=0.1, ignore_index=3), [x, target, w])


@pytest.mark.parametrize("kw", [{}, {"label_smoothing": 0.15}, {"weight": True}, {"reduction": "sum"}],
                         ids=["plain", "label_smoothing", "weights", "sum"])
def test_cross_entropy_probability_targets(kw):
    kw = dict(kw)
    g = _gen(9)
    x = torch.randn(23, 7, 2, generator=g)
    p = torch.softmax(torch.randn(23, 7, 2, generator=g), dim=1)
    if kw.pop("weight", False):
        _run(lambda a, b, w: F.cross_entropy(a, b, weight=w, **kw), [x, p, torch.rand(7, generator=g)], grad_of=(0, 1))
    else:
        _run(lambda a, b: F.cross_entropy(a, b, **kw), [x, p], grad_of=(0, 1))


def test_cross_entropy_module_many_classes():
    g = _gen(10)
    x, target = torch.randn(64, 1000, generator=g), torch.randint(0, 1000, (64,), generator=g)
    _run(lambda a, t: torch.nn.CrossEntropyLoss(label_smoothing=0.1)(a, t), [x, target])


@pytest.mark.parametrize("log_target", [False, True])
@pytest.mark.parametrize("reduction", ["batchmean", "sum", "none"])
def test_kl_div(log_target, reduction):
    g = _gen(11)
    x = torch.log_softmax(torch.randn(17, 9, generator=g), dim=1)
    t = torch.softmax(torch.randn(17, 9, generator=g), dim=1)
    if log_target:
        t = t.log()
    _run(lambda a, b: F.kl_div(a, b, reduction=reduction, log_target=log_target), [x, t], grad_of=(0, 1))


# -- clip_grad_norm_ -------------------------------------------------------------------------------------
def _foreach_ready():
    # clip_grad_norm_(foreach=True) scales every gradient with _foreach_mul_.Tensor.
    return aten._foreach_mul_.Tensor in OPS


@pytest.mark.parametrize("foreach", [
    False,
    pytest.param(True, marks=pytest.mark.skipif(
        not _foreach_ready(), reason="aten._foreach_mul_.Tensor has no kernel: ops/foreach.py registers the "
        "_foreach ops it finds in dir(torch.ops.aten), which lists only the packets loaded so far")),
], ids=["single_tensor", "foreach"])
@pytest.mark.parametrize("norm_type,max_norm", [(2.0, 1.0), (2.0, 1e6), (1.0, 0.5), (float("inf"), 0.1)],
                         ids=["l2_clipped", "l2_not_clipped", "l1", "inf"])
def test_clip_grad_norm_matches_cpu(foreach, norm_type, max_norm):
    g = _gen(12)
    shapes = [(7, 5), (5,), (3, 4, 2), (1,)]
    grads = [torch.randn(s, generator=g) for s in shapes]
    cpu_params = [torch.zeros(s, requires_grad=True) for s in shapes]
    dev_params = [torch.zeros(s, device=DEV, requires_grad=True) for s in shapes]
    for pc, pd, gr in zip(cpu_params, dev_params, grads):
        pc.grad = gr.clone()
        pd.grad = gr.to(DEV)
    nw.reset_fallback_counts()
    total_cpu = torch.nn.utils.clip_grad_norm_(cpu_params, max_norm, norm_type=norm_type, foreach=foreach)
    total_dev = torch.nn.utils.clip_grad_norm_(dev_params, max_norm, norm_type=norm_type, foreach=foreach)
    assert total_dev.device.type == DEV
    torch.testing.assert_close(total_dev.cpu(), total_cpu, rtol=1e-5, atol=1e-6)
    for k, (pc, pd) in enumerate(zip(cpu_params, dev_params)):
        torch.testing.assert_close(pd.grad.cpu(), pc.grad, rtol=1e-5, atol=1e-6, msg=lambda m: f"grad {k}: {m}")
    assert nw.fallback_report()["total_fallback_calls"] == 0
