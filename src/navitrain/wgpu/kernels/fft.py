"""The FFT engine: batched 1-D complex DFTs over the last dim of a contiguous complex64 tensor.

A complex64 tensor is interleaved float32 pairs, so every kernel here binds heaps as array<f32> and
reads element i of a row as words 2i, 2i+1.

Sizes whose prime factors are all small (2, 3, 5, 7, 11, 13: every size PyTorch's tests and most
users pick) run as a mixed-radix Stockham FFT: one dispatch per radix pass, each thread reading R
elements N/R apart, multiplying them by the pass's twiddles, doing a length-R DFT (its constants are
WGSL literals computed in float64) and writing R results Ns apart, ping-ponging between two buffers so
the result comes out in natural order. Twiddles exp(-2 pi i t / N) come from a table computed on the host
in float64 (angles from the exact integer t), rounded once to float32, uploaded once per N and cached.
Other sizes run Bluestein's algorithm: the DFT as a chirp-weighted circular convolution of power-of-two
length M >= 2N - 1, computed with two Stockham FFTs; the chirp and the transformed convolution kernel are
host float64 tables, cached per (N, direction).

NaN and inf: twiddle components that are exactly 0 (exp(-i pi/2) = -i, ...) are structural, as in a
hand-written butterfly, so their products are left out rather than computed as inf * 0 = NaN, and the
trivial twiddle 1 is never multiplied. So a non-finite value at index 0 stays in the real (or imaginary)
parts, as on the CPU; elsewhere non-finite inputs give non-finite outputs, not always the CPU's exact
mix of NaN and inf (which depends on its butterfly order). Bluestein spreads any non-finite input over
its whole row as NaN.
"""
from __future__ import annotations

import cmath
import math

import numpy as np
import torch

from navitrain.wgpu.kernels import codegen
from navitrain.wgpu.runtime import runtime
from navitrain.wgpu.tensor import WgpuTensor, empty, from_cpu

C64 = torch.complex64
WG = 256
RADICES = (4, 2, 3, 5, 7, 11, 13)  # 4 first: fewer passes for powers of two
_TINY = 1e-12                      # |cos|, |sin| below this are exact zeros of the angle (pi/2, pi, ...)

# Structural-zero complex product: a term whose twiddle component is exactly 0 is left out (0 * inf).
_HELPERS = """
fn mz(a: f32, w: f32) -> f32 { return select(a * w, 0.0, w == 0.0); }
fn cmul_tw(a: vec2<f32>, w: vec2<f32>) -> vec2<f32> {
  return vec2<f32>(mz(a.x, w.x) - mz(a.y, w.y), mz(a.x, w.y) + mz(a.y, w.x));
}
fn ld(i: u32) -> vec2<f32> { return vec2<f32>(b1[2u * i], b1[2u * i + 1u]); }
fn tw(i: u32) -> vec2<f32> { return vec2<f32>(b2[2u * i], b2[2u * i + 1u]); }
fn st(i: u32, v: vec2<f32>) { b0[2u * i] = v.x; b0[2u * i + 1u] = v.y; }
"""

# One Stockham pass of radix R: threads = rows * N / R. Offsets are in complex elements (heap f32 word / 2).
_PASS_P = codegen.ParamBlock("rows", "n", "m", "ns", "tw_step", "src", "dst", "tab", "scale: f32")
# out[row, k] = k < valid ? in[row, k] * table[k] * scale : 0 (Bluestein's chirps and padding).
_CHIRP_P = codegen.ParamBlock("rows", "n_out", "valid", "in_row", "src", "dst", "tab", "scale: f32")
# The full Hermitian spectrum of length N from its first n_in entries (c2r).
_HERMITIAN_P = codegen.ParamBlock("rows", "n_out", "n_in", "src", "dst")


def _pow2_at_least(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def plan(n: int) -> list[int] | None:
    """The radices of a Stockham FFT of length n, or None where n has a prime factor above 13."""
    radices, rest = [], n
    for r in RADICES:
        while rest % r == 0:
            radices.append(r)
            rest //= r
    return radices if rest == 1 else None


# -- host tables (float64, rounded once to float32), cached per adapter runtime -------------------
_tables: dict = {}


def _cached(key, make) -> WgpuTensor:
    rt = runtime()
    hit = _tables.get(key)
    if hit is not None and hit[0] is rt:
        return hit[1]
    table = from_cpu(torch.from_numpy(make()).to(C64))
    _tables[key] = (rt, table)
    return table


def _unit_circle(numerator: np.ndarray, denominator: int, sign: int) -> np.ndarray:
    """exp(sign * 2 pi i numerator / denominator) for integer numerators, with exact zeros kept."""
    angle = 2.0 * np.pi * (numerator % denominator).astype(np.float64) / denominator
    re, im = np.cos(angle), sign * np.sin(angle)
    re[np.abs(re) < _TINY] = 0.0
    im[np.abs(im) < _TINY] = 0.0
    return re + 1j * im


def _twiddles(n: int) -> WgpuTensor:
    return _cached(("twiddle", n), lambda: _unit_circle(np.arange(n, dtype=np.int64), n, -1))


def _bluestein_tables(n: int, inverse: bool) -> tuple[WgpuTensor, WgpuTensor, int]:
    """(chirp c_j = exp(-/+ pi i j^2 / n), FFT_M(conj chirp, wrapped) / M, M)."""
    m = _pow2_at_least(2 * n - 1)
    sign = 1 if inverse else -1
    j = np.arange(n, dtype=np.int64)
    j2 = (j * j) % (2 * n)  # exact: the angle pi j^2 / n reduced mod 2 pi before it becomes a float

    def chirp():
        return _unit_circle(j2, 2 * n, sign)

    def kernel_spectrum():
        b = np.zeros(m, dtype=np.complex128)
        conj = np.conj(chirp())
        b[:n] = conj
        b[m - n + 1:] = conj[1:][::-1]
        return np.fft.fft(b) / m

    return _cached(("chirp", n, inverse), chirp), _cached(("bluestein", n, inverse), kernel_spectrum), m


# -- kernels -----------------------------------------------------------------------------------------
def _lit(v: float) -> str:
    return f"{float(np.float32(v))!r}"


def _dft_terms(radix: int, q: int, inverse: bool) -> str:
    """sum_r v[r] * exp(-/+ 2 pi i r q / R), the constants as literals; exact 0/1 components left out."""
    terms = []
    for r in range(radix):
        t = (r * q) % radix
        w = cmath.exp((1j if inverse else -1j) * 2 * math.pi * t / radix)
        c = 0.0 if abs(w.real) < _TINY else w.real
        s = 0.0 if abs(w.imag) < _TINY else w.imag
        v = f"v{r}"
        re, im = [], []
        for coef, part, into, neg in ((c, f"{v}.x", re, False), (s, f"{v}.y", re, True),
                                      (s, f"{v}.x", im, False), (c, f"{v}.y", im, False)):
            if coef == 0.0:
                continue
            coef = -coef if neg else coef
            into.append(part if coef == 1.0 else f"(-{part})" if coef == -1.0 else f"{part} * {_lit(coef)}")
        terms.append((re or ["0.0"], im or ["0.0"]))
    re = " + ".join(x for t in terms for x in t[0])
    im = " + ".join(x for t in terms for x in t[1])
    return f"vec2<f32>({re}, {im})"


def _pass_source(radix: int, inverse: bool) -> str:
    loads = "\n".join(f"  var v{r} = ld(base + j + {r}u * m);" for r in range(radix))
    conj = "  let wsign = -1.0;" if inverse else "  let wsign = 1.0;"
    twiddle = "\n".join(
        f"    let w{r} = tw(tab + ({r}u * k * tw_step) % n); v{r} = cmul_tw(v{r}, vec2<f32>(w{r}.x, wsign * w{r}.y));"
        for r in range(1, radix))
    stores = "\n".join(f"  st(out + {q}u * ns, {_dft_terms(radix, q, inverse)} * scale);" for q in range(radix))
    body = f"""{_PASS_P.wgsl()}
  if (gi >= rows * m) {{ return; }}
  let row = gi / m;
  let j = gi % m;
  let k = j % ns;
  let base = src + row * n;
{conj}
{loads}
  if (k != 0u) {{
{twiddle}
  }}
  let out = dst + row * n + (j / ns) * ns * {radix}u + k;
{stores}"""
    return codegen.module(["f32", "f32", "f32"], body, WG, helpers=_HELPERS)


def _chirp_source() -> str:
    body = f"""{_CHIRP_P.wgsl()}
  if (gi >= rows * n_out) {{ return; }}
  let row = gi / n_out;
  let k = gi % n_out;
  var v = vec2<f32>(0.0, 0.0);
  if (k < valid) {{
    v = cmul_tw(ld(src + row * in_row + k), tw(tab + k)) * scale;  // (1, 0) multiplies exactly
  }}
  st(dst + gi, v);"""
    return codegen.module(["f32", "f32", "f32"], body, WG, helpers=_HELPERS)


def _hermitian_source() -> str:
    # The imaginary parts of entries 0 and N/2 do not reach a real signal: dropped (as the CPU's c2r does),
    # so a NaN there does not spread.
    body = f"""{_HERMITIAN_P.wgsl()}
  if (gi >= rows * n_out) {{ return; }}
  let row = gi / n_out;
  let k = gi % n_out;
  let mirrored = 2u * k > n_out;
  let idx = select(k, n_out - k, mirrored);
  var v = vec2<f32>(0.0, 0.0);
  if (idx < n_in) {{
    v = vec2<f32>(b1[2u * (src + row * n_in + idx)], b1[2u * (src + row * n_in + idx) + 1u]);
    if (mirrored) {{ v.y = -v.y; }}
    if (k == 0u || 2u * k == n_out) {{ v.y = 0.0; }}
  }}
  b0[2u * (dst + gi)] = v.x;
  b0[2u * (dst + gi) + 1u] = v.y;"""
    return codegen.module(["f32", "f32"], body, WG)


def _run_pass(src: WgpuTensor, dst: WgpuTensor, rows: int, n: int, ns: int, radix: int, inverse: bool,
              scale: float) -> None:
    rt = runtime()
    tab = _twiddles(n)
    kernel = rt.kernel(("fft_pass", radix, inverse), f"fft_radix{radix}", 3, lambda: _pass_source(radix, inverse))
    m = n // radix
    params = _PASS_P.pack(rows=rows, n=n, m=m, ns=ns, tw_step=n // (ns * radix), src=src.elem_offset,
                          dst=dst.elem_offset, tab=tab.elem_offset, scale=scale)
    rt.dispatch(kernel, (dst._ws.heap, src._ws.heap, tab._ws.heap), params, codegen.groups_for(rows * m, WG))


def _chirp(src: WgpuTensor, in_row: int, table: WgpuTensor, rows: int, n_out: int, valid: int,
           scale: float = 1.0, shape=None) -> WgpuTensor:
    rt = runtime()
    out = empty(shape or (rows, n_out), C64)
    kernel = rt.kernel(("fft_chirp",), "fft_chirp", 3, _chirp_source)
    params = _CHIRP_P.pack(rows=rows, n_out=n_out, valid=valid, in_row=in_row, src=src.elem_offset,
                           dst=out.elem_offset, tab=table.elem_offset, scale=scale)
    rt.dispatch(kernel, (out._ws.heap, src._ws.heap, table._ws.heap), params, codegen.groups_for(rows * n_out, WG))
    return out


def _stockham(x: WgpuTensor, rows: int, n: int, radices: list[int], inverse: bool, scale: float,
              shape=None) -> WgpuTensor:
    bufs = [empty(shape or (rows, n), C64), empty((rows, n), C64) if len(radices) > 1 else None]
    # Ping-pong so that the last pass lands in bufs[0].
    dst_index = (len(radices) - 1) % 2
    src, ns = x, 1
    for p, radix in enumerate(radices):
        dst = bufs[dst_index]
        _run_pass(src, dst, rows, n, ns, radix, inverse, scale if p == len(radices) - 1 else 1.0)
        src, ns, dst_index = dst, ns * radix, 1 - dst_index
    return src


def fft_last_dim(x: WgpuTensor, inverse: bool = False, scale: float = 1.0) -> WgpuTensor:
    """The DFT (exp(-2 pi i jk/n); inverse: exp(+...), unnormalised) of every row of `x`, a contiguous
    complex64 tensor without the conj bit, times `scale`; a new contiguous tensor of x's shape."""
    assert x.dtype == C64 and x.is_contiguous() and not x.is_conj()
    n = x.shape[-1] if x.dim() else 1
    rows = x.numel() // n if n else 0
    if rows == 0:
        return empty(x.shape, C64)
    shape = tuple(x.shape)
    if n == 1:
        ones = _cached(("ones",), lambda: np.ones(1, dtype=np.complex128))
        return _chirp(x, 1, ones, rows, 1, 1, scale, shape)
    radices = plan(n)
    if radices is not None:
        return _stockham(x, rows, n, radices, inverse, scale, shape)
    chirp, spectrum, m = _bluestein_tables(n, inverse)
    a = _chirp(x, n, chirp, rows, m, n)
    a = _stockham(a, rows, m, plan(m), False, 1.0)
    a = _chirp(a, m, spectrum, rows, m, m)
    a = _stockham(a, rows, m, plan(m), True, 1.0)
    return _chirp(a, m, chirp, rows, n, n, scale, shape)


def hermitian_extend(x: WgpuTensor, n_out: int) -> WgpuTensor:
    """Rows of length n_out: the Hermitian-symmetric spectrum whose first entries are x's rows (x contiguous
    complex64 without the conj bit; entries past x's length are 0), for a complex-to-real inverse DFT."""
    assert x.dtype == C64 and x.is_contiguous() and not x.is_conj()
    n_in = x.shape[-1]
    rows = x.numel() // n_in if n_in else 0
    out = empty((*x.shape[:-1], n_out), C64)
    if rows * n_out == 0:
        return out
    rt = runtime()
    kernel = rt.kernel(("fft_hermitian",), "fft_hermitian", 2, _hermitian_source)
    params = _HERMITIAN_P.pack(rows=rows, n_out=n_out, n_in=n_in, src=x.elem_offset, dst=out.elem_offset)
    rt.dispatch(kernel, (out._ws.heap, x._ws.heap), params, codegen.groups_for(rows * n_out, WG))
    return out
