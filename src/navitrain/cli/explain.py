"""`navitrain explain [FILE|-]`: which known failure mode a crash log shows, and what to do about it."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from navitrain.cli._output import console, err_console, fail, print_json


def _read_log(source: str) -> str:
    """The end of the log (doctor/tail.py: bounded for files, pipes, `<(cmd)`, devices and stdin)."""
    from navitrain.doctor.tail import KEEP_BYTES, STREAM_CAP, read_tail

    if source == "-":
        if sys.stdin is None or sys.stdin.isatty():
            fail("no log given: pass a file, or pipe one in (`navitrain explain - < crash.log`)")
        if not hasattr(sys.stdin, "buffer"):  # a text stream without bytes underneath (embedding)
            return sys.stdin.read(KEEP_BYTES)
        tail = read_tail(sys.stdin.buffer)
    else:
        path = Path(source)
        if not path.exists():
            fail(f"log file {source} does not exist")
        if path.is_dir():
            fail(f"{source} is a directory, not a log file")
        try:
            with path.open("rb") as handle:
                tail = read_tail(handle)
        except OSError as exc:
            fail(f"cannot read {source}: {exc.strerror or exc}")
    if tail.unfinished:
        err_console.print(f"[yellow]note:[/] the input did not end after {STREAM_CAP >> 20} MiB; classifying "
                          f"the last {KEEP_BYTES >> 20} MiB read", highlight=False)
    return tail.data.decode("utf-8", errors="replace")


def register(app: typer.Typer) -> None:
    @app.command()
    def explain(
        log: str = typer.Argument(
            "-", metavar="FILE", help="The log to classify; '-' or no FILE reads standard input."),
        json_out: bool = typer.Option(False, "--json", help='Print {"modes": [...]} as JSON.'),
        root: Path = typer.Option(
            Path("/"), "--root", help="Read this machine's files under this directory to combine with the log."),
        overrides: Optional[Path] = typer.Option(None, "--overrides", help="JSON file of facts to use instead of "
                                                 "examining them (as for `navitrain doctor`)."),
        no_facts: bool = typer.Option(
            False, "--no-facts", help="Classify the log alone, without this machine's facts."),
    ) -> None:
        """Classify a crash log (stderr, dmesg, a traceback) into known failure modes, with the fix."""
        if not no_facts and not root.is_dir():
            fail(f"--root {root} is not a directory")
        from navitrain.cli.doctor import load_overrides

        facts_override = load_overrides(overrides) if overrides is not None else None
        text = _read_log(log)
        from navitrain.doctor.context import add_context
        from navitrain.doctor.logs import classify

        modes = classify(text)
        if not no_facts:
            from navitrain.doctor import collect

            # Files and environment only: explaining a log must stay fast and must not start torch.
            add_context(modes, collect(root, facts_override, probe=False))
        if json_out:
            print_json({"schema": "navitrain.explain/1", "modes": [m.to_dict() for m in modes]})
            return
        _render(modes)


def _render(modes) -> None:
    from rich.markup import escape

    from navitrain.doctor.printable import printable

    for m in modes:
        colour = "yellow" if m.id == "unknown" else ("cyan" if m.id == "cpu-fallback-warning" else "bold red")
        console.rule(f"[{colour}]{escape(m.id)}[/] — {escape(m.title)}", align="left")
        for line in m.lines:
            console.print(f"  [dim]│[/] {escape(printable(line))}")  # a log line is shown, never obeyed
        console.print(f"[bold]Why:[/] {escape(m.why)}")
        console.print(f"[bold]Fix:[/] {escape(m.fix)}")
        for note in m.context:
            console.print(f"[bold magenta]This machine:[/] {escape(note)}")
        for src in m.sources:
            console.print(f"  [dim blue]{escape(src)}[/]")
