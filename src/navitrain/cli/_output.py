"""Shared output helpers for commands: one console, JSON printing, clear error exits."""
from __future__ import annotations

import json
import sys
from typing import Any, NoReturn

import typer
from rich.console import Console

console = Console()
err_console = Console(stderr=True)


def print_json(data: Any) -> None:
    """Machine-readable output: plain JSON on stdout, nothing else."""
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def fail(message: str, code: int = 2) -> NoReturn:
    """A clear one-line error naming the problem, then exit (2 = bad input)."""
    err_console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code)
