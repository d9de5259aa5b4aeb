"""`navitrain probe`: run operator cases on every route in crash-isolated children and report the matrix."""
from __future__ import annotations

from typing import Optional

import typer

from navitrain.cli._output import console, err_console, fail, print_json

FORMATS = ("table", "md", "json")


def _split(values: list[str] | None) -> list[str]:
    """Accept both `--route cpu --route wgpu` and `--route cpu,wgpu`."""
    out: list[str] = []
    for value in values or []:
        out += [v.strip() for v in value.split(",") if v.strip()]
    return list(dict.fromkeys(out))


def _routes(values: list[str] | None) -> list[str]:
    from navitrain.routes import registry

    known = registry.names()
    routes = _split(values) or known
    for name in routes:
        if name not in known:
            fail(f"unknown route {name!r} in --route; known routes: {', '.join(known)}")
    return routes


def _cases(files: list[str] | None, patterns: list[str] | None, essential_only: bool):
    from navitrain.probe import cases as catalogue
    from navitrain.probe.runner import list_cases_in_file

    if files:
        found = []
        for file in files:
            try:
                found += list_cases_in_file(file)
            except ValueError as exc:
                fail(str(exc))
    else:
        found = catalogue.load_catalogue()
    if essential_only:
        found = [c for c in found if c.essential]
    selected = catalogue.select(found, patterns)
    if not selected:
        fail(f"no case matches --case {' '.join(patterns or [])!r}"
             + ("" if not patterns else f"; cases: {', '.join(c.name for c in found)}"))
    return selected


def _base_env(env: list[str] | None) -> dict[str, str]:
    from navitrain.probe.envs import parse_env_options

    try:
        return parse_env_options(env or [])
    except ValueError as exc:
        fail(str(exc))


def _environments(base: dict[str, str], matrix: bool, facts: dict) -> list[tuple[dict[str, str], str]]:
    from navitrain.probe.envs import env_matrix

    if not matrix:
        return [(base, "as given" if base else "the environment as it is")]
    return [({**base, **extra}, why) for extra, why in env_matrix(facts)]


def _render(results, fmt: str, header: str) -> None:
    from navitrain.probe import report

    if fmt == "json":
        print_json(report.render_json(results))
    elif fmt == "md":
        typer.echo(report.render_markdown(results, header=header), nl=False)
    else:
        report.render_table(results, console, title=header)


def register(app: typer.Typer) -> None:
    @app.command()
    def probe(
        route: Optional[list[str]] = typer.Option(
            None, "--route", "-r", help="Routes to probe (repeat or comma-separate: native,nomiopen,wgpu,cpu). "
            "Default: every route; the absent ones show as unavailable."),
        env: Optional[list[str]] = typer.Option(
            None, "--env", "-e", help="NAME=VALUE set in every probe child (repeatable); NAME= unsets it."),
        env_matrix: bool = typer.Option(
            False, "--env-matrix", help="Run the cases under each environment that matters for this GPU side "
            "by side (AMD: HSA_OVERRIDE_GFX_VERSION=10.3.0 / 10.1.0, and MIOPEN_DEBUG_* switches)."),
        timeout: Optional[float] = typer.Option(
            None, "--timeout", help="Seconds one case may run before it counts as a hang (default "
            "NAVITRAIN_PROBE_TIMEOUT, 60)."),
        cases_file: Optional[list[str]] = typer.Option(
            None, "--cases", help="Run the cases defined in this Python file (navitrain.probe.case decorator) "
            "instead of the catalogue; repeatable."),
        case: Optional[list[str]] = typer.Option(
            None, "--case", "-k", help="Only cases whose name matches this shell pattern (repeatable), e.g. 'conv*'."),
        essential: bool = typer.Option(False, "--essential", help="Only the essential cases navitrain.device() uses."),
        jobs: Optional[int] = typer.Option(None, "--jobs", "-j", help="Children run at once (default min(2, cores))."),
        seed: Optional[int] = typer.Option(
            None, "--seed", help="Input seed (default: fresh each run; shown in --json)."),
        report_only: bool = typer.Option(
            False, "--report", help="Print the stored results for this machine; run nothing."),
        fmt: str = typer.Option(
            "table", "--format", "-f", help="Output format: table (a coloured matrix), md (Markdown) or json."),
        as_json: bool = typer.Option(False, "--json", help="Same as --format json."),
        list_cases: bool = typer.Option(False, "--list", help="List the cases and exit."),
        image: Optional[list[str]] = typer.Option(
            None, "--image", help="Run the cases inside this container image (repeatable: images side by side), "
            "e.g. rocm/pytorch:TAG, with the GPU passed in; the image must already be pulled."),
        runtime: Optional[str] = typer.Option(
            None, "--runtime",
            help="Container runtime for --image: docker or podman (default: whichever is installed)."),
    ) -> None:
        """Run each operator case (copies, math, matmul, convolutions, norms, attention, optimisers,
        autocast, short training runs) in its own child process on each route, compare it with the CPU,
        and report pass / mismatch / error / gpu-fault / crash / hang / unavailable. Results are stored
        per machine fingerprint; navitrain.device() uses them."""
        fmt = "json" if as_json else fmt.lower()
        from navitrain import cache_files  # a damaged or unwritable store: which file, what was done, the fix

        cache_files.show_with(lambda message: err_console.print(f"warning: {message}", style="yellow", markup=False,
                                                                highlight=False, soft_wrap=True))
        if fmt not in FORMATS:
            fail(f"--format must be one of {', '.join(FORMATS)} (got {fmt!r})")
        from navitrain.probe.runner import check_seed, check_timeout

        try:  # the same checks the runner makes, up front: a bad value must not fail every case
            if timeout is not None:
                check_timeout(timeout, "--timeout")
            if seed is not None:
                check_seed(seed, "--seed")
        except ValueError as exc:
            fail(str(exc))
        if jobs is not None and jobs < 1:
            fail(f"--jobs must be at least 1 (got {jobs})")
        routes = _routes(route)
        base_env = _base_env(env)
        selected = _cases(cases_file, case, essential)
        if list_cases:
            rows = [{"name": c.name, "group": c.group, "essential": c.essential} for c in selected]
            if fmt == "json":
                print_json(rows)
            else:
                for row in rows:
                    console.print(f"{row['name']:<28} {row['group']:<12} {'essential' if row['essential'] else ''}",
                                  highlight=False)
            return

        from navitrain.probe import fingerprint as fingerprints
        from navitrain.probe import report, session, store

        if image:  # the catalogue inside containers (navitrain.probe.containers)
            if cases_file or report_only:
                fail("--image runs the catalogue in containers: it cannot be combined with --cases or --report")
            from navitrain.cli import _probe_images

            facts = fingerprints.current().facts if env_matrix else {}  # the matrix depends on the host's GPU
            envs = [e for e, _ in _environments(base_env, env_matrix, facts)]
            raise typer.Exit(_probe_images.run(image, runtime, selected, routes, envs, fmt, timeout, seed))

        fp = fingerprints.current()
        header = f"navitrain probe: {fp.summary()} (fingerprint {fp.id})"
        if report_only:
            names = {c.name for c in selected} if (case or essential or cases_file) else None
            results = [r for r in store.latest_results(fp, routes=routes)
                       if names is None or r.case in names]
            if not results and fmt != "json":
                err_console.print(f"no stored probe results for this machine (fingerprint {fp.id}); "
                                  "run `navitrain probe` first")
                return
            _render(report.ordered(results, routes, [c.name for c in selected]), fmt, header)
            return

        environments = _environments(base_env, env_matrix, fp.facts)
        envs = [e for e, _ in environments]
        if fmt != "json":
            for e, why in environments:
                if e or len(environments) > 1:
                    err_console.print(f"[dim]environment {' '.join(f'{k}={v}' for k, v in e.items()) or '(as is)'}:"
                                      f" {why}[/]", highlight=False)
        total = len(selected) * len(routes) * len(envs)
        if fmt == "json":
            run = session.run(selected, routes, envs, jobs=jobs, timeout=timeout, seed=seed, fingerprint=fp)
        else:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                          TimeElapsedColumn(), console=err_console, transient=True) as bar:
                task = bar.add_task("probing", total=total)

                def advance(result) -> None:
                    bar.update(task, advance=1,
                               description=f"{report.column_label(result)}: {result.case} {result.outcome}")

                run = session.run(selected, routes, envs, jobs=jobs, timeout=timeout, seed=seed, fingerprint=fp,
                                  on_result=advance)
        _render(report.ordered(run.results, routes, [c.name for c in selected]), fmt, header)
        if run.interrupted:
            err_console.print(f"[yellow]interrupted[/]: {len(run.results)} of {total} results kept (stored)")
            raise typer.Exit(130)
