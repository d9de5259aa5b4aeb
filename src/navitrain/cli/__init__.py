"""The `navitrain` command line. Each command lives in its own module here with a `register(app)`
function; this file only assembles them. Commands parse arguments and print; the work happens in
navitrain.doctor, navitrain.probe, navitrain.bench, ... so that it is usable from Python too.
"""
from __future__ import annotations

import importlib

import typer

from navitrain._version import __version__
from navitrain.cli._command import NavitrainCommand, NavitrainGroup

COMMAND_MODULES = ("doctor", "explain", "probe", "bench", "advise", "run", "report")

app = typer.Typer(
    name="navitrain",
    help="PyTorch training on GPUs that ROCm left behind: diagnose, probe, pick the fastest route, measure.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
    cls=NavitrainGroup,
    # typer's default "rich" mode keeps every line break of a docstring as a hard break, so help text
    # written over several source lines broke mid-sentence; markdown reflows paragraphs.
    rich_markup_mode="markdown",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"navitrain {__version__}")
        raise typer.Exit()


# Commands that diagnose the environment must run whatever it holds (doctor reports malformed values).
_ENV_TOLERANT = ("doctor", "explain")


@app.callback()
def _root(
    ctx: typer.Context,
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """navitrain command line."""
    import sys

    from navitrain import _env

    # Refuse a malformed NAVITRAIN_* variable before any work (rc 2), rather than failing every probe
    # case or tracing back halfway. `--help` still works: click runs this callback before it.
    if ctx.invoked_subcommand in _ENV_TOLERANT or {"--help", "-h"} & set(sys.argv[1:]):
        return
    problems = _env.problems()
    if problems:
        from navitrain.cli._output import fail

        fail("; ".join(problems) + " (`navitrain doctor` lists every NAVITRAIN_* variable)")


for _name in COMMAND_MODULES:
    try:
        _module = importlib.import_module(f"navitrain.cli.{_name}")
    except ModuleNotFoundError as _exc:
        if _exc.name != f"navitrain.cli.{_name}":
            raise
        continue
    _module.register(app)

for _info in app.registered_commands:  # every command: flags without a type, optional-value options
    if _info.cls in (None, typer.core.TyperCommand):  # typer's default, not a class a command chose
        _info.cls = NavitrainCommand


def main() -> None:
    app()
