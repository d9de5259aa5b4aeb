"""The cheaper host paths of issue 19 compute what the slower ones did.

Multi-tensor list ops gather per-tensor metadata list by list (kernels/multi_tensor.py `_gather`) and
reuse a list's offsets for a later list holding the very same tensors (an in-place op's output and its
first input): lists that differ in one tensor, lists mixing dtypes (several dispatch groups) and lists
with empty tensors must still match the CPU. gemm_tuning._mode() parses NAVITRAIN_WGPU_TUNE only when
its text changes: a changed value must still take effect, a malformed one still raise.
"""
import pytest
import torch

from navitrain import _env
from navitrain.wgpu.kernels import gemm_tuning, multi_tensor
from navitrain.wgpu.runtime import runtime

SHAPES = [(7,), (3, 5), (0,), (1,), (33,), (2, 2, 2)]
SPECIAL = torch.tensor([float("nan"), float("inf"), -float("inf"), 0.0, -0.0, 1e-38, 3e38])


def _values(shape, gen, dtype=torch.float32, positive=False):
    t = torch.randn(shape, generator=gen, dtype=torch.float64)
    if t.numel():
        flat = t.view(-1)
        flat[: min(len(SPECIAL), flat.numel())] = SPECIAL[: flat.numel()].double()
        flat.copy_(flat[torch.randperm(flat.numel(), generator=gen)])
    if positive:
        t = t.abs() + 0.5
    return t.to(dtype)


def _lists(seed, dtypes, positive=False):
    gen = torch.Generator().manual_seed(seed)
    return [_values(s, gen, d, positive) for s, d in zip(SHAPES, dtypes)]


def _dev(ts):
    return [t.to("wgpu") for t in ts]


def _check(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.device.type == "wgpu" and g.dtype == w.dtype and g.shape == w.shape
        tol = {torch.float32: 1e-6, torch.float16: 2e-3, torch.bfloat16: 1e-2}[w.dtype]
        torch.testing.assert_close(g.cpu(), w, rtol=tol, atol=tol, equal_nan=True)


F32 = [torch.float32] * len(SHAPES)
MIXED = [torch.float32, torch.float16, torch.float32, torch.bfloat16, torch.float16, torch.float32]


@pytest.mark.parametrize("dtypes", [F32, MIXED], ids=["float32", "mixed dtypes"])
def test_inplace_list_op_with_per_tensor_scalars_matches_cpu(dtypes):
    """addcdiv_ with a ScalarList (Adam's step sizes): out is the first input (offsets gathered once),
    mixed dtypes split the lists into dispatch groups (per-tensor scalars indexed per group), and the
    empty tensor is left out of the table."""
    a, b = _lists(1, dtypes), _lists(2, dtypes)
    c = _lists(3, dtypes, positive=True)
    scalars = [0.1 * (i + 1) * (-1) ** i for i in range(len(a))]
    da, db, dc = _dev(a), _dev(b), _dev(c)
    torch._foreach_addcdiv_(a, b, c, scalars)
    torch._foreach_addcdiv_(da, db, dc, scalars)
    _check(da, a)


def test_lists_differing_in_one_tensor_are_gathered_apart():
    """Only lists of the very same tensors share gathered offsets: a list equal to another but for one
    tensor (here with the same shape and values) must be read from its own memory."""
    a = _lists(4, F32)
    other = [t.clone() for t in a]
    other[1] = _values(SHAPES[1], torch.Generator().manual_seed(5))
    da = _dev(a)
    db = list(da)
    db[1] = other[1].to("wgpu")
    _check(torch._foreach_mul(da, db), torch._foreach_mul(a, [a[0], other[1], *a[2:]]))
    # and an in-place op whose other operand is the same list as its output: x * x
    sq = [t * t for t in a]
    torch._foreach_mul_(da, da)
    _check(da, sq)


def test_out_of_place_unary_list_op_and_dispatch_count():
    a = _lists(6, F32, positive=True)
    rt = runtime()
    da = _dev(a)
    before = rt.dispatch_count
    got = torch._foreach_sqrt(da)
    assert rt.dispatch_count - before == 1, "one dispatch for tensors of one heap and dtype"
    _check(got, torch._foreach_sqrt(a))


def test_mixed_dtype_lists_take_one_dispatch_per_group():
    a, b = _lists(7, MIXED), _lists(8, MIXED)
    rt = runtime()
    da, db = _dev(a), _dev(b)
    before = rt.dispatch_count
    torch._foreach_lerp_(da, db, 0.3)
    assert rt.dispatch_count - before == 3, "float32, float16 and bfloat16: one group each"
    torch._foreach_lerp_(a, b, 0.3)
    _check(da, a)


def test_supported_refuses_any_unsupported_tensor_even_after_a_repeated_list():
    x = [torch.randn(4).to("wgpu") for _ in range(3)]
    assert multi_tensor.supported([x, list(x)])
    strided = torch.randn(4, 4).to("wgpu").t()
    assert not multi_tensor.supported([x, [*x[:2], strided]])          # not contiguous
    assert not multi_tensor.supported([x, [*x[:2], torch.arange(4).to("wgpu")]])  # not floating point
    assert not multi_tensor.supported([x, [*x[:2], torch.randn(4)]])   # a CPU tensor


def test_tune_mode_follows_the_environment_after_it_was_remembered(monkeypatch):
    monkeypatch.setattr(_env, "_PARSED", {})
    monkeypatch.delenv(_env.WGPU_TUNE, raising=False)
    assert gemm_tuning._mode() == "on"
    assert gemm_tuning._mode() == "on"  # remembered
    monkeypatch.setenv(_env.WGPU_TUNE, "0")
    assert gemm_tuning._mode() == "off"
    monkeypatch.setenv(_env.WGPU_TUNE, "force")
    assert gemm_tuning._mode() == "force"
    monkeypatch.setenv(_env.WGPU_TUNE, "maybe")
    for _ in range(2):  # a malformed value is never remembered: it raises every time
        with pytest.raises(_env.EnvError, match="NAVITRAIN_WGPU_TUNE"):
            gemm_tuning._mode()
    monkeypatch.setenv(_env.WGPU_TUNE, "")
    assert gemm_tuning._mode() == "on"  # empty is unset: the default


def test_products_follow_a_changed_tune_mode(monkeypatch):
    """The per-process choice is keyed by mode: switching NAVITRAIN_WGPU_TUNE between products still
    gives correct results (on lavapipe both modes use the built-in default tile)."""
    monkeypatch.setattr(_env, "_PARSED", {})
    gen = torch.Generator().manual_seed(9)
    a, b = torch.randn(33, 20, generator=gen), torch.randn(20, 17, generator=gen)
    for mode in ("1", "0", "1"):
        monkeypatch.setenv(_env.WGPU_TUNE, mode)
        got = torch.mm(a.to("wgpu"), b.to("wgpu")).cpu()
        torch.testing.assert_close(got, (a.double() @ b.double()).float(), rtol=1e-5, atol=1e-5)
