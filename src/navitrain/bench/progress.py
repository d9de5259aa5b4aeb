"""A rich progress bar fed by the bench children's events: one bar per route, the current workload and
its latest loss beside it."""
from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


class BenchProgress:
    """Context manager; pass `on_event` to run_bench."""

    def __init__(self, routes: list[str], steps_per_route: int, console: Console | None = None):
        self.progress = Progress(
            TextColumn("[bold]{task.fields[route]:>9}[/]"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[what]}"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        )
        self._steps_per_route = steps_per_route
        self._tasks = {r: self.progress.add_task("", total=steps_per_route, route=r, what="waiting")
                       for r in routes}
        self._done_in_workload: dict[str, int] = {}
        self._total_in_workload: dict[str, int] = {}

    def __enter__(self) -> "BenchProgress":
        self.progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.__exit__(*exc)

    def _bar(self, task):
        return next(t for t in self.progress.tasks if t.id == task)

    def on_event(self, event: dict[str, Any]) -> None:
        route = event.get("route")
        task = self._tasks.get(route)
        if task is None:
            return
        kind = event["kind"]
        if kind == "route":
            what = "started" if event["status"] == "ok" else f"[red]{event['status']}[/]"
            self.progress.update(task, what=what)
        elif kind == "start":
            self._done_in_workload[route] = 0
            self._total_in_workload[route] = event["total"]
            # routes timed in several modes (wgpu eager and graph) run more steps than the first estimate
            bar = self._bar(task)
            if bar.completed + event["total"] > (bar.total or 0):
                self.progress.update(task, total=bar.completed + event["total"])
            mode = f" ({event['mode']})" if event.get("mode") and event.get("modes", 1) > 1 else ""
            self.progress.update(task, what=f"{event['workload']}{mode}: first step")
        elif kind == "step":
            self._done_in_workload[route] = event["done"]
            self.progress.update(task, advance=1,
                                 what=f"{event['workload']}: loss {event['loss']:.3f}")
        elif kind == "result":
            # a workload that failed part-way still moves the bar to its end
            left = self._total_in_workload.get(route, 0) - self._done_in_workload.get(route, 0)
            if left > 0:
                self.progress.update(task, advance=left)
            self._done_in_workload[route] = self._total_in_workload.get(route, 0)
        elif kind == "done":
            what = "done" if event["status"] == "ok" else f"[red]{event['status']}[/]"
            self.progress.update(task, completed=self._bar(task).total, what=what)
