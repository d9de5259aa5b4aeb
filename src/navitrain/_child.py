"""What every caller that runs a child process needs (doctor facts, probe cases and fingerprints, bench
routes): the child finds this navitrain even from a source checkout, a hung child dies with everything
it started, and a death is described the same way everywhere.

Standard library only: a probe child's lifeline watcher imports this right after fork, before torch.
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path


def package_parent() -> Path:
    """The directory that holds the navitrain package (a checkout's src/ or site-packages)."""
    return Path(__file__).resolve().parent.parent


def with_package_on_path(env: dict[str, str]) -> dict[str, str]:
    """`env` with package_parent() first on PYTHONPATH, so the child imports this navitrain."""
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(package_parent()), env.get("PYTHONPATH")) if p)
    return env


def kill_process_group(group: int) -> None:
    """SIGKILL a process group; nothing when it is gone or not ours."""
    with contextlib.suppress(OSError):
        os.killpg(group, signal.SIGKILL)


def kill_group(proc: subprocess.Popen) -> None:
    """Kill a child started with start_new_session=True and whatever it started in its group (it leads
    its own group, so the group id is its pid); the child alone where groups do not exist or fail."""
    if os.name == "posix":
        try:
            os.killpg(proc.pid, signal.SIGKILL)
            return
        except (ProcessLookupError, PermissionError, OSError):
            pass
    with contextlib.suppress(OSError):
        proc.kill()


def signal_name(returncode: int) -> str:
    """"SIGSEGV" for a returncode of -11."""
    try:
        return signal.Signals(-returncode).name
    except ValueError:
        return f"signal {-returncode}"


def how_it_ended(returncode: int | None, exited: str) -> str:
    """"killed by SIGSEGV" for a death by signal, else `exited` with {code} filled in: callers word a
    plain exit for their context ("exited with code {code} without a result")."""
    if returncode is not None and returncode < 0:
        return f"killed by {signal_name(returncode)}"
    return exited.format(code=returncode)


def last_line(text: str) -> str:
    """The last non-blank line of a child's output (stripped, at most 300 characters): usually the error."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""
