"""Bench results in the probe store, keyed by the probe fingerprint of this machine's stack, so that
`navitrain.device()` can order routes by measured speed and `navitrain advise` can use them.

The store and the fingerprint belong to navitrain.probe; this module only adapts a bench report to
them and says plainly when they are missing.

Keys: a row is stored as route + "workload@size/mode" (`resnet18@standard/graph`) with the workload's
signature (model shape, optimizer) beside it. navitrain.device() orders routes by `representative_speeds`:
standard-size rows whose signature is today's only, a route scored by its best mode; tiny-size rows (a
CI run, or issue 18's old quick bench) and rows of another shape are ignored, and the sentence says so.
"""
from __future__ import annotations

from typing import Any

# Extra facts stored beside each speed, so a stored row can be told apart and judged later.
_EXTRA_FIELDS = ("title", "size", "mode", "batch_size", "batch_note", "iqr_ms", "min_ms", "max_ms",
                 "time_to_first_step_s", "peak_memory_bytes", "memory_kind", "speedup_vs_cpu", "first_loss",
                 "last_loss", "relative_spread", "noisy", "host_ms", "host_share", "host_bound", "timed_steps")


def workload_key(row: dict[str, Any]) -> str:
    """Sizes and modes of a workload are different measurements: `resnet18@standard/graph`."""
    return f"{row['workload']}@{row['size']}/{row.get('mode') or 'eager'}"


def _signature(workload: str, size: str) -> dict[str, Any] | None:
    from navitrain.bench import workloads

    try:
        return workloads.get(workload, size).signature()
    except ValueError:
        return None


def save(report: dict[str, Any]) -> dict[str, Any]:
    """Store every timed row of `report` (BenchReport.to_dict()). Returns {"saved", "fingerprint",
    "note"}; never raises: a bench whose results cannot be stored still printed them."""
    rows = [r for r in report["results"] if r["status"] == "ok" and r.get("samples_per_s")]
    from navitrain.bench import noise

    if noise.machine_busy(report.get("other_load")):
        # navitrain.device() orders routes by stored speeds: timings taken against other load would
        # steer it (a busy CPU makes every other route look faster than it is)
        return {"saved": 0, "fingerprint": report.get("machine", {}).get("fingerprint"),
                "note": f"not stored: other processes kept {report['other_load']['share']:.0%} of the CPU busy, "
                        "and navitrain.device() would order routes by these speeds; rerun on an idle machine"}
    try:
        from navitrain.probe import store
    except Exception as exc:
        return {"saved": 0, "fingerprint": None, "note": f"not stored: the probe store is unavailable ({exc})"}
    fingerprint = report.get("machine", {}).get("fingerprint")
    if not fingerprint:
        return {"saved": 0, "fingerprint": None, "note": "not stored: no probe fingerprint for this machine"}
    saved = 0
    try:
        from navitrain.bench.machine import fingerprint_object

        fp = fingerprint_object()
        if fp is not None and str(getattr(fp, "id", fp)) == fingerprint:
            store.save_fingerprint(fp)  # the facts behind the key, for whoever reads the rows later
        for row in rows:
            extra = {key: row.get(key) for key in _EXTRA_FIELDS}
            extra.update(steps=report["steps"], warmup=report["warmup"], seed=report["seed"],
                         plan=report.get("plan"), signature=_signature(row["workload"], row["size"]))
            store.save_bench(fingerprint, row["route"], workload_key(row), row["samples_per_s"],
                             row["median_ms"], extra)
            saved += 1
    except Exception as exc:
        return {"saved": saved, "fingerprint": fingerprint, "note": f"storing failed after {saved} rows: {exc}"}
    if store.in_memory():  # the store said why (once, naming the file); the note says what it means here
        return {"saved": saved, "fingerprint": fingerprint,
                "note": "kept in memory only: the probe store cannot be written (the warning above says which "
                        "file and why), so navitrain.device() in another process will not see these speeds"}
    return {"saved": saved, "fingerprint": fingerprint, "note": ""}


def _representative(row: dict[str, Any]) -> tuple[str, str] | None:
    """(workload, mode) of a stored row that may choose a device: standard size, today's signature."""
    from navitrain.bench.workloads import REPRESENTATIVE_SIZE

    workload, _, rest = row["workload"].partition("@")
    size, _, mode = rest.partition("/")
    if size != REPRESENTATIVE_SIZE or row["extra"].get("signature") != _signature(workload, size):
        return None
    return workload, mode or "eager"


def representative_speeds(fingerprint) -> tuple[dict[str, float], str]:
    """Relative training speed per route (the fastest route of each workload is 1; a route's speed is
    the geometric mean of its ratios) from stored standard-size results only, each route scored by its
    best mode; and a sentence naming the speed-up over the CPU per workload with the mode, and what was
    ignored. ({}, why) when no representative result is stored."""
    import math

    from navitrain.bench import units
    from navitrain.probe import store

    best: dict[str, dict[str, tuple[float, str]]] = {}  # workload -> route -> (samples/s, mode)
    ignored = 0
    for row in store.bench_results(fingerprint):
        found = _representative(row)
        if found is None or not (row["samples_per_s"] or 0) > 0:
            ignored += 1
            continue
        workload, mode = found
        if row["samples_per_s"] > best.setdefault(workload, {}).get(row["route"], (0.0, ""))[0]:
            best[workload][row["route"]] = (float(row["samples_per_s"]), mode)
    skipped = (f"; {ignored} stored result{'s' if ignored != 1 else ''} of tiny or other sizes ignored"
               if ignored else "")
    if not best:
        return {}, f"no bench results at standard sizes{skipped}"
    logs: dict[str, list[float]] = {}
    for speeds in best.values():
        top = max(speed for speed, _ in speeds.values())
        for route, (speed, _) in speeds.items():
            logs.setdefault(route, []).append(math.log(speed / top))
    relative = {route: math.exp(sum(v) / len(v)) for route, v in logs.items()}
    facts = []
    for workload, speeds in sorted(best.items()):
        if "cpu" not in speeds:
            continue
        cpu = speeds["cpu"][0]
        facts += [f"{route} ({mode}) {units.ratio(speed / cpu)} the CPU's speed on {workload}"
                  for route, (speed, mode) in sorted(speeds.items(), key=lambda kv: -kv[1][0]) if route != "cpu"]
    measured = "; ".join(facts) if facts else "no CPU row to compare with"
    return relative, f"navitrain bench at standard sizes: {measured}{skipped}"


def measured_speeds() -> tuple[dict[str, float], str]:
    """Speeds per route from the representative (standard-size) bench results for this machine's
    fingerprint, and where they came from (empty when none or the store is unavailable)."""
    from navitrain.bench.machine import fingerprint as current_fingerprint

    fingerprint = current_fingerprint()
    if not fingerprint:
        return {}, "no probe fingerprint for this machine"
    try:
        speeds, why = representative_speeds(fingerprint)
    except Exception as exc:
        return {}, f"reading the probe store failed: {exc}"
    if not speeds:
        return {}, f"{why} (fingerprint {fingerprint})"
    return speeds, f"measured by {why} (fingerprint {fingerprint})"


def benched_routes() -> set[str]:
    """Routes with any stored bench row for this fingerprint, of any size: the bench stores only rows
    whose losses fell and matched the CPU's, so each of these trained correctly here."""
    from navitrain.bench.machine import fingerprint as current_fingerprint
    from navitrain.probe import store

    fingerprint = current_fingerprint()
    return {row["route"] for row in store.bench_results(fingerprint)} if fingerprint else set()


# A step time this many times slower or faster than the stored one for the same route and workload is
# worth saying: no code change between two benches on one machine moves a step that far by itself.
CHANGE_FACTOR = 2.0


def changes_since_stored(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows of `report` whose median step time is CHANGE_FACTOR or more away from the last stored bench
    of the same route and workload on this fingerprint (call before `save`); empty when nothing was
    stored or the store cannot be read: this only adds a warning, it never stops a bench."""
    fingerprint = report.get("machine", {}).get("fingerprint")
    if not fingerprint:
        return []
    try:
        from navitrain.probe import store

        stored = {(r["route"], r["workload"]): r for r in store.bench_results(fingerprint)}
    except Exception:
        return []
    found = []
    for row in report["results"]:
        before = stored.get((row["route"], workload_key(row)))
        if row["status"] != "ok" or not row.get("median_ms") or not before or not before.get("step_ms"):
            continue
        factor = row["median_ms"] / before["step_ms"]
        if factor >= CHANGE_FACTOR or factor <= 1 / CHANGE_FACTOR:
            found.append({"route": row["route"], "workload": row["workload"], "median_ms": row["median_ms"],
                          "stored_ms": before["step_ms"], "stored_at": before.get("created"), "factor": factor})
    return found
