"""`navitrain report`: doctor, the probe and a quick bench in one run, written as one Markdown file to
post and one JSON file to compare; `--compare A.json B.json` shows two reports side by side."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Tuple

import typer

from navitrain.cli._output import console, err_console, fail, print_json, read_json_file

SIZES = ("tiny", "standard")


def _outputs(out: Path) -> tuple[Path, Path]:
    """-o FILE: FILE.md and FILE.json (a .md or .json suffix on FILE is dropped first)."""
    base = out.with_suffix("") if out.suffix.lower() in (".md", ".json") else out
    return base.with_name(base.name + ".md"), base.with_name(base.name + ".json")


def load_report(path: Path) -> dict:
    """A report JSON file checked against the schema; a clear exit-2 error for anything else."""
    import jsonschema

    from navitrain.report import schema

    data = read_json_file(path, "report")
    if not isinstance(data, dict) or not str(data.get("schema", "")).startswith("navitrain.report/"):
        fail(f"{path} is not a navitrain report (no \"schema\": \"navitrain.report/1\")")
    try:
        jsonschema.validate(data, schema())
    except jsonschema.ValidationError as exc:
        fail(f"{path} does not match the report schema {data.get('schema')}: {exc.message}")
    return data


def _compare(a: Path, b: Path, as_json: bool, differences: bool) -> None:
    from navitrain.report import compare

    rows = compare.compare(load_report(a), load_report(b))
    if as_json:
        print_json({"a": str(a), "b": str(b), "rows": rows})
    else:
        typer.echo(compare.render_markdown(rows, a.name, b.name, differences_only=differences), nl=False)


def register(app: typer.Typer) -> None:
    @app.command()
    def report(
        quick: bool = typer.Option(False, "--quick", help="Probe only the essential cases (minutes, not tens of "
                                   "minutes); the bench is time-bounded either way."),
        out: Path = typer.Option(Path("navitrain-report"), "--output", "-o", help="Write FILE.md and FILE.json "
                                 "(default navitrain-report.md and navitrain-report.json)."),
        size: str = typer.Option("standard", "--size", help="Bench workload size: standard (the models people "
                                 "train; what says a GPU's worth) or tiny (seconds; overhead only)."),
        no_bench: bool = typer.Option(False, "--no-bench", help="Leave the bench out."),
        compare: Optional[Tuple[Path, Path]] = typer.Option(
            None, "--compare", help="Show two report JSON files side by side instead of running anything.",
            metavar="A.json B.json"),
        differences: bool = typer.Option(False, "--differences", help="With --compare: only the rows that differ."),
        as_json: bool = typer.Option(False, "--json", help="Print the report (or the comparison) as JSON on stdout."),
    ) -> None:
        """Run doctor, the probe and a quick bench, and write one Markdown file to post (a forum, an issue)
        and one JSON file (schema navitrain.report/1) to compare. Nothing private goes in: no host or
        user name, home paths, serial numbers or MAC addresses."""
        if compare is not None:
            _compare(compare[0], compare[1], as_json, differences)
            return
        if size not in SIZES:
            fail(f"--size must be one of {', '.join(SIZES)} (got {size!r})")
        md_path, json_path = _outputs(out)
        if not md_path.parent.is_dir():
            fail(f"--output: the directory {md_path.parent} does not exist")
        from navitrain._version import __version__
        from navitrain.report import build, gather, markdown, privacy

        def say(message: str) -> None:
            if not as_json:
                err_console.print(f"[dim]{message}[/]", highlight=False)

        say("doctor: examining the machine…")
        facts, doc = gather.doctor()
        say("the wgpu adapter's limits…")
        adapter = gather.adapter()
        say(f"probe: {'essential' if quick else 'every'} case on every route (crash-isolated children)…")
        probe_results = gather.probe(quick)
        bench = None
        if not no_bench:
            routes = gather.bench_routes(doc)
            say(f"bench: {size} workloads on {', '.join(routes)} (time-bounded)…")
            bench = gather.bench(routes, size)
        data = build(facts=facts, doctor_doc=doc, probe_results=probe_results,
                     probe_cases="essential" if quick else "full", bench=bench, adapter=adapter, quick=quick,
                     version=__version__, secrets=privacy.local_secrets())
        try:
            md_path.write_text(markdown.render(data), encoding="utf-8")
            json_path.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
        except OSError as exc:
            fail(f"cannot write the report: {exc}", code=1)
        if as_json:
            print_json(data)
        else:
            console.print(f"wrote {md_path} (to post) and {json_path} (to compare: navitrain report --compare "
                          f"A.json B.json)", highlight=False)
