"""`navitrain bench --plot`: samples/s per route, one panel per workload, readable at a glance.

One panel per workload because their speeds differ by orders of magnitude (an MLP step moves tens of
thousands of samples per second, a ResNet a few hundred): each panel gets its own linear axis, every
bar carries its value and its speed-up over the CPU, and a route that could not be timed shows why.
Error bars span the samples/s of the steps at the first and third quartile of step time (the table's
IQR); a row whose spread makes its ratios unreliable is labelled "noisy" (bench/noise.py).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from navitrain.bench import units
from navitrain.bench.machine import title_line

FORMATS = (".png", ".svg")
# One colour per route, the same in every chart (colour-blind-safe Okabe-Ito hues).
ROUTE_COLOURS = {"native": "#0072B2", "nomiopen": "#009E73", "wgpu": "#D55E00", "cpu": "#999999"}
_FALLBACK_COLOURS = ("#CC79A7", "#E69F00", "#56B4E9", "#F0E442")


def _colour(route: str, index: int) -> str:
    return ROUTE_COLOURS.get(route, _FALLBACK_COLOURS[index % len(_FALLBACK_COLOURS)])


def _quartile_rates(row: dict[str, Any] | None) -> tuple[float, float]:
    """(how far below, how far above its samples/s) the rates of the steps at the third and first
    quartile of step time lie; (0, 0) without per-step times."""
    import statistics

    steps = [t for t in (row or {}).get("step_ms") or [] if t and t > 0]
    if not row or row.get("status") != "ok" or not row.get("samples_per_s") or len(steps) < 2:
        return 0.0, 0.0
    q1, _, q3 = statistics.quantiles(steps, n=4, method="inclusive")
    rate, median = row["samples_per_s"], row["median_ms"]
    return max(0.0, rate - rate * median / q3), max(0.0, rate * median / q1 - rate)


def plot_report(report: dict[str, Any], path: str | Path) -> Path:
    """Draw `report` (BenchReport.to_dict()) to `path` (.png or .svg) and return the path."""
    path = Path(path)
    if path.suffix.lower() not in FORMATS:
        raise ValueError(f"plot file must end in .png or .svg, got {path.name!r}")
    import matplotlib

    matplotlib.use("Agg", force=True)  # files only; never needs a display
    import matplotlib.pyplot as plt

    results = report["results"]
    # one bar per route and mode: "wgpu (eager)" and "wgpu (graph)" share wgpu's colour
    routes = list(dict.fromkeys(r.get("label") or r["route"] for r in results))
    route_of = {r.get("label") or r["route"]: r["route"] for r in results}
    workloads = list(dict.fromkeys(r["workload"] for r in results))
    titles = {r["workload"]: r["title"] for r in results}

    fig, axes = plt.subplots(1, len(workloads), figsize=(max(4.2 * len(workloads), 6), 4.6), squeeze=False)
    for ax, workload in zip(axes[0], workloads):
        rows = {r.get("label") or r["route"]: r for r in results if r["workload"] == workload}
        heights = [rows[rt]["samples_per_s"] or 0.0 if rt in rows else 0.0 for rt in routes]
        below, above = zip(*(_quartile_rates(rows.get(rt)) for rt in routes))
        # NaN: no error bar (and no stray cap at zero) where a route was not timed
        yerr = [[b if h else math.nan for b, h in zip(below, heights)],
                [a if h else math.nan for a, h in zip(above, heights)]]
        bars = ax.bar(routes, heights, color=[_colour(route_of[rt], i) for i, rt in enumerate(routes)],
                      edgecolor="black", linewidth=0.6, yerr=yerr, capsize=4,
                      error_kw={"elinewidth": 1, "ecolor": "black"})
        top = max((h + a for h, a in zip(heights, above)), default=0.0) or 1.0
        ax.set_ylim(0, top * 1.35)  # room for up to three label lines above the tallest bar
        for bar, route in zip(bars, routes):
            row = rows.get(route)
            x = bar.get_x() + bar.get_width() / 2
            if row and row["status"] == "ok" and row["samples_per_s"]:
                label = units.rate(row["samples_per_s"])
                if row.get("speedup_vs_cpu") and row["route"] != "cpu":
                    label += f"\n{units.ratio(row['speedup_vs_cpu'])} CPU"
                    if row.get("speedup_reliable") is False:
                        label += ", unreliable"
                if row.get("noisy"):
                    label += "\nnoisy"
                # above the error bar, so the two never overlap
                ax.text(x, bar.get_height() + above[routes.index(route)] + top * 0.02, label, ha="center",
                        va="bottom", fontsize=9, color="#B00020" if row.get("noisy") else "black")
            else:
                status = row["status"] if row else "not run"
                ax.text(x, top * 0.03, status, ha="center", va="bottom", fontsize=9, color="#B00020",
                        rotation=90)
        ax.set_title(titles.get(workload, workload), fontsize=11)
        ax.set_xlabel("route")
        ax.set_ylabel("samples/s (higher is better; bars: step-time IQR)")
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)

    mode = f"{report.get('size', '')} sizes, {report.get('plan', 'quick')}"
    fig.suptitle(f"navitrain bench ({mode}): training throughput per route\n{title_line(report.get('machine', {}))}",
                 fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
