"""Predicting the largest batch under a memory cap from a few small, uncapped tries (issue 20; max_batch.py --predict).

Why this works without the target GPU: navitrain's allocator (src/navitrain/wgpu/allocator.py) decides in
pure Python, from the sequence of tensor sizes a training step asks for, which blocks and heaps it needs;
the adapter enters only through the heap size (64 MiB on software adapters, 512 MiB otherwise), the
largest storage binding, and which kernels run (with NAVITRAIN_WGPU_TUNE=0 the tile and algorithm choices
are the built-in defaults on every adapter). So a small try on lavapipe records the allocation trace, and
the trace at a large batch follows from traces at small ones: each request is `a + b * batch` bytes
(`extrapolate` says how the traces of two batches are lined up where a few requests differ).

What comes out of it:
- scalar fits over the measured batches, `peak = a + b * batch`, of the peak bytes in live blocks (what
  max_memory_allocated says), of the bytes carved into heaps (per size class, the most blocks of that class
  ever live at once: what the heaps hold when no idle heap is given back) and of the largest block, with
  their residuals. Only a check: size classes round blocks below 1 MiB up to a power of two, so at batches
  between the measured ones the waste is larger than any line through them says;
- the prediction, a replay: the trace extrapolated to a batch is run through the allocator class itself
  with the target's heap size, binding limit and cap and with buffers that are only numbers, which answers
  fits / fails by the allocator's own rules (size classes, heap tails, giving back idle heaps at the cap);
- bounds from the extrapolated trace: past `upper_from_allocated` the live blocks alone exceed the cap;
  up to `from_carved` every block ever carved fits; past `binding` one block exceeds a storage binding.

Everything here is pure Python on recorded traces; the tests run it on synthetic ones.
A trace is a list of ints: n > 0 allocates n bytes (the k-th such entry is block k), -(k + 1) frees block k.
"""
from __future__ import annotations

import difflib
import math
import re
from collections import Counter

from navitrain.wgpu.allocator import ALIGN, CachingAllocator, size_class

_MiB = 1 << 20
_FRAME_DETAIL = re.compile(r":[^ ]*")  # ":function:line" after each caller's file name
SOFTWARE_HEAP = 64 << 20    # runtime.py: the heap size on software adapters ...
HARDWARE_HEAP = 512 << 20   # ... and on the others, both capped at the largest binding


def parse_bytes(text: str) -> int:
    """'6GiB', '48MiB', '512KiB' or a plain number of bytes."""
    units = {"gib": 1 << 30, "mib": 1 << 20, "kib": 1 << 10, "gb": 10 ** 9, "mb": 10 ** 6, "kb": 10 ** 3, "b": 1}
    low = text.strip().lower()
    for suffix, scale in units.items():
        if low.endswith(suffix):
            return int(float(low[: -len(suffix)]) * scale)
    return int(low)


def target_adapter(profile: str | None, measured: dict) -> dict:
    """Heap size and largest binding of the adapter a prediction is for: a limits profile's card (a
    hardware adapter: 512 MiB heaps), or with profile None the adapter the measurements ran on."""
    if profile is None:
        return {"name": "this adapter", "heap_bytes": measured["heap_bytes"],
                "max_binding_bytes": measured["max_binding_bytes"]}
    from navitrain.wgpu.limits_profile import BUILTIN

    title, limits, _features = BUILTIN[profile]
    binding = min(int(limits["max-storage-buffer-binding-size"]), int(limits["max-buffer-size"])) // ALIGN * ALIGN
    return {"name": title, "heap_bytes": min(binding, HARDWARE_HEAP), "max_binding_bytes": binding}


# -- one trace --------------------------------------------------------------------------------------
def trace_stats(trace: list[int]) -> dict:
    """Peak bytes in live blocks, bytes carved into heaps without release, and the largest block."""
    classes: list[int] = []
    live: Counter = Counter()
    most_live: Counter = Counter()
    allocated = peak = largest = 0
    for entry in trace:
        if entry > 0:
            cls = size_class(entry)
            classes.append(cls)
            allocated += cls
            peak = max(peak, allocated)
            largest = max(largest, cls)
            live[cls] += 1
            most_live[cls] = max(most_live[cls], live[cls])
        else:
            cls = classes[-entry - 1]
            allocated -= cls
            live[cls] -= 1
    # A freed block goes back to its class's free list and only ever serves that class again, so each
    # class needs as many blocks as it ever had live at once.
    carved = sum(cls * count for cls, count in most_live.items())
    return {"peak_allocated": peak, "carved": carved, "largest_block": largest, "allocations": len(classes)}


def replay(trace: list[int], heap_bytes: int, max_binding_bytes: int, cap: int | None) -> dict:
    """Run the trace through the allocator with numbers for buffers: {"fits", "peak_reserved", "error"?}."""
    allocator = CachingAllocator(lambda nbytes: nbytes, lambda buffer: None, heap_bytes, max_binding_bytes, cap)
    blocks: list = []
    peak_reserved = 0
    try:
        for entry in trace:
            if entry > 0:
                blocks.append(allocator.malloc(entry))
                peak_reserved = max(peak_reserved, allocator.reserved)
            else:
                allocator.free(blocks[-entry - 1])
                blocks[-entry - 1] = None
    except Exception as exc:  # torch.OutOfMemoryError (or MemoryError without it): the step does not fit
        if not isinstance(exc, MemoryError) and type(exc).__name__ != "OutOfMemoryError":
            raise
        return {"fits": False, "peak_reserved": peak_reserved, "error": str(exc)}
    return {"fits": True, "peak_reserved": peak_reserved}


# -- several batches ----------------------------------------------------------------------------------
def fit_line(points: list[tuple[int, int]]) -> dict:
    """Least squares y = a + b * batch over (batch, bytes) points (3+ to see whether it is a line):
    a, b, and the largest residual in bytes and as a share of that point's value."""
    if len({x for x, _ in points}) < 2:
        raise ValueError("a line needs at least two different batches")
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    b = sum((x - mx) * (y - my) for x, y in points) / sum((x - mx) ** 2 for x, _ in points)
    a = my - b * mx
    residuals = [y - (a + b * x) for x, y in points]
    worst = max(range(n), key=lambda i: abs(residuals[i]))
    return {"a": a, "b": b, "max_residual": abs(residuals[worst]),
            "max_residual_share": abs(residuals[worst]) / max(1, points[worst][1])}


def largest_under(line: dict, limit: int, most: int) -> int:
    """The largest batch n <= most with a + b * n <= limit (0 when not even one)."""
    if line["b"] <= 0:
        return most if line["a"] <= limit else 0
    return max(0, min(most, math.floor((limit - line["a"]) / line["b"])))


def _tokens(trace: list[int], sites: list[str] | None) -> list[str]:
    """What lines up between batches: each malloc's site, each free as the site of the block it frees.
    Only the files of the callers count: an edit elsewhere in a file moves line numbers, and a refactor
    renames functions, without changing the order of the requests."""
    if sites:
        sites = [_FRAME_DETAIL.sub("", site) for site in sites]
    tokens, count = [], 0
    for entry in trace:
        if entry > 0:
            tokens.append(sites[count] if sites else "malloc")
            count += 1
        else:
            tokens.append("free " + (sites[-entry - 1] if sites else ""))
    return tokens


def _match(base: list[int], base_sites, other: list[int], other_sites) -> dict[int, int]:
    """base's block number -> other's, for the requests both traces make (the longest common runs)."""
    numbers = []
    for trace in (base, other):
        count, positions = 0, {}
        for at, entry in enumerate(trace):
            if entry > 0:
                positions[at] = count
                count += 1
        numbers.append(positions)
    def pairs_by(base_tokens, other_tokens):
        matcher = difflib.SequenceMatcher(None, base_tokens, other_tokens, autojunk=False)
        return {numbers[0][i + d]: numbers[1][j + d] for i, j, size in matcher.get_matching_blocks()
                for d in range(size) if i + d in numbers[0]}

    by_order = pairs_by(_tokens(base, None), _tokens(other, None))
    if not (base_sites and other_sites):  # sites on one side only would match nothing
        return by_order
    by_site = pairs_by(_tokens(base, base_sites), _tokens(other, other_sites))
    # sites recorded differently (another version of this script or of the call stack) match little
    return by_site if len(by_site) >= len(by_order) // 2 else by_order


def _sizes(trace: list[int]) -> list[int]:
    return [entry for entry in trace if entry > 0]


def extrapolate(traces: dict[int, list[int]], sites: dict[int, list[str]] | None = None) -> tuple[object, dict]:
    """(trace_at(batch), check). The trace of the largest measured batch is the pattern: size-dependent
    kernel choices (a split K, another tile) add or drop a few short-lived requests at small batches, and
    the largest batch is the nearest to the ones predicted. Each of its requests that the next largest
    batch makes too (lined up by call site, or by order where no sites were recorded) grows on the line
    through the two; the others keep their size. The check says, for every other measured batch, how many
    of its requests are off that line (by how many bytes at most) and how many do not line up."""
    sites = sites or {}
    batches = sorted(traces)
    if len(batches) < 2:
        raise ValueError("extrapolating needs traces of two batches at least")
    hi, lo = batches[-1], batches[-2]
    base = traces[hi]
    base_sizes = _sizes(base)
    lo_sizes = _sizes(traces[lo])
    slopes = [0.0] * len(base_sizes)
    for k, m in _match(base, sites.get(hi), traces[lo], sites.get(lo)).items():
        slopes[k] = (base_sizes[k] - lo_sizes[m]) / (hi - lo)

    def trace_at(batch: int) -> list[int]:
        sizes = iter([max(1, math.ceil(size + slope * (batch - hi) - 1e-9)) for size, slope in zip(base_sizes, slopes)])
        return [next(sizes) if entry > 0 else entry for entry in base]

    check = {"from_batches": [lo, hi], "requests": len(base_sizes), "per_batch": {}}
    for batch in batches[:-1]:
        pairs = _match(base, sites.get(hi), traces[batch], sites.get(batch))
        predicted, actual = _sizes(trace_at(batch)), _sizes(traces[batch])
        errors = [abs(predicted[k] - actual[m]) for k, m in pairs.items() if predicted[k] != actual[m]]
        check["per_batch"][str(batch)] = {
            "off_the_line": len(errors), "worst_error_bytes": max(errors, default=0),
            "only_at_largest": len(base_sizes) - len(pairs), "only_here": len(actual) - len(pairs)}
    return trace_at, check


def predict(measurements: list[dict], limit: int, target: dict, most: int, search) -> dict:
    """One (model, precision) for `target`: the scalar fits over the measured batches, the batch the replay
    predicts, and three bounds from the extrapolated trace. `measurements` are {"batch", "trace", "sites"?}
    of uncapped tries; `search(fits, most)` is max_batch.largest_batch."""
    traces = {m["batch"]: m["trace"] for m in measurements}
    stats = {batch: trace_stats(trace) for batch, trace in traces.items()}
    fits = {key: fit_line([(batch, s[key]) for batch, s in sorted(stats.items())])
            for key in ("peak_allocated", "carved", "largest_block")}
    trace_at, check = extrapolate(traces, {m["batch"]: m["sites"] for m in measurements if m.get("sites")})

    def under(key, bound):
        return search(lambda n: {"fits": trace_stats(trace_at(n))[key] <= bound}, most)[0]

    bounds = {
        # the heaps the cap counts hold at least the live blocks: past this batch nothing fits
        "upper_from_allocated": under("peak_allocated", limit),
        # every carved block in heaps, none given back: up to here it fits unless heap tails waste room
        "from_carved": under("carved", limit),
        # one tensor larger than a storage binding is refused whatever the cap
        "binding": under("largest_block", target["max_binding_bytes"]),
    }

    def replay_at(batch):
        return replay(trace_at(batch), target["heap_bytes"], target["max_binding_bytes"], limit)

    batch, last = search(replay_at, most)
    result = {"fits": fits, "bounds": bounds, "trace_check": check, "predicted": batch,
              "peak_reserved_at_prediction": last.get("peak_reserved"),
              "measured": {str(n): s for n, s in sorted(stats.items())}}
    if batch < most:
        result["fails_next_because"] = replay_at(batch + 1).get("error", "")[:200]
    return result


def markdown(rows: list[dict]) -> str:
    """The table of predictions: the fits in MiB, the predicted batch, and the verification if any."""
    lines = ["| model | precision | peak allocated MiB = a + b*batch | carved MiB = a + b*batch | max residual | "
             "requests off the line / not lined up | predicted | bounds (allocated / carved / binding) | verified |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        fits = row["fits"]
        alloc, carved = (f"{fits[key]['a'] / _MiB:.1f} + {fits[key]['b'] / _MiB:.3f}" for key in ("peak_allocated",
                                                                                                  "carved"))
        residual = max(fits["peak_allocated"]["max_residual_share"], fits["carved"]["max_residual_share"])
        b = row["bounds"]
        per_batch = row["trace_check"]["per_batch"].values()
        off = sum(c["off_the_line"] for c in per_batch)
        unmatched = sum(c["only_at_largest"] + c["only_here"] for c in per_batch)
        verified = row.get("verified")
        if verified:
            verified = ", ".join(f"{n}: {'fits' if ok else 'fails'}" for n, ok in verified["tries"]) + \
                       f" under {verified['limit']} here"
        lines.append(f"| {row['model']} | {row['precision']} | {alloc} | {carved} | {residual:.2%} | "
                     f"{off} / {unmatched} of {row['trace_check']['requests']} | {row['predicted']} | "
                     f"{b['upper_from_allocated']} / {b['from_carved']} / {b['binding']} | {verified or 'no'} |")
    return "\n".join(lines)
