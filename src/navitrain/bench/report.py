"""Rendering a bench report (BenchReport.to_dict()) for people: a rich table and the reasons behind
every row that could not be timed. The JSON form is the dict itself."""
from __future__ import annotations

from typing import Any

from rich.table import Table
from rich.text import Text

STATUS_STYLE = {"ok": "green", "refused": "bold yellow", "unavailable": "dim", "error": "red",
                "crash": "bold red", "hang": "bold red", "not run": "dim"}


def _bytes(value: int | None) -> str:
    if value is None:
        return "n/a"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return "n/a"  # pragma: no cover


def _rate(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def _step(row: dict[str, Any]) -> str:
    if row.get("median_ms") is None:
        return "-"
    spread = row.get("iqr_ms") or 0.0
    return f"{row['median_ms']:.3g} ±{spread / 2:.2g}"


def results_table(report: dict[str, Any], *, compact: bool = False) -> Table:
    """One row per route and workload. `compact` drops the columns `navitrain run` does not need."""
    titles = dict.fromkeys(f"{r['workload']} = {r['title']}" for r in report["results"])
    kinds = dict.fromkeys(f"{r['route']}: {r['memory_kind']}" for r in report["results"]
                          if r.get("peak_memory_bytes") is not None)
    caption = "; ".join(titles)
    if kinds and not compact:
        caption += "\nmemory: " + "; ".join(kinds)
    table = Table(title=f"navitrain bench ({report['size']}: {report['warmup']} warm-up + "
                        f"{report['steps']} timed steps)", title_justify="left",
                  caption=caption, caption_justify="left")
    columns = ["workload", "route", "status", "step ms ±IQR/2", "samples/s", "vs CPU"]
    if not compact:
        columns += ["memory", "1st step", "loss"]
    for index, name in enumerate(columns):
        # names and statuses must stay whole; numbers may wrap at their space
        table.add_column(name, justify="left" if index < 3 else "right", no_wrap=index < 3,
                         min_width=len(name) if index < 3 else None)
    order = {name: i for i, name in enumerate(dict.fromkeys(r["workload"] for r in report["results"]))}
    for row in sorted(report["results"], key=lambda r: (order[r["workload"]], -(r.get("samples_per_s") or 0))):
        speedup = row.get("speedup_vs_cpu")
        cells = [
            row["workload"], row["route"], Text(row["status"], style=STATUS_STYLE.get(row["status"], "")),
            _step(row), _rate(row.get("samples_per_s")), f"{speedup:.2f}x" if speedup else "-",
        ]
        if not compact:
            first = row.get("time_to_first_step_s")
            losses = f"{row['first_loss']:.3g}→{row['last_loss']:.3g}" if row.get("last_loss") is not None else "-"
            cells += [_bytes(row.get("peak_memory_bytes")), f"{first:.2f} s" if first is not None else "-", losses]
        table.add_row(*cells)
    return table


def problems(report: dict[str, Any]) -> list[str]:
    """One line per route or workload that could not be timed, saying why."""
    lines = []
    seen_routes = set()
    for route in report["routes"]:
        if route["status"] != "ok":
            seen_routes.add(route["route"])
            lines.append(f"{route['route']}: {route['status']}: {route['detail']}")
    for row in report["results"]:
        if row["status"] != "ok" and row["route"] not in seen_routes:
            lines.append(f"{row['route']} / {row['workload']}: {row['status']}: {row['detail']}")
    return lines


def summary_lines(report: dict[str, Any]) -> list[str]:
    """Per route: how it compares with the CPU, as geometric mean over the workloads timed on both."""
    by_route: dict[str, list[float]] = {}
    for row in report["results"]:
        if row["status"] == "ok" and row.get("speedup_vs_cpu") and row["route"] != "cpu":
            by_route.setdefault(row["route"], []).append(row["speedup_vs_cpu"])
    lines = []
    for route, factors in by_route.items():
        product = 1.0
        for f in factors:
            product *= f
        mean = product ** (1 / len(factors))
        lines.append(f"{route}: {mean:.2f}x the CPU's speed (geometric mean over {len(factors)} workloads)")
    return lines
