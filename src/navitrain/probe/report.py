"""Rendering probe results: a coloured cases x routes matrix, Markdown for bug reports, JSON records.

Collecting and rendering are separate: everything here takes a list of ProbeResult and prints or
returns text; nothing runs probes.
"""
from __future__ import annotations

from collections import Counter

from navitrain.probe.results import FAILURES, OUTCOMES, ProbeResult

STYLES = {
    "pass": "green", "mismatch": "yellow", "error": "red", "gpu-fault": "bold white on red",
    "crash": "bold red", "hang": "bold magenta", "unavailable": "dim",
}


def ordered(results: list[ProbeResult], routes: list[str], cases: list[str]) -> list[ProbeResult]:
    """Results sorted for display: routes in the given order (fastest first), the plain environment
    before others, cases in catalogue order; anything unknown goes last in its original order."""
    route_rank = {r: i for i, r in enumerate(routes)}
    case_rank = {c: i for i, c in enumerate(cases)}
    big = len(routes) + len(cases) + len(results)
    return sorted(results, key=lambda r: (route_rank.get(r.route, big), r.env_label, case_rank.get(r.case, big)))


def column_label(result: ProbeResult) -> str:
    return f"{result.route} [{result.env_label}]" if result.env else result.route


def _columns(results: list[ProbeResult]) -> list[str]:
    return list(dict.fromkeys(column_label(r) for r in results))


def _rows(results: list[ProbeResult]) -> list[str]:
    return list(dict.fromkeys(r.case for r in results))


def _cells(results: list[ProbeResult]) -> dict[tuple[str, str], ProbeResult]:
    return {(r.case, column_label(r)): r for r in results}


def summary(results: list[ProbeResult]) -> dict[str, dict[str, int]]:
    """{column: {outcome: count}} with outcomes in their canonical order."""
    counts: dict[str, Counter] = {}
    for r in results:
        counts.setdefault(column_label(r), Counter())[r.outcome] += 1
    return {col: {o: c[o] for o in OUTCOMES if c[o]} for col, c in counts.items()}


def summary_lines(results: list[ProbeResult]) -> list[str]:
    """One line per route (and environment): `wgpu: 41 pass, 2 mismatch`; a route that is not there
    at all says why (`native: 49 unavailable (torch 2.13.0+cpu is a CPU-only build ...)`)."""
    why_absent = {column_label(r): r.detail for r in results if r.extra.get("route_unavailable")}
    lines = []
    for col, counts in summary(results).items():
        line = f"{col}: " + ", ".join(f"{n} {o}" for o, n in counts.items())
        if col in why_absent and list(counts) == ["unavailable"]:
            line += f" ({why_absent[col]})"
        lines.append(line)
    return lines


def failures(results: list[ProbeResult]) -> list[ProbeResult]:
    return [r for r in results if r.outcome in FAILURES]


def _cell_text(r: ProbeResult | None) -> str:
    if r is None:
        return ""
    return f"{r.outcome} ({r.mode})" if r.mode else r.outcome


def render_table(results: list[ProbeResult], console, title: str | None = None, details: bool = True) -> None:
    """Print the matrix (rich, coloured), the failures with their details, and the summary lines."""
    from rich.markup import escape
    from rich.table import Table

    columns, cells = _columns(results), _cells(results)
    if title:
        console.print(escape(title), style="bold", highlight=False)
    table = Table(show_lines=False, header_style="bold")
    table.add_column("case", style="bold")
    for col in columns:
        table.add_column(escape(col))
    for case in _rows(results):
        row = [escape(case)]
        for col in columns:
            r = cells.get((case, col))
            row.append(f"[{STYLES.get(r.outcome, '')}]{escape(_cell_text(r))}[/]" if r else "")
        table.add_row(*row)
    console.print(table)
    bad = failures(results)
    if details and bad:
        console.print("[bold]What failed[/]")
        for r in bad:
            mode = escape(f" [{r.mode}]") if r.mode else ""
            console.print(f"  [{STYLES[r.outcome]}]{r.outcome}[/]{mode} {escape(r.case)} on "
                          f"{escape(column_label(r))}: {escape(r.detail)}", highlight=False)
    for line in summary_lines(results):
        console.print(escape(line), highlight=False)


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(results: list[ProbeResult], header: str | None = None) -> str:
    """A Markdown report to paste into a bug report: the matrix, the failures, the summary."""
    columns, cells = _columns(results), _cells(results)
    lines = []
    if header:
        lines += [header, ""]
    lines.append("| case | " + " | ".join(_md_escape(c) for c in columns) + " |")
    lines.append("|---|" + "---|" * len(columns))
    for case in _rows(results):
        lines.append(f"| {_md_escape(case)} | " + " | ".join(_md_escape(_cell_text(cells.get((case, c))))
                                                           for c in columns) + " |")
    bad = failures(results)
    if bad:
        lines += ["", "**What failed**", ""]
        for r in bad:
            mode = f" (`{r.mode}`)" if r.mode else ""
            lines.append(f"- `{r.case}` on `{column_label(r)}`: **{r.outcome}**{mode}: {_md_escape(r.detail)}")
    lines += ["", *[f"- {line}" for line in summary_lines(results)]]
    return "\n".join(lines) + "\n"


def render_json(results: list[ProbeResult]) -> list[dict]:
    """Machine-readable records: {"case", "route", "env", "outcome", "detail", "mode"}."""
    return [r.public() for r in results]
