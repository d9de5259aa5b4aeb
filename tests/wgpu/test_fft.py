"""torch.fft on the wgpu device (kernels/fft.py, ops/fft.py) against PyTorch on the CPU: every public
transform over Stockham sizes (products of 2, 3, 5, 7, 11, 13) and Bluestein sizes (17, 97), batches,
norms, multi-dim transforms with padding and trimming, strided and conjugated inputs, NaN/inf, OpInfo
samples with gradients, and the counted CPU fallback for float64.

Values are compared with a float64 CPU reference to a tolerance relative to the largest output (an FFT's
float32 error is a fraction of the signal's norm, not of each entry: the CPU's own float32 result is off
by as much)."""
from __future__ import annotations

import pytest
import torch

import navitrain.wgpu as nw
from tests.wgpu.opinfo import check, find

fft = torch.fft
STOCKHAM_SIZES = [1, 2, 3, 5, 8, 12, 16, 64, 100, 256, 1000]
BLUESTEIN_SIZES = [17, 97]
NORMS = [None, "ortho", "forward", "backward"]


def _complex(*shape, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.view_as_complex(torch.randn(*shape, 2, generator=g) * 2)


def _real(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * 2


def _wide(t):
    return t.to(torch.complex128 if t.dtype.is_complex else torch.float64)


def _close(dev, x, fn, what, rel=1e-6):
    """dev (computed on wgpu) against fn of x in float64 on the CPU, in x's float32 result dtype."""
    assert dev.device.type == "wgpu", what
    ref = fn(_wide(x))
    got = dev.cpu()
    assert got.shape == ref.shape, (what, got.shape, ref.shape)
    assert got.dtype == (torch.complex64 if ref.dtype.is_complex else torch.float32), (what, got.dtype)
    atol = rel * max(ref.abs().max().item(), 1e-3)
    torch.testing.assert_close(_wide(got), ref, rtol=0, atol=atol, msg=lambda m: f"{what}: {m}")


@pytest.mark.parametrize("n", STOCKHAM_SIZES + BLUESTEIN_SIZES)
def test_fft_ifft_sizes_batches_norms(n):
    x = _complex(3, n, seed=n)
    d = x.to("wgpu")
    norm = NORMS[n % 4]
    _close(fft.fft(d, norm=norm), x, lambda t: fft.fft(t, norm=norm), f"fft n={n} norm={norm}")
    _close(fft.ifft(d, norm=norm), x, lambda t: fft.ifft(t, norm=norm), f"ifft n={n} norm={norm}")
    # Along a leading dim of a 3-D batch (moved last and back), and a round trip.
    y = _complex(n, 2, 3, seed=n + 1)
    _close(fft.fft(y.to("wgpu"), dim=0), y, lambda t: fft.fft(t, dim=0), f"fft dim=0 n={n}")
    back = fft.ifft(fft.fft(d)).cpu()
    torch.testing.assert_close(back, x, rtol=0, atol=1e-5 * x.abs().max().item())


@pytest.mark.parametrize("n", [1, 2, 3, 8, 12, 17, 100, 256])
def test_real_transforms(n):
    r = _real(4, n, seed=n)
    dr = r.to("wgpu")
    norm = NORMS[n % 4]
    _close(fft.rfft(dr, norm=norm), r, lambda t: fft.rfft(t, norm=norm), f"rfft n={n}")
    _close(fft.ihfft(dr, norm=norm), r, lambda t: fft.ihfft(t, norm=norm), f"ihfft n={n}")
    z = _complex(4, n // 2 + 1, seed=n + 1)
    dz = z.to("wgpu")
    for out_n in {n, 2 * (n // 2 + 1) - 1, max(1, n + 3)}:  # the default size, odd sizes, padding
        _close(fft.irfft(dz, n=out_n, norm=norm), z, lambda t: fft.irfft(t, n=out_n, norm=norm), f"irfft {n}->{out_n}")
        _close(fft.hfft(dz, n=out_n, norm=norm), z, lambda t: fft.hfft(t, n=out_n, norm=norm), f"hfft {n}->{out_n}")
    # rfft with n= trims or zero-pads the signal first.
    _close(fft.rfft(dr, n=n + 5), r, lambda t: fft.rfft(t, n=n + 5), f"rfft padded n={n}")


def test_multi_dim_transforms():
    x = _complex(6, 5, 8, seed=1)
    d = x.to("wgpu")
    _close(fft.fft2(d), x, fft.fft2, "fft2")
    _close(fft.ifft2(d, norm="ortho"), x, lambda t: fft.ifft2(t, norm="ortho"), "ifft2 ortho")
    _close(fft.fftn(d), x, fft.fftn, "fftn")
    _close(fft.fftn(d, dim=(0, 2)), x, lambda t: fft.fftn(t, dim=(0, 2)), "fftn dims 0, 2")
    _close(fft.fftn(d, s=(4, 7), dim=(2, 0)), x, lambda t: fft.fftn(t, s=(4, 7), dim=(2, 0)), "fftn s trims/pads")
    r = _real(6, 5, 8, seed=2)
    dr = r.to("wgpu")
    _close(fft.rfftn(dr), r, fft.rfftn, "rfftn")
    _close(fft.rfftn(dr, dim=(2, 0), norm="forward"), r, lambda t: fft.rfftn(t, dim=(2, 0), norm="forward"),
           "rfftn halves the last dim named")
    _close(fft.rfft2(dr), r, fft.rfft2, "rfft2")
    h = fft.rfftn(r)
    _close(fft.irfftn(h.to("wgpu"), s=r.shape), h, lambda t: fft.irfftn(t, s=r.shape), "irfftn")
    _close(fft.irfft2(h.to("wgpu"), s=(5, 9)), h, lambda t: fft.irfft2(t, s=(5, 9)), "irfft2 odd size")
    _close(fft.hfftn(d[:, :, :5], dim=(0, 2)), x[:, :, :5], lambda t: fft.hfftn(t, dim=(0, 2)), "hfftn")
    _close(fft.ihfftn(dr), r, fft.ihfftn, "ihfftn")


def test_strided_and_conjugated_inputs():
    x = _complex(8, 12, seed=3)
    d = x.to("wgpu")
    _close(fft.fft(d.t()), x, lambda t: fft.fft(t.t()), "transposed")
    _close(fft.fft(d[::2, 1::2]), x, lambda t: fft.fft(t[::2, 1::2]), "sliced")
    _close(fft.fft(d.conj()), x, lambda t: fft.fft(t.conj()), "lazy conj")
    _close(fft.irfft(d.conj()[:, :7]), x, lambda t: fft.irfft(t.conj()[:, :7]), "irfft of lazy conj")
    r = _real(12, 8, seed=4)
    _close(fft.rfft(r.to("wgpu").t()), r, lambda t: fft.rfft(t.t()), "rfft transposed")


def _with_specials(shape, seed):
    """Random rows, of which the odd ones get NaN / +-inf in random parts and places."""
    g = torch.Generator().manual_seed(seed)
    parts = torch.randn(*shape, 2, generator=g)
    specials = torch.tensor([float("nan"), float("inf"), -float("inf")])
    for row in range(1, shape[0], 2):
        for _ in range(1 + row % 3):
            j, part = torch.randint(shape[1], (1,), generator=g).item(), row % 2 if row % 4 == 1 else 0
            parts[row, j, part] = specials[torch.randint(3, (1,), generator=g)]
    return torch.view_as_complex(parts)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 16, 17, 100])
def test_nan_and_inf_propagate(n):
    """An FFT's exact mix of NaN and inf depends on the butterfly order (the CPU's MKL and this Stockham FFT
    differ), so: NaN/inf at index 0 stays in its own part (checked exactly for n <= 8, where both do the
    same arithmetic); each output of a row holding a non-finite input is non-finite in some part, exactly
    where the CPU's is; rows without one are finite and right."""
    x = _with_specials((8, n), seed=n)
    got, ref = fft.fft(x.to("wgpu")).cpu(), fft.fft(x)
    bad_in = ~torch.view_as_real(x).isfinite().all(-1).all(-1)
    bad_ref = ~torch.view_as_real(ref).isfinite().all(-1)
    bad_got = ~torch.view_as_real(got).isfinite().all(-1)
    assert torch.equal(bad_got, bad_ref), (n, got, ref)
    assert torch.equal(bad_got.any(-1), bad_in), (n, got)
    finite = ~bad_in
    _close(fft.fft(x[finite].to("wgpu")), x[finite], fft.fft, f"finite rows n={n}")
    if n <= 8:
        torch.testing.assert_close(got, ref, equal_nan=True, rtol=1e-5, atol=1e-5)
    # NaN or inf at index 0 of a power-of-two row: only its own part of every output is non-finite.
    if n in (8, 16):
        z = _complex(2, n, seed=7)
        z[0, 0] = complex(float("nan"), 0.5)
        z[1, 0] = complex(0.5, float("inf"))
        out = torch.view_as_real(fft.fft(z.to("wgpu")).cpu())
        assert out[0, :, 0].isnan().all() and out[0, :, 1].isfinite().all(), out[0]
        assert out[1, :, 1].isinf().all() and out[1, :, 0].isfinite().all(), out[1]
    # irfft ignores the imaginary parts of entries 0 and n/2 (a real signal cannot have them), NaN included.
    h = _complex(2, n // 2 + 1, seed=8)
    h[:, 0] = complex(1.0, float("nan"))
    even = 2 * (n // 2)
    _close(fft.irfft(h.to("wgpu"), n=max(even, 2)), h, lambda t: fft.irfft(t, n=max(even, 2)), f"irfft NaN imag n={n}")


@pytest.mark.parametrize("name", ["fft.fft", "fft.rfft", "fft.irfft", "fft.fftn", "fft.irfftn", "fft.hfft"])
def test_opinfo_with_gradients(name):
    assert check(find(name), torch.float32, max_samples=6) > 0


@pytest.mark.parametrize("name", ["fft.fft", "fft.ifftn", "fft.irfft"])
def test_opinfo_complex64_and_integer_inputs(name):
    assert check(find(name), torch.complex64, max_samples=6) > 0
    assert check(find(name), torch.int64, max_samples=4, noncontiguous=False) > 0


def test_float64_takes_the_counted_fallback(lenient):
    """float64 is transformed on the CPU (counted); its complex128 result has no device storage yet, so it
    cannot come back (complex.py's limit), and says so rather than returning a complex64 approximation."""
    r = _real(3, 8, seed=9).double()
    nw.reset_fallback_counts()
    with pytest.warns(UserWarning), pytest.raises(TypeError, match="complex128"):
        fft.rfft(r.to("wgpu"))
    assert nw.fallback_report()["cpu_fallbacks"].get("aten._fft_r2c.default") == 1
