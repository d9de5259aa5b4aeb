"""Inside a container (`navitrain probe --image`): run catalogue cases on routes and print the results.

Runs with the image's Python and torch and navitrain's source mounted read-only on PYTHONPATH, so it
uses only the standard library and navitrain.probe's runner (no typer, rich or platformdirs in the
image). Prints one `NAVITRAIN-GPU {...}` line (which GPU device nodes the container sees) and one
`NAVITRAIN-RESULT {...}` line per result; containers.py reads them.

    python3 -m navitrain.probe.container_child '{"cases": [...], "routes": [...], "env": {...}, "timeout": 60}'
"""
from __future__ import annotations

import json
import os
import sys


def main(argv: list[str]) -> int:
    spec = json.loads(argv[0])
    print("NAVITRAIN-GPU " + json.dumps({"kfd": os.path.exists("/dev/kfd"), "dri": os.path.isdir("/dev/dri")}),
          flush=True)
    from navitrain.probe import cases as catalogue
    from navitrain.probe.runner import Task, run_tasks

    by_name = {c.name: c for c in catalogue.load_catalogue()}
    tasks = [Task.make(by_name[name], route, spec.get("env") or {})
             for route in spec["routes"] for name in spec["cases"]]

    def emit(result) -> None:
        print("NAVITRAIN-RESULT " + json.dumps(result.to_dict(), default=str), flush=True)

    report = run_tasks(tasks, timeout=spec.get("timeout"), seed=spec.get("seed"), jobs=spec.get("jobs"), on_result=emit)
    return 130 if report.interrupted else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
