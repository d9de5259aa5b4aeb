"""`navitrain probe --image`: the catalogue in each container image, rendered as one matrix per image
(navitrain.probe.containers does the work)."""
from __future__ import annotations

from navitrain.cli._output import console, err_console, fail, print_json


def run(images: list[str], runtime: str | None, selected, routes: list[str], envs: list[dict[str, str]],
        fmt: str, timeout: float | None, seed: int | None) -> int:
    """Probe every image; return the exit status (0, or 1 when some image could not be probed)."""
    import typer

    from navitrain import _env
    from navitrain.probe import containers, report

    def progress(run) -> None:
        if fmt != "json":
            err_console.print(f"[dim]{run.image} {' '.join(f'{k}={v}' for k, v in run.env.items())}: "
                              f"{len(run.results)} results[/]", highlight=False)

    try:
        runs = containers.probe_images(images, [c.name for c in selected], routes, envs, runtime=runtime,
                                       timeout=timeout or _env.probe_timeout(), seed=seed, on_run=progress,
                                       save=True)
    except containers.ContainerError as exc:
        fail(str(exc), code=2 if exc.kind == "runtime-missing" else 1)
    if fmt == "json":
        print_json(containers.matrix_json(runs))
    for run in runs:
        env = " ".join(f"{k}={v}" for k, v in run.env.items())
        title = f"{run.image} ({(run.digest or 'no digest')[:19]}){' ' + env if env else ''}"
        if fmt != "json" and run.problem:
            err_console.print(f"[bold red]{title}:[/] {run.problem}", highlight=False)
        if fmt == "md" and run.results:
            typer.echo(report.render_markdown(run.results, header=title), nl=False)
        elif fmt == "table" and run.results:
            report.render_table(run.results, console, title=title)
    return 1 if any(r.problem for r in runs) else 0
