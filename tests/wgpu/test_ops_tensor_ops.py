"""Data-movement kernels against PyTorch on the CPU: OpInfo samples for flip, roll, repeat, tril/triu,
padding (constant, reflect, replicate, circular), narrow_copy, the *_scatter ops and repeat_interleave;
then channels_last and strided inputs, float16, 3-d reflection/replication padding and their backwards
with pads as wide as the input (edge rows read by many outputs), and in-place tril_/triu_."""
import pytest
import torch
import torch.nn.functional as F

from tests.wgpu import opinfo

F32, F16, I64 = torch.float32, torch.float16, torch.int64
DEV = "wgpu"

# (OpInfo name, variant, dtypes, extra keyword arguments for opinfo.check)
CASES = [
    ("flip", "", [F32, torch.bool], {}),
    ("roll", "", [F32, I64], {}),
    ("repeat", "", [F32, F16], {}),
    ("tril", "", [F32, I64], {}),
    ("triu", "", [F32, torch.bool], {}),
    ("nn.functional.pad", "constant", [F32, I64], {}),
    ("nn.functional.pad", "reflect", [F32, F16], {}),
    ("nn.functional.pad", "replicate", [F32], {}),
    ("nn.functional.pad", "replicate_negative", [F32], {}),
    ("nn.functional.pad", "circular", [F32], {}),
    ("narrow_copy", "", [F32], {}),
    ("slice_scatter", "", [F32], {}),
    ("select_scatter", "", [F32], {}),
    ("diagonal_scatter", "", [F32], {}),
    # On a non-contiguous input as_strided_scatter addresses the clone's storage in ways the CPU does not
    # define consistently: contiguous samples only.
    ("as_strided_scatter", "", [F32], {"noncontiguous": False}),
    ("repeat_interleave", "", [F32], {}),
    ("rot90", "", [F32], {}),
]


@pytest.mark.parametrize("name,variant,dtypes,kw", CASES,
                         ids=[f"{c[0]}{'.' + c[1] if c[1] else ''}" for c in CASES])
def test_op_matches_cpu(name, variant, dtypes, kw):
    op = opinfo.find(name, variant)
    for dtype in dtypes:
        checked = opinfo.check(op, dtype, **kw)
        assert checked > 0, f"{name}: no samples for {dtype}"


def _forward_backward(fn, x, seed=0):
    xc = x.detach().clone().requires_grad_()
    xd = x.detach().to(DEV).requires_grad_()
    yc, yd = fn(xc), fn(xd)
    g = torch.randn(yc.shape, generator=torch.Generator().manual_seed(seed), dtype=yc.dtype)
    yc.backward(g)
    yd.backward(g.to(DEV))
    return yc.detach(), yd.detach().cpu(), xc.grad, xd.grad.cpu()


@pytest.mark.parametrize("mode", ["reflect", "replicate"])
def test_padding_backward_on_channels_last_and_3d(mode):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 6, 5).to(memory_format=torch.channels_last)
    pads = (4, 2, 5, 1) if mode == "reflect" else (7, 9, 0, 6)  # replicate pads wider than the input
    yc, yd, gc, gd = _forward_backward(lambda t: F.pad(t, pads, mode=mode), x)
    assert torch.equal(yd, yc)
    torch.testing.assert_close(gd, gc, rtol=1e-5, atol=1e-5)
    v = torch.randn(2, 2, 4, 5, 3)
    yc, yd, gc, gd = _forward_backward(lambda t: F.pad(t, (2, 1, 3, 0, 1, 2), mode=mode), v, seed=1)
    assert torch.equal(yd, yc)
    torch.testing.assert_close(gd, gc, rtol=1e-5, atol=1e-5)


def test_padding_float16_and_unbatched():
    x = torch.randn(3, 8, 7).half()
    for mode in ("reflect", "replicate", "constant"):
        assert torch.equal(F.pad(x.to(DEV), (2, 3, 1, 1), mode=mode).cpu(), F.pad(x, (2, 3, 1, 1), mode=mode))
    r = torch.randn(4, 9)
    assert torch.equal(F.pad(r.to(DEV), (3, 2), mode="reflect").cpu(), F.pad(r, (3, 2), mode="reflect"))
    assert torch.equal(F.pad(r.to(DEV), (-2, 4, 1, -1), value=2.5).cpu(), F.pad(r, (-2, 4, 1, -1), value=2.5))


def test_flip_roll_repeat_on_strided_inputs():
    torch.manual_seed(1)
    x = torch.randn(2, 5, 4, 3).to(memory_format=torch.channels_last)
    t = torch.randn(6, 7).t()[1:, ::2]
    for a in (x, t):
        dims = tuple(range(a.dim()))
        assert torch.equal(torch.flip(a.to(DEV), dims).cpu(), torch.flip(a, dims))
        assert torch.equal(torch.roll(a.to(DEV), (2, -1), (0, -1)).cpu(), torch.roll(a, (2, -1), (0, -1)))
        assert torch.equal(torch.roll(a.to(DEV), 3).cpu(), torch.roll(a, 3))
        reps = (2,) * a.dim()
        assert torch.equal(a.to(DEV).repeat(*reps).cpu(), a.repeat(*reps))
    assert torch.equal(t.to(DEV).repeat(3, 1, 2).cpu(), t.repeat(3, 1, 2))


def test_tril_triu_inplace_batched_strided_and_large():
    x = torch.randn(3, 4, 6).transpose(1, 2)
    for k in (-2, 0, 3):
        a, ad = x.clone(), x.to(DEV)
        a.tril_(k)
        ad.tril_(k)
        assert torch.equal(ad.cpu(), a)
        assert torch.equal(torch.triu(x.to(DEV), k).cpu(), torch.triu(x, k))
    causal = torch.ones(600, 600, dtype=torch.bool)
    assert torch.equal(torch.tril(causal.to(DEV)).cpu(), torch.tril(causal))
