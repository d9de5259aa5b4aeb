"""Bench results in the probe store, keyed by the probe fingerprint of this machine's stack, so that
`navitrain.device()` can order routes by measured speed and `navitrain advise` can use them.

The store and the fingerprint belong to navitrain.probe; this module only adapts a bench report to
them and says plainly when they are missing.
"""
from __future__ import annotations

from typing import Any

# Extra facts stored beside each speed, so a stored row can be told apart and judged later.
_EXTRA_FIELDS = ("title", "size", "batch_size", "iqr_ms", "min_ms", "max_ms", "time_to_first_step_s",
                 "peak_memory_bytes", "memory_kind", "speedup_vs_cpu", "first_loss", "last_loss",
                 "relative_spread", "noisy")


def workload_key(row: dict[str, Any]) -> str:
    """Quick and full sizes of a workload are different measurements: `resnet18@quick`."""
    return f"{row['workload']}@{row['size']}"


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
            extra.update(steps=report["steps"], warmup=report["warmup"], seed=report["seed"])
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


def measured_speeds() -> tuple[dict[str, float], str]:
    """Speeds per route from the latest bench for this machine's fingerprint, and where they came from
    (empty when nothing was measured or the store is unavailable)."""
    from navitrain.bench.machine import fingerprint as current_fingerprint

    try:
        from navitrain.probe import store
    except Exception as exc:
        return {}, f"the probe store is unavailable ({exc})"
    fingerprint = current_fingerprint()
    if not fingerprint:
        return {}, "no probe fingerprint for this machine"
    try:
        speeds = dict(store.route_speeds(fingerprint))
    except Exception as exc:
        return {}, f"reading the probe store failed: {exc}"
    speeds = {route: float(v) for route, v in speeds.items() if v and v > 0}
    if not speeds:
        return {}, f"no bench results for fingerprint {fingerprint}"
    return speeds, f"measured by navitrain bench (fingerprint {fingerprint})"


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
