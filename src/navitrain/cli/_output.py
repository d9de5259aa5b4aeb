"""Shared output helpers for commands: one console, JSON printing, clear error exits."""
from __future__ import annotations

import json
import sys
from typing import Any, NoReturn

import typer
from rich.console import Console, ConsoleDimensions

# Width for output that goes to a file or a pipe (`scripts/run.sh > out.txt`, CI logs): rich would use
# 80 columns there (or the width of whatever terminal the shell runs in) and cut table cells short with
# "…"; a log has no width, so it gets one wide enough for every table. COLUMNS still wins when set.
PIPED_WIDTH = 160


class _Console(Console):
    """A rich Console that, when not writing to a terminal, is PIPED_WIDTH columns wide."""

    @property
    def size(self) -> ConsoleDimensions:
        size = super().size
        if self._width is None and not self.is_terminal and not self._environ.get("COLUMNS", "").isdigit():
            return ConsoleDimensions(PIPED_WIDTH, size.height)
        return size

    @size.setter
    def size(self, new_size: tuple[int, int]) -> None:
        Console.size.fset(self, new_size)


console = _Console()
err_console = _Console(stderr=True)


def print_json(data: Any) -> None:
    """Machine-readable output: plain JSON on stdout, nothing else."""
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def fail(message: str, code: int = 2) -> NoReturn:
    """A clear one-line error naming the problem, then exit (2 = bad input)."""
    err_console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code)


def read_json_file(path, what: str) -> Any:
    """A JSON file the user named (`what`: "report", "overrides file"), or a clear exit-2 error."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        fail(f"cannot read {what} {path}: {exc.strerror or exc}")
    except ValueError as exc:
        fail(f"{what} {path} is not valid JSON: {exc}")
