"""int64 scalars beyond 32 bits: kernel scalars are 32-bit words, so before these reached the device as
struct.error ("'i' format requires ...") for `t + 2**40`, `fill_(-2**40)`, `torch.full(..., iinfo.max)`;
now the wide value travels as a 0-d device tensor. Exact against the CPU, including the int64 limits."""
import pytest
import torch

DEV = "wgpu"
BIG = torch.iinfo(torch.int64).max
SMALL = torch.iinfo(torch.int64).min

CASES = {
    "add": lambda x: x + 2**40,
    "sub": lambda x: x - 3 * 2**33,
    "mul": lambda x: x * 3_000_000_000,
    "add_": lambda x: x.clone().add_(-2**40),
    "rsub": lambda x: 2**45 - x,
    "where": lambda x: torch.where(x > 0, x, 2**35),
    "full_max": lambda x: torch.full((3, 2), BIG, device=x.device),
    "full_min": lambda x: torch.full((5,), SMALL, device=x.device),
    "fill_": lambda x: x.clone().fill_(-2**40),
    "masked_fill": lambda x: x.masked_fill(x > 1, BIG),
    "eq": lambda x: x == 2**40 + 3,
    "small_still_words": lambda x: x + 7,
}


@pytest.mark.parametrize("name", list(CASES))
def test_wide_int64_scalars_match_the_cpu(name):
    g = torch.Generator().manual_seed(5)
    x = torch.randint(-2**50, 2**50, (4, 3), generator=g)
    x[0, 0], x[1, 1] = 2**40 + 3, 1  # hit the compared value and a small one
    got, want = CASES[name](x.to(DEV)), CASES[name](x)
    assert got.dtype == want.dtype and got.device.type == DEV
    assert torch.equal(got.cpu(), want)
