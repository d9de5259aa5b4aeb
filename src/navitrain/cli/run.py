"""`navitrain run`: the main job. Diagnose this machine, pick the fastest working route, train on it, and
show what each route is worth here (a quick bench)."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional

import typer
from rich.markup import escape

from navitrain.cli._output import console, err_console, fail, print_json

TOP_FINDINGS = 5


def _doctor_summary(as_json: bool) -> dict[str, Any]:
    """The doctor's verdict and most important findings; a broken doctor is reported, never fatal."""
    try:
        from navitrain import doctor
        from navitrain.doctor import report

        facts = doctor.collect(root="/")
        doc = report.document(facts, doctor.diagnose(facts))
    except Exception as exc:
        if not as_json:
            console.print(f"[yellow]doctor unavailable:[/] {type(exc).__name__}: {exc}")
        return {"error": f"{type(exc).__name__}: {exc}", "findings": []}
    findings = [f for f in doc["findings"] if not f.get("route")]
    summary = {"recommendation": doc["recommendation"], "summary": doc["summary"],
               "findings": findings[:TOP_FINDINGS], "total": len(findings)}
    if not as_json:
        console.rule("[bold]1. this machine (navitrain doctor)")
        for f in findings[:TOP_FINDINGS]:
            style = _SEVERITY_STYLE.get(f["severity"], "")
            console.print(f"[{style}]{f['severity']:>7}[/] {escape(f['title'])}")
            if f.get("fix") and f["severity"] in ("error", "warning"):
                console.print(f"         [dim]fix: {escape(f['fix'])}[/]")
        if len(findings) > TOP_FINDINGS:
            console.print(f"[dim]        and {len(findings) - TOP_FINDINGS} more: navitrain doctor[/]")
        if doc["recommendation"]:
            console.print(f"[bold]doctor recommends:[/] {escape(doc['recommendation']['title'])}")
    return summary


_SEVERITY_STYLE = {"error": "bold red", "warning": "yellow", "info": "cyan", "ok": "green"}


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
        # device() logs one sentence that names the route and the reason for every route it passed
        # over: print that once (it starts "training on ..."), and a bare line only if nothing was logged
        for line in capture.lines or [f"training on {device}"]:
            console.print(escape(line))
    return device, info


def _train(device, steps: int, budget: float, as_json: bool) -> dict[str, Any]:
    from navitrain.bench import demo

    if as_json:
        return demo.train(device, steps=steps, max_seconds=budget)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console.rule("[bold]3. a short real training run")
    with Progress(TextColumn("training"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[loss]}"),
                  TimeElapsedColumn(), console=console) as progress:
        task = progress.add_task("train", total=steps, loss="")

        def on_step(done: int, total: int, loss: float) -> None:
            progress.update(task, completed=done, loss=f"loss {loss:.3f}")

        result = demo.train(device, steps=steps, max_seconds=budget, on_step=on_step)
    from navitrain.bench import units

    console.print(f"{result['model']} on {result['device']}: loss {result['loss_start']:.3f} → "
                  f"{result['loss_end']:.3f}; held-out accuracy {result['held_out_accuracy']:.0%} "
                  f"(chance {result['chance_accuracy']:.0%}, best possible {result['best_possible_accuracy']:.0%}: "
                  f"{result['label_noise']:.0%} of the labels replaced at random); "
                  f"{units.rate(result['samples_per_s'])} samples/s")
    if result["stopped_by_time_budget"]:
        console.print(f"[yellow]stopped after {result['steps']} of {steps} steps: the {budget:g} s budget ran out "
                      "(a slow route; --budget gives it longer)[/]")
    return result


def register(app: typer.Typer) -> None:
    @app.command()
    def run(
        steps: int = typer.Option(30, "--steps", help="Training steps of the demo run."),
        budget: float = typer.Option(
            90.0, "--budget", help="Seconds the demo run may take; it stops early on a slow route."),
        bench: bool = typer.Option(True, "--bench/--no-bench", help="Finish with `navitrain bench --quick` (standard "
                                   "sizes; tiny ones where the only GPU is a software Vulkan adapter)."),
        plot: Optional[Path] = typer.Option(None, "--plot", help="Also draw the bench chart to FILE.png or "
                                            "FILE.svg; --plot alone writes navitrain-bench.png here."),
        as_json: bool = typer.Option(False, "--json", help="Print everything as one JSON object."),
    ) -> None:
        """Diagnose this machine, choose the fastest working route with navitrain.device(), train a small
        CNN on it, and compare the routes with a quick bench."""
        if steps < 2 or steps > 10_000:
            fail(f"--steps must be between 2 and 10000 (got {steps})")
        if not budget > 0:
            fail(f"--budget must be positive (got {budget:g})")
        if plot is not None and plot.suffix.lower() not in (".png", ".svg"):
            fail(f"--plot must name a .png or .svg file (got {str(plot)!r})")
        out: dict[str, Any] = {"doctor": _doctor_summary(as_json)}
        device, out["device"] = _choose_device(as_json)
        try:
            out["training"] = _train(device, steps, budget, as_json)
        except Exception as exc:
            out["training"] = {"error": f"{type(exc).__name__}: {exc}"}
            if not as_json:
                err_console.print(f"[bold red]training on {device} failed:[/] {type(exc).__name__}: {exc}")
        if bench:
            from navitrain.bench import route_choice, run_size
            from navitrain.cli.bench import run_and_report

            # every available route, probed or not: a route that crashes is a row in the table, and
            # this is where a user first sees what each route is worth
            available = route_choice.available_routes() or {"cpu": ""}
            routes = list(available)
            why = "every available route"
            tiny, sizes_why = run_size.choose(available, run_size.wgpu_facts())
            if not as_json:
                console.rule("[bold]4. what each route is worth here (navitrain bench --quick"
                             f"{' --tiny' if tiny else ''})")
                console.print(f"[dim]routes: {', '.join(routes)} ({why})[/]")
                console.print(f"[dim]{escape(sizes_why)}[/]")
            # summary_lines then says, one sentence per route, its speed-up over the CPU at these sizes
            out["bench"] = run_and_report(routes=routes, workloads=None, quick=True, steps=None, warmup=None,
                                          seed=0, timeout=300.0, as_json=as_json, plot=plot, save=True,
                                          compact=True, tiny=tiny)
            out["bench"]["routes_why"] = why
            out["bench"]["sizes_why"] = sizes_why
        if as_json:
            print_json(out)
        elif "error" in out["training"]:
            raise typer.Exit(1)
