"""Comparing a case's device outputs with its CPU reference, with per-dtype tolerances.

An element passes when |device - reference| <= atol * max|reference| + rtol * |reference| (atol is
relative to the output's largest reference value, so one rule fits losses, activations and tiny
gradients). Integers and booleans must match exactly; NaN and inf must appear in the same places.
The tolerance class of an output is the lowest precision among its own dtype and the case's dtype, so
a float32 loss computed under fp16 autocast is judged as fp16.
"""
from __future__ import annotations

from dataclasses import dataclass

# (rtol, atol as a fraction of max|reference|). fp32 allows for reordered sums and Winograd/FFT
# convolutions; fp16/bf16 for one rounding of the result plus accumulation in the low precision.
TOLERANCES: dict[str, tuple[float, float]] = {
    "float64": (1e-7, 1e-9),
    "float32": (2e-4, 2e-4),
    "float16": (1e-2, 5e-3),
    "bfloat16": (3e-2, 2e-2),
}
_PRECISION_ORDER = ("float64", "float32", "float16", "bfloat16")  # most to least precise


@dataclass(frozen=True)
class Comparison:
    ok: bool
    max_abs: float | None
    max_rel: float | None
    detail: str
    mode: str | None = None  # an explain failure-mode id the mismatch points to (fp16-corruption)


def flatten(outputs, prefix: str = "") -> list[tuple[str, object]]:
    """(label, tensor-or-value) pairs from a Tensor, tuple/list or dict (nested allowed)."""
    if isinstance(outputs, dict):
        pairs = []
        for key, value in outputs.items():
            pairs += flatten(value, f"{prefix}{key}" if not prefix else f"{prefix}/{key}")
        return pairs
    if isinstance(outputs, (tuple, list)):
        pairs = []
        for i, value in enumerate(outputs):
            pairs += flatten(value, f"{prefix}[{i}]" if prefix else f"output {i}")
        return pairs
    return [(prefix or "output", outputs)]


def _dtype_name(dtype) -> str:
    return str(dtype).replace("torch.", "")


def tolerance_class(output_dtype: str, case_dtype: str | None) -> str:
    names = [n for n in (output_dtype, case_dtype) if n in _PRECISION_ORDER]
    return max(names, key=_PRECISION_ORDER.index) if names else "float32"


@dataclass(frozen=True)
class _One:
    ok: bool
    max_abs: float
    max_rel: float
    why: str
    corrupt_low_precision: bool = False


def _compare_tensor(dev, ref, case_dtype, rtol, atol) -> _One:
    import torch

    if tuple(dev.shape) != tuple(ref.shape):
        return _One(False, float("inf"), float("inf"), f"shape {tuple(dev.shape)}, expected {tuple(ref.shape)}")
    if not ref.is_floating_point() and not ref.is_complex():
        if dev.is_floating_point():
            return _One(False, float("inf"), float("inf"),
                        f"dtype {_dtype_name(dev.dtype)}, expected {_dtype_name(ref.dtype)}")
        wrong = int((dev.to(torch.int64) != ref.to(torch.int64)).sum()) if dev.numel() else 0
        if wrong:
            return _One(False, float(wrong), 1.0, f"{wrong} of {ref.numel()} values differ (exact match expected)")
        return _One(True, 0.0, 0.0, "")
    if not dev.is_floating_point():
        return _One(False, float("inf"), float("inf"), f"dtype {_dtype_name(dev.dtype)}, expected a floating type")

    klass = tolerance_class(_dtype_name(dev.dtype), case_dtype)
    default_rtol, default_atol = TOLERANCES[klass]
    rtol = default_rtol if rtol is None else rtol
    atol = default_atol if atol is None else atol
    d, r = dev.to(torch.float64), ref.to(torch.float64)
    if d.numel() == 0:
        return _One(True, 0.0, 0.0, "")
    low_precision = klass in ("float16", "bfloat16")
    d_nan, r_nan = torch.isnan(d), torch.isnan(r)
    if not torch.equal(d_nan, r_nan):
        extra = int((d_nan & ~r_nan).sum())
        return _One(False, float("nan"), float("nan"),
                    f"NaN in {extra} of {d.numel()} values where the reference has numbers"
                    if extra else "NaN missing where the reference has NaN", corrupt_low_precision=low_precision)
    d_inf, r_inf = torch.isinf(d), torch.isinf(r)
    if not torch.equal(d_inf, r_inf) or not torch.equal(d[d_inf], r[r_inf]):
        return _One(False, float("inf"), float("inf"), f"infinities differ ({int(d_inf.sum())} vs {int(r_inf.sum())})",
                    corrupt_low_precision=low_precision)
    finite = ~(r_nan | r_inf)
    d, r = d[finite], r[finite]
    if r.numel() == 0:
        return _One(True, 0.0, 0.0, "")
    err = (d - r).abs()
    scale = float(r.abs().max())
    floor = atol * scale
    allowed = floor + rtol * r.abs()
    max_abs = float(err.max())
    max_rel = float((err / torch.clamp(r.abs(), min=max(floor, 1e-300))).max())
    if bool((err <= allowed).all()):
        return _One(True, max_abs, max_rel, "")
    bad = int((err > allowed).sum())
    constant = d.numel() > 1 and bool((d == d[0]).all()) and not bool((r == r[0]).all())
    why = (f"max abs err {max_abs:.3g}, max rel err {max_rel:.3g} in {bad} of {r.numel()} values "
           f"({klass} tolerance: rtol {rtol:g}, atol {atol:g}*max|ref|)" + ("; output is constant" if constant else ""))
    return _One(False, max_abs, max_rel, why, corrupt_low_precision=low_precision and constant)


def compare(device_outputs, reference_outputs, case_dtype: str | None = None, rtol: float | None = None,
            atol: float | None = None) -> Comparison:
    """Compare every output (and gradient) a case returned on the device with the reference's."""
    import torch

    dev_pairs, ref_pairs = flatten(device_outputs), flatten(reference_outputs)
    if [label for label, _ in dev_pairs] != [label for label, _ in ref_pairs]:
        return Comparison(False, None, None, f"the device run returned outputs {[l for l, _ in dev_pairs]}, "
                                             f"the reference {[l for l, _ in ref_pairs]}")
    worst_abs = worst_rel = 0.0
    failures: list[tuple[str, _One]] = []
    for (label, dev), (_, ref) in zip(dev_pairs, ref_pairs):
        if dev is None or ref is None:
            if (dev is None) != (ref is None):
                failures.append((label, _One(False, float("inf"), float("inf"), "missing on one side")))
            continue
        dev_t = torch.as_tensor(dev).detach().to("cpu")
        ref_t = torch.as_tensor(ref).detach().to("cpu")
        one = _compare_tensor(dev_t, ref_t, case_dtype, rtol, atol)
        worst_abs, worst_rel = max(worst_abs, one.max_abs), max(worst_rel, one.max_rel)
        if not one.ok:
            failures.append((label, one))
    count = len(dev_pairs)
    if not failures:
        return Comparison(True, worst_abs, worst_rel,
                          f"{count} output{'s' if count != 1 else ''}: "
                          f"max abs err {worst_abs:.3g}, max rel err {worst_rel:.3g}")
    label, first = failures[0]
    more = f" (and {len(failures) - 1} more output{'s' if len(failures) > 2 else ''})" if len(failures) > 1 else ""
    mode = "fp16-corruption" if any(one.corrupt_low_precision for _, one in failures) else None
    return Comparison(False, worst_abs, worst_rel, f"{label}: {first.why}{more}", mode)
