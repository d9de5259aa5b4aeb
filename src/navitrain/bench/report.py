"""Rendering a bench report (BenchReport.to_dict()) for people: a rich table and the reasons behind
every row that could not be timed. The JSON form is the dict itself."""
from __future__ import annotations

from typing import Any

from rich.table import Table
from rich.text import Text

from navitrain.bench import noise, units

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


def _step(row: dict[str, Any]) -> Text:
    if row.get("median_ms") is None:
        return Text("-")
    text = Text(units.duration(row["median_ms"], (row.get("iqr_ms") or 0.0) / 2))
    if row.get("noisy"):
        text.append(" noisy", style="bold yellow")
    return text


def _speedup(row: dict[str, Any]) -> Text:
    speedup = row.get("speedup_vs_cpu")
    if not speedup:
        return Text("-")
    text = Text(units.ratio(speedup))
    if row.get("speedup_reliable") is False and row["route"] != "cpu":
        text.append(" unreliable", style="bold yellow")
    return text


def _host(row: dict[str, Any]) -> Text:
    """Whether Python (dispatch, recording) or the device set the pace of the step."""
    share = row.get("host_share")
    if row.get("host_bound") is None or share is None:
        return Text("-")
    if row["host_bound"]:
        return Text(f"host-bound {share:.0%}", style="yellow")
    return Text(f"device {1 - share:.0%}")


def _label(row: dict[str, Any]) -> Text:
    text = Text(row.get("label") or row["route"])
    if row.get("best_mode") and (row.get("label") or row["route"]) != row["route"]:
        text.append(" *", style="bold")
    return text


def plan_title(report: dict[str, Any]) -> str:
    """'standard sizes, quick: timed steps for 3 s per route and mode (at least 3, at most 50)'."""
    from navitrain.bench import budget

    plan = budget.describe(report["steps"], report.get("budget_s"))
    return f"{report['size']} sizes, {report.get('plan', 'quick')}: {report['warmup']} warm-up + {plan}"


def results_table(report: dict[str, Any], *, compact: bool = False) -> Table:
    """One row per route and workload. `compact` drops the columns `navitrain run` does not need."""
    titles = dict.fromkeys(f"{r['workload']} = {r['title']}" for r in report["results"])
    kinds = dict.fromkeys(f"{r['route']}: {r['memory_kind']}" for r in report["results"]
                          if r.get("peak_memory_bytes") is not None)
    caption = "; ".join(titles)
    if any(r.get("best_mode") and r.get("label") not in (None, "", r["route"]) for r in report["results"]):
        caption += "\n* the route's fastest mode for the workload: its score"
    if any(r.get("host_bound") is not None for r in report["results"]):
        caption += ("\nhost: share of the step the device waited on Python (host-bound) or on itself (device); "
                    "'-' where the device runs each op as it is called")
    if not report.get("representative", report["size"] == "standard"):
        caption += ("\ntiny sizes measure Python per op, not the device: navitrain.device() never chooses "
                    "from them")
    if kinds and not compact:
        caption += "\nmemory: " + "; ".join(kinds)
    table = Table(title=f"navitrain bench ({plan_title(report)})", title_justify="left",
                  caption=caption, caption_justify="left")
    columns = ["workload", "route", "status", "step time ±IQR/2", "samples/s", "vs CPU", "host"]
    if not compact:
        columns += ["memory", "1st step", "loss"]
    for index, name in enumerate(columns):
        # names and statuses stay whole; on a console too narrow for the table a number wraps at its
        # space or folds, but no cell is ever cut short with an ellipsis (a log must keep every value)
        table.add_column(name, justify="left" if index < 3 else "right", no_wrap=index < 3,
                         min_width=len(name) if index < 3 else None, overflow="fold")
    order = {name: i for i, name in enumerate(dict.fromkeys(r["workload"] for r in report["results"]))}
    for row in sorted(report["results"], key=lambda r: (order[r["workload"]], -(r.get("samples_per_s") or 0))):
        batch = f" b{row['batch_size']}" if row.get("batch_note") else ""
        cells = [
            row["workload"] + batch, _label(row), Text(row["status"], style=STATUS_STYLE.get(row["status"], "")),
            _step(row), units.rate(row.get("samples_per_s")), _speedup(row), _host(row),
        ]
        if not compact:
            first = row.get("time_to_first_step_s")
            losses = (f"{units.plain(row['first_loss'])}→{units.plain(row['last_loss'])}"
                      if row.get("last_loss") is not None and row.get("first_loss") is not None else "-")
            cells += [_bytes(row.get("peak_memory_bytes")), units.duration(None if first is None else first * 1e3),
                      losses]
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
            # the label names the mode where a route has several ("wgpu (graph) / gpt: error: ...")
            lines.append(f"{row.get('label') or row['route']} / {row['workload']}: {row['status']}: {row['detail']}")
    return lines


def _scores(report: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Per route other than the CPU, its score rows (best mode per workload) that have a speed-up."""
    by_route: dict[str, list[dict[str, Any]]] = {}
    for row in report["results"]:
        if row["status"] == "ok" and row.get("speedup_vs_cpu") and row["route"] != "cpu" \
                and row.get("best_mode", True):
            by_route.setdefault(row["route"], []).append(row)
    return by_route


def _at(row: dict[str, Any]) -> str:
    """'resnet18 b128 (graph, host-bound)': the workload, its batch and how the step ran."""
    how = [row["mode"]] if row.get("mode") and row.get("label") not in (None, "", row["route"]) else []
    if row.get("host_bound"):
        how.append("host-bound")
    return f"{row['workload']} b{row['batch_size']}" + (f" ({', '.join(how)})" if how else "")


def summary_lines(report: dict[str, Any]) -> list[str]:
    """One sentence per route: its measured speed-up over the CPU on each workload at these sizes (its
    best mode, named), then the geometric mean."""
    lines = []
    sizes = "standard sizes" if report.get("representative", report["size"] == "standard") else \
        f"{report['size']} sizes (Python per op, not what a GPU is worth)"
    for route, rows in _scores(report).items():
        product = 1.0
        for row in rows:
            product *= row["speedup_vs_cpu"]
        mean = product ** (1 / len(rows))
        each = [f"{units.ratio(row['speedup_vs_cpu'])}" + (" the CPU's speed" if i == 0 else "") + f" on {_at(row)}"
                for i, row in enumerate(rows)]
        line = f"{route}: {', '.join(each)}, at {sizes}"
        if len(rows) > 1:
            line += f" (geometric mean {units.ratio(mean)})"
        if noise.machine_busy(report.get("other_load")):
            line += "; not reliable: the machine was busy (see below)"
        elif unreliable := [row["workload"] for row in rows if row.get("speedup_reliable") is False]:
            line += f"; not reliable: {', '.join(unreliable)} measured noisy (see below)"
        lines.append(line)
    return lines


def noise_lines(report: dict[str, Any]) -> list[str]:
    """Which rows were too spread out for their ratios to mean anything (one line each), whether the
    machine was too busy for any ratio to mean anything, and what the measured load says about why;
    empty when every row was steady on a quiet machine."""
    noisy = [row for row in report["results"] if row.get("noisy")]
    other_load = report.get("other_load")
    lines = []
    if noisy:
        lines.append(f"noisy: the speed-ups of these rows are not reliable (the middle half of their steps spans "
                     f"more than {noise.NOISY_SPREAD:.0%} of the median step time):")
        lines += [f"  {row['route']} / {row['workload']}: {units.duration(row['median_ms'], row['iqr_ms'] / 2)}, "
                  f"spread {row['relative_spread']:.0%}" for row in noisy]
    if noise.machine_busy(other_load):
        lines.append(f"busy machine: {noise.cause_sentence(other_load)}. Every time above competed with that "
                     "load, steady or not, so no speed-up here is reliable.")
    elif noisy:
        lines.append(f"why: {noise.cause_sentence(other_load)}.")
    return lines


def change_lines(report: dict[str, Any]) -> list[str]:
    """Rows whose step time moved far from the last stored bench here (storage.changes_since_stored):
    the same step on the same machine should not, so one of the two runs was disturbed."""
    changes = report.get("changed_since_stored") or []
    if not changes:
        return []
    lines = ["changed: these step times are far from the last stored bench of this machine and software:"]
    for change in changes:
        factor = change["factor"]
        how = f"{units.plain(factor)}x slower" if factor > 1 else f"{units.plain(1 / factor)}x faster"
        lines.append(f"  {change['route']} / {change['workload']}: {units.duration(change['median_ms'])} now, "
                     f"{units.duration(change['stored_ms'])} then ({how})")
    lines.append("why: not the software (same fingerprint); other load during one of the runs, or changed CPU "
                 "clock or power settings, are the usual causes: compare ratios only within one run.")
    return lines


def batch_lines(report: dict[str, Any]) -> list[str]:
    """Rows timed at a smaller batch than the workload's because memory forced it (measure.py)."""
    return [f"smaller batch: {row.get('label') or row['route']} / {row['workload']}: {row['batch_note']}"
            for row in report["results"] if row.get("batch_note")]
