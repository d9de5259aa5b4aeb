"""The child side of benchmarks/opinfo_coverage.py: runs OpInfo items on wgpu against the CPU.

Reads one JSON job from stdin ({"items": [[op_key, dtype, mode], ...], "samples": N}) and writes one JSON
line per event to stdout: {"adapter": ...} once, then {"start": i} before item i and {"result": ...} after
it. The parent reads "start" to know which item a crash (abort, segfault, hang) belongs to.

An item's status: "pass" (every compared sample matches and no op ran on the CPU), "fallback" (matches,
but navitrain's fallback counter went up: it passes only via the CPU), "mismatch" (a value, dtype, shape
or device differs), "error" (wgpu raised where the CPU did not), "n/a" (the CPU itself rejected every
sample, so there is nothing to compare).

A float16/bfloat16 value that differs from the CPU's beyond the dtype's tolerance is judged once more against
the float64 result of the same inputs (benchmarks/_coverage_precision.py): within the tolerance of it and at
least as close to it as the CPU's, the item still passes, with "closer to float64 than the CPU: wgpu err X,
CPU err Y" in its detail and "float64_rule" set; otherwise the mismatch's detail gives both errors.
"""
from __future__ import annotations

import functools
import itertools
import json
import math
import os
import sys
import traceback
import warnings

import torch  # noqa: E402
from torch.utils._pytree import tree_flatten, tree_map  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _coverage_precision import REDUCED, describe, judge, upcast  # noqa: E402

# (rtol, atol): float32 strict as the issue asks; float16/bfloat16 as torch.testing's defaults for the
# dtype's rtol, with an atol of the same order (values near 0 otherwise fail on rounding alone).
TOLERANCE = {torch.float32: (1e-4, 1e-4), torch.float16: (1e-3, 1e-3), torch.bfloat16: (1.6e-2, 1e-2)}
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
          "int64": torch.int64, "bool": torch.bool}

# Ops whose values are random or uninitialised: only shapes, dtypes and devices are compared.
NONDETERMINISTIC = ("dropout", "bernoulli", "normal", "rand", "multinomial", "uniform", "exponential",
                    "geometric", "cauchy", "log_normal", "empty", "rrelu", "randint", "randn", "fractional_max_pool")


# Ops whose index output is unspecified among equal values (PyTorch's docs; sort only when not stable):
# op -> which output holds the indices. Another index is right when it points at an equal value.
TIE_INDEX_OPS = {"topk": 1, "kthvalue": 1, "sort": 1, "argsort": 0}


# Ops with an output whose columns are defined only up to sign (eigenvectors of a symmetric matrix: LAPACK's
# signs follow no rule PyTorch documents): op -> which output. Such a column is right when it equals the CPU's
# times +1 or -1; every other value is compared as usual.
SIGN_FREE_COLUMNS = {"linalg.eigh": 1}


def _equal_up_to_column_signs(got, ref, dtype) -> bool:
    got, ref = got.detach().cpu(), ref.detach()
    if got.shape != ref.shape or got.dim() < 2:
        return False
    signs = torch.where((got * ref).sum(-2, keepdim=True) < 0, -1.0, 1.0).to(got.dtype)
    rtol, atol = TOLERANCE.get(dtype, TOLERANCE[torch.float32])
    return bool(torch.isclose(got * signs, ref, rtol=rtol, atol=atol, equal_nan=True).all())


def _valid_indices(key, sample, got, ref) -> bool:
    if sample.kwargs.get("stable"):
        return False
    x, idx, ref = sample.input.detach(), got.detach().cpu(), ref.detach()
    if x.dim() == 0:
        return bool((idx == 0).all())
    if key in ("sort", "argsort"):
        dim = sample.args[0] if sample.args else sample.kwargs.get("dim", -1)
    else:
        dim = sample.args[1] if len(sample.args) > 1 else sample.kwargs.get("dim", -1)
    keepdim = key != "kthvalue" or (len(sample.args) > 2 and sample.args[2]) or sample.kwargs.get("keepdim", False)
    if not keepdim:
        idx, ref = idx.unsqueeze(dim), ref.unsqueeze(dim)
    return idx.shape == ref.shape and torch.equal(x.gather(dim, idx), x.gather(dim, ref))


def _random_sample(sample) -> bool:
    """Attention samples with dropout (scaled_dot_product_attention's dropout_p, multi_head_attention's
    training=True) draw random masks."""
    return bool(sample.kwargs.get("dropout_p") or sample.kwargs.get("training") is True)


def op_key(op) -> str:
    return op.name + ("." + op.variant_test_name if op.variant_test_name else "")


def op_table() -> dict:
    from torch.testing._internal.common_methods_invocations import op_db

    return {op_key(op): op for op in op_db}


class Mismatch(AssertionError):
    pass


class ValueMismatch(Mismatch):
    """Values (not dtype, shape or device) differ beyond the tolerance: the float64 rule may forgive it."""

    def __init__(self, what: str, body: str):
        super().__init__(f"{what}: {body}")
        self.what, self.body = what, body


def _is_random(key: str) -> bool:
    return any(word in key for word in NONDETERMINISTIC)


def _to_wgpu(x):
    if isinstance(x, torch.Tensor):
        src = x.detach()
        whole = src.untyped_storage().nbytes() // max(1, src.element_size())
        if src.layout == torch.strided and (src.storage_offset() or whole != src.numel()):
            # A view of a larger storage (as_strided's partial_views samples reach past the view): copy the
            # whole storage and take the same view of it, so ops see the same memory as on the CPU.
            base = torch.empty(0, dtype=src.dtype).set_(src.untyped_storage()).to("wgpu")
            t = base.as_strided(src.size(), src.stride(), src.storage_offset())
        else:
            t = src.to("wgpu")
        return t.requires_grad_(True) if x.requires_grad else t
    if isinstance(x, torch.device) and x.type == "cpu" or x == "cpu":  # to(device), factories
        return torch.device("wgpu")
    return x


# Arguments that must stay CPU tensors on any device (tensor_split's indices_or_sections).
KEEP_ON_CPU = {"tensor_split"}


def _tensors(obj) -> list:
    return [t for t in tree_flatten(obj)[0] if isinstance(t, torch.Tensor)]


def _compare(got, exp, dtype, what, values=True) -> None:
    if isinstance(exp, torch.Tensor):
        if not isinstance(got, torch.Tensor):
            raise Mismatch(f"{what}: {type(got).__name__} instead of a tensor")
        if got.device.type != "wgpu" and exp.device.type == "cpu":
            raise Mismatch(f"{what}: result on {got.device}, not on wgpu")
        g, e = got.detach().cpu(), exp.detach()
        if g.shape != e.shape or g.dtype != e.dtype:
            raise Mismatch(f"{what}: {g.dtype}{list(g.shape)} instead of {e.dtype}{list(e.shape)}")
        if not values:
            return
        if e.dtype.is_floating_point or e.dtype.is_complex:
            rtol, atol = TOLERANCE.get(dtype, TOLERANCE[torch.float32])
            try:
                torch.testing.assert_close(g, e, rtol=rtol, atol=atol, equal_nan=True)
            except AssertionError as exc:
                raise ValueMismatch(what, str(str(exc).splitlines()[1:4])) from None
        elif not torch.equal(g, e):
            raise Mismatch(f"{what}: values differ in {(g != e).sum().item()} of {e.numel()} elements")
    elif isinstance(exp, float) and isinstance(got, float):
        if not (got == exp or (math.isnan(got) and math.isnan(exp)) or math.isclose(got, exp, rel_tol=1e-4)):
            raise Mismatch(f"{what}: {got} != {exp}")
    elif values and type(exp) in (int, bool) and got != exp:
        raise Mismatch(f"{what}: {got!r} != {exp!r}")


def run_item(op, key: str, dtype: torch.dtype, mode: str, samples: int) -> dict:
    from navitrain.wgpu import dispatch

    grad = mode == "grad"
    torch.manual_seed(0)
    # set_seed=False: the samples stay random (PyTorch would reseed before each to the same values).
    inputs = list(itertools.islice(op.sample_inputs("cpu", dtype, requires_grad=grad, set_seed=False), samples))
    dispatch.reset_fallback_counts()
    values = not _is_random(key)
    compared, notes, judged = 0, [], []
    for i, s in enumerate(inputs):
        what = f"sample {i}"
        try:
            ref = op(s.input, *s.args, **s.kwargs)
        except Exception:
            continue  # the CPU rejects this sample: nothing to compare
        dev_in = tree_map(_to_wgpu, s.input)
        if op.name in KEEP_ON_CPU:
            dev_args, dev_kwargs = s.args, s.kwargs
        else:
            dev_args, dev_kwargs = tree_map(_to_wgpu, (s.args, s.kwargs))
        if dev_kwargs.get("device") in ("cpu", torch.device("cpu")):  # factories (arange, linspace, ...)
            dev_kwargs = {**dev_kwargs, "device": "wgpu"}
        sample_values = values and not _random_sample(s)
        float64_outputs = functools.cache(lambda s=s: _float64_outputs(op, s, dtype))
        try:
            out = op(dev_in, *dev_args, **dev_kwargs)
            dispatch.raise_pending()
            ref_flat, got_flat = tree_flatten(ref)[0], tree_flatten(out)[0]
            if len(ref_flat) != len(got_flat):
                raise Mismatch(f"{what}: {len(got_flat)} outputs instead of {len(ref_flat)}")
            for j, (g, e) in enumerate(zip(got_flat, ref_flat)):
                try:
                    _compare(g, e, dtype, f"{what} output {j}", sample_values)
                except Mismatch as exc:
                    if TIE_INDEX_OPS.get(key) == j and _valid_indices(key, s, g, e):
                        notes.append("ties: another valid index")
                    elif SIGN_FREE_COLUMNS.get(key) == j and _equal_up_to_column_signs(g, e, dtype):
                        notes.append("eigenvectors equal up to column signs")
                    else:
                        judged.append(_float64_rule(exc, g, e, dtype, lambda j=j: float64_outputs()[j]))
            if grad:
                # Sign-free outputs are differentiated as the OpInfo's own gradient checks do: through the
                # sample's output_process_fn_grad, which makes them sign-invariant (abs of eigenvectors).
                process = s.output_process_fn_grad if key in SIGN_FREE_COLUMNS else (lambda o: o)
                _compare_grads(op, s, process(ref), (dev_in, dev_args, dev_kwargs), process(out), dtype, what, i,
                               sample_values, judged, process)
        except Mismatch as exc:
            return {"status": "mismatch", "detail": str(exc)[:300], "fallbacks": dict(dispatch.fallback_counts)}
        except Exception as exc:
            dispatch._deferred.clear()
            return {"status": "error", "detail": f"{what}: {type(exc).__name__}: {str(exc)[:300]}",
                    "fallbacks": dict(dispatch.fallback_counts)}
        compared += 1
    if not values or any(_random_sample(s) for s in inputs):
        notes.append("random: shapes and dtypes compared")
    fallbacks = dict(dispatch.fallback_counts)
    if compared == 0:
        return {"status": "n/a", "detail": "the CPU rejected every sample (or there were none)"}
    float64_rule = {}
    if judged:  # the worst of wgpu's errors, with the CPU's on that output
        wgpu_err, cpu_err = max(judged)
        # An infinite error (the CPU overflowed) is stored as the string "inf": coverage.json stays plain JSON.
        float64_rule = {"float64_rule": {"wgpu_err": _json_number(wgpu_err), "cpu_err": _json_number(cpu_err)}}
        notes.append(f"closer to float64 than the CPU: {describe(wgpu_err, cpu_err)}")
    notes = sorted(set(notes))
    status = "fallback" if fallbacks else "pass"
    return {"status": status, "samples": compared, "fallbacks": fallbacks, "detail": "; ".join(notes),
            **float64_rule}


def _json_number(x: float):
    return x if math.isfinite(x) else str(x)


def _float64_outputs(op, sample, dtype) -> list:
    x, args, kwargs = upcast((sample.input, sample.args, sample.kwargs), dtype)
    with torch.no_grad():
        return tree_flatten(op(x, *args, **kwargs))[0]


def _float64_grads(op, sample, dtype, seeds, process=lambda o: o) -> tuple:
    x, args, kwargs = upcast((sample.input, sample.args, sample.kwargs), dtype)
    leaves = [t for t in _tensors((x, args, kwargs)) if t.requires_grad]
    outs = [r for r in _tensors(process(op(x, *args, **kwargs))) if r.requires_grad and r.dtype.is_floating_point]
    if len(outs) != len(seeds):
        raise ValueError("float64 outputs do not line up with the CPU's")
    return torch.autograd.grad(outs, leaves, [g.to(r.dtype) for g, r in zip(seeds, outs)], allow_unused=True)


def _float64_rule(exc: Mismatch, got, exp, dtype, reference) -> tuple[float, float]:
    """Forgive a float16/bfloat16 value mismatch that precision.judge passes against float64 (returns wgpu's
    and the CPU's errors); re-raise anything else, with both errors when they could be measured."""
    if not isinstance(exc, ValueMismatch) or dtype not in REDUCED:
        raise exc
    try:
        ref64 = reference()
    except Exception:  # no float64 result on the CPU: only the CPU's own result can judge
        raise exc from None
    if not isinstance(ref64, torch.Tensor):
        raise exc
    ok, wgpu_err, cpu_err = judge(got, exp, ref64, dtype, *TOLERANCE[dtype])
    if not ok:
        raise Mismatch(f"{exc.what}: vs float64 {describe(wgpu_err, cpu_err)}; vs CPU {exc.body}") from None
    return wgpu_err, cpu_err


def _compare_grads(op, sample, ref, dev, out, dtype, what, i, values, judged, process=lambda o: o) -> None:
    cpu_leaves = [t for t in _tensors((sample.input, sample.args, sample.kwargs)) if t.requires_grad]
    dev_leaves = [t for t in _tensors(dev) if t.requires_grad]
    pairs = [(r, d) for r, d in zip(_tensors(ref), _tensors(out))
             if r.requires_grad and r.dtype.is_floating_point]
    if not cpu_leaves or not pairs:
        return
    gen = torch.Generator().manual_seed(1234 + i)
    seeds = [torch.randn(r.shape, generator=gen, dtype=r.dtype) for r, _ in pairs]
    try:
        ref_g = torch.autograd.grad([r for r, _ in pairs], cpu_leaves, seeds, allow_unused=True)
    except Exception:
        return  # the CPU cannot differentiate this sample either
    dev_g = torch.autograd.grad([d for _, d in pairs], dev_leaves, [g.to("wgpu") for g in seeds], allow_unused=True)
    from navitrain.wgpu import dispatch

    dispatch.raise_pending()
    float64_grads = functools.cache(lambda: _float64_grads(op, sample, dtype, seeds, process))
    for k, (rg, dg) in enumerate(zip(ref_g, dev_g)):
        if rg is None:
            if dg is not None and dg.abs().max().item() != 0:
                raise Mismatch(f"{what} grad {k}: non-zero where the CPU has none")
            continue
        if dg is None:
            raise Mismatch(f"{what} grad {k}: missing")
        try:
            _compare(dg, rg, dtype, f"{what} grad {k}", values)
        except Mismatch as exc:
            judged.append(_float64_rule(exc, dg, rg, dtype, lambda k=k: float64_grads()[k]))


def main() -> None:
    # fallbacks must run (and be counted), not raise; set here, in the child process, not at import: a test
    # importing this module for its helpers would otherwise turn strict mode off for the rest of its session
    os.environ["NAVITRAIN_WGPU_STRICT"] = "0"
    warnings.simplefilter("ignore")
    job = json.loads(sys.stdin.read())
    import navitrain.wgpu as nw

    info = nw.adapter_info()
    print(json.dumps({"adapter": {k: info.get(k) for k in ("name", "backend", "driver")}}), flush=True)
    table = op_table()
    for i, (key, dtype_name, mode) in enumerate(job["items"]):
        print(json.dumps({"start": i}), flush=True)
        try:
            result = run_item(table[key], key, DTYPES[dtype_name], mode, job["samples"])
        except Exception as exc:  # sample generation itself failed
            result = {"status": "error", "detail": f"{type(exc).__name__}: {exc}"[:300],
                      "trace": traceback.format_exc(limit=2)[-300:]}
        print(json.dumps({"result": result}, default=str), flush=True)


if __name__ == "__main__":
    main()
