"""Checking wgpu kernels against the CPU with PyTorch's own OpInfo samples.

For an OpInfo and a dtype: every sample (and its non-contiguous twin) runs on the CPU and on wgpu;
outputs must match, and where the op is differentiable and the dtype is float32, so must the gradients
of every floating input for one fresh random output gradient. Tolerances are PyTorch's defaults for the
dtype, loosened per op where the GPU legitimately sums in another order.
"""
from __future__ import annotations

import itertools

import torch
from torch.utils._pytree import tree_flatten, tree_map

DEVICE = "wgpu"

_TOL = {torch.float32: (1.3e-5, 1e-5), torch.float16: (1e-3, 1e-3), torch.bfloat16: (1.6e-2, 1e-2),
        torch.complex64: (1.3e-5, 1e-5)}  # complex64 is two float32 parts: float32's tolerances


def _op_db():
    from torch.testing._internal.common_methods_invocations import op_db

    return op_db


def find(name: str, variant: str = ""):
    for op in _op_db():
        if op.name == name and op.variant_test_name == variant:
            return op
    raise LookupError(f"no OpInfo named {name!r} (variant {variant!r})")


def _to_device(x):
    if isinstance(x, torch.Tensor):
        t = x.detach().to(DEVICE)
        return t.requires_grad_(x.requires_grad) if x.requires_grad else t
    return x


def _float_leaves(obj):
    leaves, _ = tree_flatten(obj)
    return [t for t in leaves if isinstance(t, torch.Tensor) and t.requires_grad]


def _outputs(result):
    leaves, _ = tree_flatten(result)
    return [t for t in leaves if isinstance(t, torch.Tensor)]


def _compare(dev, ref, rtol, atol, what):
    assert dev.device.type == DEVICE, f"{what}: result is on {dev.device}, not on the wgpu device"
    got = dev.detach().cpu()
    exp = ref.detach()
    assert got.shape == exp.shape, f"{what}: shape {tuple(got.shape)} != {tuple(exp.shape)}"
    assert got.dtype == exp.dtype, f"{what}: dtype {got.dtype} != {exp.dtype}"
    if rtol is None or atol is None:  # an input dtype without tolerances (int, bool): the output's (int -> fft)
        out_rtol, out_atol = _TOL.get(exp.dtype, (0, 0))
        rtol, atol = (out_rtol if rtol is None else rtol), (out_atol if atol is None else atol)
    if exp.dtype == torch.bool or not (exp.dtype.is_floating_point or exp.dtype.is_complex):
        assert torch.equal(got, exp), f"{what}: values differ\n{got}\n{exp}"
    else:
        torch.testing.assert_close(got, exp, rtol=rtol, atol=atol, equal_nan=True, msg=lambda m: f"{what}: {m}")


def check(op, dtype, *, max_samples: int = 12, grad: bool = True, rtol=None, atol=None,
          noncontiguous: bool = True, skip=None) -> int:
    """Run the checks; returns how many samples were compared (so callers can assert it is not 0)."""
    base_rtol, base_atol = _TOL.get(dtype, (None, None))
    rtol = base_rtol if rtol is None else rtol
    atol = base_atol if atol is None else atol
    want_grad = grad and op.supports_autograd and dtype == torch.float32
    # islice: some ops have hundreds of samples and only the first max_samples are used; set_seed=False
    # stops PyTorch reseeding the generator before every sample (the samples stay random, not zeros).
    torch.manual_seed(0)
    samples = list(itertools.islice(op.sample_inputs("cpu", dtype, requires_grad=want_grad, set_seed=False),
                                    max_samples))
    if noncontiguous:
        samples = samples + [s.noncontiguous() for s in samples[: max(1, max_samples // 3)]]
    checked = 0
    for i, sample in enumerate(samples):
        if skip is not None and skip(sample):
            continue
        what = (f"{op.name}{'.' + op.variant_test_name if op.variant_test_name else ''}[{dtype}] sample {i}: "
                f"{sample.summary() if hasattr(sample, 'summary') else ''}")
        ref = op(sample.input, *sample.args, **sample.kwargs)
        dev_input = tree_map(_to_device, sample.input)
        dev_args = tree_map(_to_device, sample.args)
        dev_kwargs = tree_map(_to_device, sample.kwargs)
        out = op(dev_input, *dev_args, **dev_kwargs)
        ref_outs, dev_outs = _outputs(ref), _outputs(out)
        assert len(ref_outs) == len(dev_outs), what
        for r, d in zip(ref_outs, dev_outs):
            _compare(d, r, rtol, atol, what)
        if want_grad:
            cpu_leaves = _float_leaves((sample.input, sample.args, sample.kwargs))
            dev_leaves = _float_leaves((dev_input, dev_args, dev_kwargs))
            pairs = [(r, d) for r, d in zip(ref_outs, dev_outs) if r.requires_grad and r.dtype.is_floating_point]
            if cpu_leaves and pairs:
                gen = torch.Generator().manual_seed(1234 + i)
                grads = [torch.randn(r.shape, generator=gen, dtype=r.dtype) for r, _ in pairs]
                ref_g = torch.autograd.grad([r for r, _ in pairs], cpu_leaves, grads, allow_unused=True)
                dev_g = torch.autograd.grad([d for _, d in pairs], dev_leaves, [g.to(DEVICE) for g in grads],
                                            allow_unused=True)
                for k, (rg, dg) in enumerate(zip(ref_g, dev_g)):
                    if rg is None:
                        assert dg is None or dg.abs().max().item() == 0, f"{what}: unexpected grad {k}"
                        continue
                    assert dg is not None, f"{what}: missing gradient for input {k}"
                    _compare(dg, rg, rtol * 10, atol * 10, f"{what} grad[{k}]")
        checked += 1
    return checked
