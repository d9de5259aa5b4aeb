"""navitrain's temp dirs: each names its owner process, so one left behind by a process that died (kill -9,
a power cut, os._exit) is removed by the next probe run, and no live process's dir is ever touched."""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from pathlib import Path

PREFIXES = ("navitrain-probe-", "navitrain-cases-", "navitrain-xdg-")  # xdg: adapters.prepare_instance
OWNER_FILE = "owner"
# A dir without an owner file was made by an older navitrain (or is being made right now): removed
# only once it is clearly abandoned.
_UNOWNED_AGE_S = 3600.0


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), to tell a reused pid from the owner."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(") ", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(pid: int, started: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: a process of another user has that pid; the start time tells
        pass
    return started is None or _start_time(pid) in (None, started)


def make(prefix: str) -> Path:
    """A fresh temp dir whose owner file names this process."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    (path / OWNER_FILE).write_text(f"{os.getpid()} {_start_time(os.getpid()) or ''}\n")
    return path


def remove_abandoned(root: str | None = None) -> list[Path]:
    """Remove the probe temp dirs (under `root`, default the temp dir) whose owner process is gone."""
    removed = []
    base = Path(root or tempfile.gettempdir())
    with contextlib.suppress(OSError):
        for path in base.iterdir():
            if not path.name.startswith(PREFIXES) or not path.is_dir() or path.is_symlink():
                continue
            abandoned = False
            try:
                fields = (path / OWNER_FILE).read_text().split()
                abandoned = not _alive(int(fields[0]), fields[1] if len(fields) > 1 else None)
            except (OSError, ValueError, IndexError):
                with contextlib.suppress(OSError):
                    abandoned = time.time() - path.stat().st_mtime > _UNOWNED_AGE_S
            if abandoned:
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
    return removed
