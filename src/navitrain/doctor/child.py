"""Run a fact-gathering snippet in a child Python process with a timeout.

Importing a broken ROCm torch, or asking a broken Vulkan driver for adapters, can segfault, abort or
hang. In a child that is a row in the report ("crashed: Memory access fault by GPU ..."), not the end of
the doctor. The child prints its result as one JSON line after MARKER; a child may print several
(a partial result first), and the last complete one wins.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass

from navitrain._child import how_it_ended, kill_group, last_line, with_package_on_path

MARKER = "NAVITRAIN-FACT "
_STDERR_TAIL = 4000


@dataclass
class ChildResult:
    status: str            # "ok", "timeout", "crashed" (no result, or died after a partial one), "error"
    data: dict | None      # the last JSON object the child printed after MARKER
    returncode: int | None
    stderr: str            # the tail of stderr
    error: str | None = None

    @property
    def partial(self) -> bool:
        return self.data is not None and self.status != "ok"


def run_python(code: str, timeout: float, env: dict[str, str] | None = None) -> ChildResult:
    """Run `code` with this interpreter; navitrain is importable in it even from a source checkout."""
    child_env = with_package_on_path(dict(os.environ if env is None else env))
    child_env.setdefault("PYTHONFAULTHANDLER", "1")  # a segfault leaves a Python traceback on stderr
    status, stdout, stderr, returncode, error = run_command([sys.executable, "-c", code], timeout, child_env)
    data = _last_result(stdout)
    if status == "ok" and data is None:
        return ChildResult("crashed", None, 0, stderr, "the child printed no result")
    return ChildResult(status, data, returncode, stderr, error)


def run_command(
    argv: list[str], timeout: float, env: dict[str, str] | None = None
) -> tuple[str, str, str, int | None, str | None]:
    """(status, stdout, stderr tail, returncode, error) of a command run with a timeout; never raises."""
    try:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
            start_new_session=True,
        )
    except (OSError, ValueError) as exc:
        return "error", "", "", None, f"could not start {argv[0]}: {exc}"
    timed_out = False
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        kill_group(proc)
        out, err = proc.communicate()
    stdout = out.decode("utf-8", "replace")
    stderr = err.decode("utf-8", "replace")[-_STDERR_TAIL:]
    if timed_out:
        return "timeout", stdout, stderr, None, f"no answer within {timeout:g} s"
    if proc.returncode != 0:
        return "crashed", stdout, stderr, proc.returncode, _describe_exit(proc.returncode, stderr)
    return "ok", stdout, stderr, 0, None


def _last_result(stdout: str) -> dict | None:
    for line in reversed(stdout.splitlines()):
        if line.startswith(MARKER):
            try:
                value = json.loads(line[len(MARKER):])
            except ValueError:
                continue
            if isinstance(value, dict):
                return value
    return None


def _describe_exit(returncode: int, stderr: str) -> str:
    what = how_it_ended(returncode, "exited with status {code}")
    last = last_line(stderr)
    return f"{what}: {last}" if last else what
