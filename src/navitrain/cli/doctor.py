"""`navitrain doctor`: what is wrong with this machine's GPU training stack, and which route to use."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from navitrain.cli._output import console, err_console, fail, print_json, read_json_file


def load_overrides(path: Path) -> dict:
    """A JSON object of facts from a file; a clear exit-2 error for anything else."""
    data = read_json_file(path, "overrides file")
    if not isinstance(data, dict):
        fail(f"overrides file {path} must hold a JSON object of facts (e.g. {{\"torch\": {{...}}}})")
    return data


def register(app: typer.Typer) -> None:
    @app.command()
    def doctor(
        json_out: bool = typer.Option(False, "--json", help="Print the report as JSON: the "
                                      "recommendation, every finding and every fact (schema navitrain.doctor/1)."),
        root: Path = typer.Option(Path("/"), "--root", help="Read machine files under this directory instead of / "
                                  "(for fake trees and copies of another machine's /sys, /etc, /opt)."),
        overrides: Optional[Path] = typer.Option(None, "--overrides", help="JSON file of facts to use instead of "
                                                 "examining them (e.g. {\"torch\": {...}, \"env\": {...}})."),
        no_probe: bool = typer.Option(False, "--no-probe", help="Do not start the torch, Vulkan and rocminfo "
                                      "child processes."),
        timeout: float = typer.Option(90.0, "--timeout", min=1.0, help="Seconds each child process may take."),
    ) -> None:
        """Inspect GPUs, drivers, ROCm, PyTorch and Vulkan; explain what is wrong and recommend a route."""
        if not root.is_dir():
            fail(f"--root {root} is not a directory")
        facts_override = load_overrides(overrides) if overrides is not None else None
        from navitrain.doctor import collect, diagnose
        from navitrain.doctor.report import document, render

        try:
            probe = False if no_probe else None
            if json_out:
                facts = collect(root, facts_override, probe=probe, timeout=timeout)
            else:
                with console.status("examining the machine (torch and Vulkan in child processes)…"):
                    facts = collect(root, facts_override, probe=probe, timeout=timeout)
            findings = diagnose(facts)
            doc = document(facts, findings)
        except Exception as exc:  # the doctor itself broke: say so plainly, exit 1
            err_console.print(f"[bold red]navitrain doctor failed:[/] {type(exc).__name__}: {exc} "
                              "(please report this)")
            raise typer.Exit(1)
        if json_out:
            print_json(doc)
        else:
            render(doc, console)
        broke = any(f.id == "doctor-internal-error" for f in findings) or bool(facts.get("problems"))
        raise typer.Exit(1 if broke else 0)
