"""New results of elementwise ops are laid out as PyTorch lays them out (TensorIterator's rule,
kernels/pointwise.output_layout): the first input whose strides tell two dimensions apart decides, so
`x + y.transpose(0, 1)` is contiguous like x and a `.view()` that works on the CPU works here too. Found
as a compiled nn.TransformerEncoder's residual add coming out transposed (its layer norms then ran on
strided rows). Random layouts and broadcasts of two and three inputs against the CPU, NaN included."""
import random

import pytest
import torch

DEV = "wgpu"


def _laid_out(shape, perm, g):
    """A tensor of `shape` whose memory walks its dimensions in the order `perm` (outermost first)."""
    t = torch.randn([shape[p] for p in perm], generator=g)
    t.view(-1)[0] = float("nan")
    return t.permute([perm.index(d) for d in range(len(shape))])


def _strides_that_matter(t):
    return tuple(s for s, n in zip(t.stride(), t.shape) if n != 1)


@pytest.mark.parametrize("seed", range(6))
def test_new_elementwise_results_take_pytorchs_layout(seed):
    rng, g = random.Random(seed), torch.Generator().manual_seed(seed)
    # (No size-1 dimension in the result: PyTorch orders those by whatever strides the inputs happen to carry
    # there, which a copy to the device need not keep.)
    for shape in [(4, 6, 5), (2, 3, 4, 5), (2, 5)]:
        for _ in range(6):
            inputs = []
            for _ in range(rng.choice((2, 3))):
                perm = list(range(len(shape)))
                rng.shuffle(perm)
                t = _laid_out(shape, perm, g)
                if rng.random() < 0.3:   # broadcast over some dimensions
                    t = t[tuple(slice(0, 1) if rng.random() < 0.5 else slice(None) for _ in shape)]
                inputs.append(t)
            op = torch.add if len(inputs) == 2 else torch.addcmul
            expected = op(*inputs)
            got = op(*(t.to(DEV) for t in inputs))
            assert tuple(got.shape) == tuple(expected.shape)
            assert _strides_that_matter(got) == _strides_that_matter(expected), [t.stride() for t in inputs]
            torch.testing.assert_close(got.cpu(), expected, rtol=1e-6, atol=1e-6, equal_nan=True)


def test_copies_of_non_dense_tensors_keep_their_stride_order_as_on_the_cpu():
    t = torch.randn(5, 4, 6, generator=torch.Generator().manual_seed(8)).permute(1, 2, 0)[:, ::2, :]
    d = t.to(DEV)
    assert d.stride() == torch.empty_like(t).stride() == t.clone().stride()
    assert d.cpu().stride() == t.clone().stride()
    torch.testing.assert_close(d.cpu(), t)
    back = d.transpose(0, 2)[::2]    # a non-dense view on the device, read back
    assert back.cpu().stride() == t.transpose(0, 2)[::2].clone().stride()
    torch.testing.assert_close(back.cpu(), t.transpose(0, 2)[::2])


def test_a_view_that_works_on_the_cpu_works_on_a_mixed_layout_sum():
    g = torch.Generator().manual_seed(9)
    x, y = torch.randn(4, 8, 6, generator=g), torch.randn(8, 4, 6, generator=g)
    s = x.to(DEV) + y.to(DEV).transpose(0, 1)    # x's layout: contiguous, as on the CPU
    assert s.is_contiguous()
    torch.testing.assert_close(s.view(32, 6).cpu(), (x + y.transpose(0, 1)).view(32, 6))
    t = y.to(DEV).transpose(0, 1) + x.to(DEV)   # the first input's layout: transposed, as on the CPU
    assert t.stride() == (y.transpose(0, 1) + x).stride()
