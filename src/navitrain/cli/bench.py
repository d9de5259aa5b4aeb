"""`navitrain bench`: train standard workloads on every route and report what each route is worth."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from navitrain.cli._output import console, err_console, fail, print_json


def _split(values: list[str] | None) -> list[str]:
    """Accept both `--route cpu --route wgpu` and `--route cpu,wgpu`."""
    out: list[str] = []
    for value in values or []:
        out += [v.strip() for v in value.split(",") if v.strip()]
    return list(dict.fromkeys(out))


def run_and_report(*, routes: list[str], workloads: list[str] | None, quick: bool, steps: int | None,
                   warmup: int | None, seed: int, timeout: float, as_json: bool, plot: Path | None,
                   save: bool, compact: bool = False, tiny: bool = False, budget: float | None = None) -> dict:
    """Run the bench with a progress bar (not with --json), print the table, store and plot.
    Shared by `navitrain bench` and `navitrain run`. Returns the report dict (with "stored" and "plot")."""
    from navitrain.bench import report as render
    from navitrain.bench import runner, storage
    from navitrain.bench.progress import BenchProgress

    size = "tiny" if tiny else "standard"
    plan = runner.plan_for(quick, size)
    per_route = len(workloads or runner.DEFAULT_WORKLOADS) * ((steps or plan["steps"]) +
                                                              (plan["warmup"] if warmup is None else warmup))
    kwargs = dict(size=size, quick=quick, steps=steps, warmup=warmup, budget_s=budget, seed=seed, timeout=timeout)
    try:
        if as_json:
            result = runner.run_bench(routes, workloads, **kwargs)
        else:
            with BenchProgress(routes, per_route, console=console) as progress:
                result = runner.run_bench(routes, workloads, on_event=progress.on_event, **kwargs)
    except ValueError as exc:
        fail(str(exc))
    data = result.to_dict()
    data["changed_since_stored"] = storage.changes_since_stored(data)  # read before this run is stored
    data["stored"] = storage.save(data) if save else {"saved": 0, "note": "not stored (--no-save)"}
    data["plot"] = None
    if plot is not None:
        from navitrain.bench.plot import plot_report

        data["plot"] = str(plot_report(data, plot))
    if not as_json:
        from rich.markup import escape  # details quote stderr and name modes in [brackets]: not markup

        console.print(render.results_table(data, compact=compact))
        for line in render.summary_lines(data):
            console.print(f"  {escape(line)}")
        for line in render.batch_lines(data) + render.noise_lines(data) + render.change_lines(data):
            console.print(f"  [bold yellow]{escape(line)}[/]")
        for line in render.problems(data):
            console.print(f"  [yellow]not timed[/] {escape(line)}")
        if data["stored"].get("note"):
            console.print(f"  [dim]{escape(data['stored']['note'])}[/]")
        if data["plot"]:
            console.print(f"  chart: {escape(data['plot'])}")
    return data


def register(app: typer.Typer) -> None:
    @app.command()
    def bench(
        route: Optional[list[str]] = typer.Option(
            None, "--route", "-r", help="Routes to bench (repeat or comma-separate). Default: the routes "
            "whose probes passed here, else every available route."),
        workload: Optional[list[str]] = typer.Option(
            None, "--workload", "-w", help="Workloads to train: mlp, resnet18 and gpt by default; unet and mnist "
            "on request (repeat or comma-separate)."),
        quick: bool = typer.Option(False, "--quick", help="The standard models, timed for a few seconds per route "
                                   "and mode after warm-up (--budget) instead of a fixed 30 steps."),
        tiny: bool = typer.Option(False, "--tiny", help="Toy sizes and 6 steps, for CI on a software Vulkan "
                                  "adapter: they measure Python per op, and navitrain.device() never uses them."),
        budget: Optional[float] = typer.Option(None, "--budget", help="With --quick: seconds of timed steps per "
                                               "route and mode (default 3; at least 3 steps are always timed)."),
        steps: Optional[int] = typer.Option(None, "--steps", help="Timed steps per workload (at most that many with "
                                            "--quick; default 50 quick, 30 full, 3 quick --tiny)."),
        warmup: Optional[int] = typer.Option(None, "--warmup", help="Untimed warm-up steps (default 2 quick, 5 full)."),
        seed: int = typer.Option(0, "--seed", help="Seed for weights and data (the same on every route)."),
        timeout: float = typer.Option(
            300.0, "--timeout", help="Seconds a route may go without finishing a step before it is killed."),
        plot: Optional[Path] = typer.Option(None, "--plot", help="Write a bar chart of samples/s to FILE.png or "
                                            "FILE.svg; --plot alone writes navitrain-bench.png here."),
        save: bool = typer.Option(
            True, "--save/--no-save", help="Store the results with this machine's probe fingerprint."),
        as_json: bool = typer.Option(False, "--json", help="Print the full report as JSON."),
    ) -> None:
        """Train standard models on synthetic data on each route and report what each route is worth.

        The workloads are an MLP (mlp), a CIFAR ResNet-18 (resnet18) and a GPT-style decoder (gpt) by
        default, and a small U-Net (unet) and an MNIST CNN (mnist) with --workload, at the sizes people train
        (--tiny for CI). Each row gives step time, samples/s, speed-up over the CPU, whether the host or the
        device set the pace, peak memory and time to first step; wgpu has a row per mode (eager, graph) and
        its best mode is its score. A route whose loss does not fall, or whose first loss disagrees with the
        CPU's, is not timed."""
        from navitrain.bench import route_choice
        from navitrain.bench import workloads as known

        if steps is not None and steps < 2:
            fail(f"--steps must be at least 2 (got {steps}): a single step shows no loss trend")
        if warmup is not None and warmup < 0:
            fail(f"--warmup must not be negative (got {warmup})")
        if budget is not None and not (budget > 0 and budget < float("inf")):
            fail(f"--budget must be a positive number of seconds (got {budget})")
        if budget is not None and not quick:
            fail("--budget applies to --quick runs; a full run times a fixed number of steps (--steps)")
        from navitrain.probe.runner import check_seed, check_timeout

        try:  # nan passed `timeout <= 0`, and then no step ever timed out (the run hung)
            check_timeout(timeout, "--timeout")
            check_seed(seed, "--seed")
        except ValueError as exc:
            fail(str(exc))
        if plot is not None and plot.suffix.lower() not in (".png", ".svg"):
            fail(f"--plot must name a .png or .svg file (got {str(plot)!r})")
        names = _split(workload) or None
        for name in names or []:
            if name not in known.names():
                fail(f"unknown workload {name!r} in --workload; known: {', '.join(known.names())}")
        routes = _split(route)
        if routes:
            try:
                route_choice.check_names(routes)
            except ValueError as exc:
                fail(f"--route: {exc}")
            why = "named with --route"
        else:
            routes, why = route_choice.default_routes()
            if not as_json:
                from rich.markup import escape

                err_console.print(f"[dim]routes: {', '.join(routes)} ({escape(why)})[/]")
        data = run_and_report(routes=routes, workloads=names, quick=quick, steps=steps, warmup=warmup,
                              seed=seed, timeout=timeout, as_json=as_json, plot=plot, save=save, tiny=tiny,
                              budget=budget)
        data["routes_why"] = why
        if as_json:
            print_json(data)
