"""`navitrain run`: the main job. Diagnose this machine, pick the fastest working route, train on it, and
show what each route is worth here (a quick bench)."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional

import typer

from navitrain.cli._output import console, err_console, fail, print_json

TOP_FINDINGS = 5


def _doctor_summary(as_json: bool) -> dict[str, Any]:
    """The doctor's most important findings; a broken doctor is reported, never fatal."""
    try:
        from navitrain import doctor

        facts = doctor.collect(root="/")
        findings = list(doctor.diagnose(facts))
    except Exception as exc:
        if not as_json:
            console.print(f"[yellow]doctor unavailable:[/] {type(exc).__name__}: {exc}")
        return {"error": f"{type(exc).__name__}: {exc}", "findings": []}
    rows = [_finding_dict(f) for f in findings]
    if not as_json:
        console.rule("[bold]1. this machine (navitrain doctor)")
        if not rows:
            console.print("no findings: the stack looks healthy")
        for row in rows[:TOP_FINDINGS]:
            console.print(f"[{_SEVERITY_STYLE.get(row['severity'], '')}]{row['severity']:>7}[/] {row['title']}")
            if row.get("fix"):
                console.print(f"         [dim]fix: {row['fix']}[/]")
        if len(rows) > TOP_FINDINGS:
            console.print(f"[dim]… {len(rows) - TOP_FINDINGS} more: navitrain doctor[/]")
    return {"findings": rows[:TOP_FINDINGS], "total": len(rows)}


_SEVERITY_STYLE = {"error": "bold red", "critical": "bold red", "warning": "yellow", "info": "cyan", "ok": "green"}


def _finding_dict(finding: Any) -> dict[str, Any]:
    if hasattr(finding, "to_dict"):
        data = dict(finding.to_dict())
    elif isinstance(finding, dict):
        data = dict(finding)
    else:
        data = dict(vars(finding))
    data.setdefault("severity", "info")
    data.setdefault("title", data.get("summary") or data.get("id") or str(finding))
    data["severity"] = str(getattr(data["severity"], "value", data["severity"]))
    return data


class _Capture(logging.Handler):
    """Keeps what navitrain.device() logs about its choice, to show it as the 'why'."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def _choose_device(as_json: bool) -> tuple[Any, dict[str, Any]]:
    import navitrain

    capture = _Capture()
    logger = logging.getLogger("navitrain")
    logger.addHandler(capture)
    previous = logger.level
    logger.setLevel(min(previous or logging.INFO, logging.INFO))
    try:
        device = navitrain.device()
    except Exception as exc:
        fail(f"navitrain.device() found no working route: {exc}", code=1)
    finally:
        logger.removeHandler(capture)
        logger.setLevel(previous)
    info = {"device": str(device), "why": capture.lines}
    if not as_json:
        console.rule("[bold]2. the route (navitrain.device())")
        console.print(f"training on [bold]{device}[/]")
        for line in capture.lines:
            console.print(f"  [dim]{line}[/]")
    return device, info


def _train(device, steps: int, as_json: bool) -> dict[str, Any]:
    from navitrain.bench import demo

    if as_json:
        return demo.train(device, steps=steps)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console.rule("[bold]3. a short real training run")
    with Progress(TextColumn("training"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[loss]}"),
                  TimeElapsedColumn(), console=console) as progress:
        task = progress.add_task("train", total=steps, loss="")

        def on_step(done: int, total: int, loss: float) -> None:
            progress.update(task, completed=done, loss=f"loss {loss:.3f}")

        result = demo.train(device, steps=steps, on_step=on_step)
    console.print(f"{result['model']} on {result['device']}: loss {result['loss_start']:.3f} → "
                  f"{result['loss_end']:.3f}; held-out accuracy {result['held_out_accuracy']:.0%} "
                  f"(chance {result['chance_accuracy']:.0%}); {result['samples_per_s']:.0f} samples/s")
    return result


def register(app: typer.Typer) -> None:
    @app.command()
    def run(
        steps: int = typer.Option(40, "--steps", help="Training steps of the demo run."),
        bench: bool = typer.Option(True, "--bench/--no-bench", help="Finish with `navitrain bench --quick`."),
        plot: Optional[Path] = typer.Option(None, "--plot", help="Also draw the bench chart to FILE.png or FILE.svg."),
        as_json: bool = typer.Option(False, "--json", help="Print everything as one JSON object."),
    ) -> None:
        """Diagnose this machine, choose the fastest working route with navitrain.device(), train a small
        CNN on it, and compare the routes with a quick bench."""
        if steps < 2 or steps > 10_000:
            fail(f"--steps must be between 2 and 10000 (got {steps})")
        if plot is not None and plot.suffix.lower() not in (".png", ".svg"):
            fail(f"--plot must name a .png or .svg file (got {str(plot)!r})")
        out: dict[str, Any] = {"doctor": _doctor_summary(as_json)}
        device, out["device"] = _choose_device(as_json)
        try:
            out["training"] = _train(device, steps, as_json)
        except Exception as exc:
            out["training"] = {"error": f"{type(exc).__name__}: {exc}"}
            if not as_json:
                err_console.print(f"[bold red]training on {device} failed:[/] {type(exc).__name__}: {exc}")
        if bench:
            from navitrain.bench import route_choice
            from navitrain.cli.bench import run_and_report

            routes, why = route_choice.default_routes()
            if not as_json:
                console.rule("[bold]4. what each route is worth here (navitrain bench --quick)")
                console.print(f"[dim]routes: {', '.join(routes)} ({why})[/]")
            out["bench"] = run_and_report(routes=routes, workloads=None, quick=True, steps=None, warmup=None,
                                          seed=0, timeout=300.0, as_json=as_json, plot=plot, save=True,
                                          compact=True)
            out["bench"]["routes_why"] = why
        if as_json:
            print_json(out)
        elif "error" in out["training"]:
            raise typer.Exit(1)
