"""The files navitrain keeps in its cache directory, and the rule they follow: a damaged or unwritable
file on disk never stops training.

A damaged file is moved aside (renamed `<name>.damaged-<UTC time>`, never deleted: it may hold
results worth reading, or a bug worth reporting) and rebuilt. A location that cannot be written (a
read-only directory, a cache directory that cannot be created) means working in memory for this
process. Either is said once per file per process, naming the file and the fix, on the
`navitrain.cache` logger. Users: the probe store (navitrain.probe.store, which also holds bench
results) and the GEMM tuning cache (navitrain.wgpu.kernels.gemm_tuning).
"""
from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

log = logging.getLogger("navitrain.cache")

FIX = "make that directory writable, or set NAVITRAIN_CACHE_DIR to a writable directory"

_said: set = set()
_said_lock = threading.Lock()


def path(name: str) -> Path:
    """`name` in navitrain's cache directory, which is created here. Raises OSError (naming the
    directory) when it cannot be created: a file in the way, no permission, a read-only disk."""
    from navitrain import _env

    return _env.cache_dir() / name


def say_once(key, message: str) -> bool:
    """Log `message` as a warning the first time `key` is seen in this process; True if it was said."""
    with _said_lock:
        if key in _said:
            return False
        _said.add(key)
    log.warning("%s", message)
    return True


def move_aside(file: Path, companions: tuple[str, ...] = ()) -> Path:
    """Rename a damaged file to `<name>.damaged-<UTC time>` beside it and return the new path;
    `companions` are suffixes of files that belong to it (SQLite's "-wal", "-shm"), moved with it so
    a fresh file never picks them up. Raises OSError when the directory does not allow the rename."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    target = file.with_name(f"{file.name}.damaged-{stamp}")
    n = 1
    while target.exists():  # two damaged files in one second (or a second process): never overwrite
        target = file.with_name(f"{file.name}.damaged-{stamp}-{n}")
        n += 1
    os.rename(file, target)
    for suffix in companions:
        try:
            os.rename(f"{file}{suffix}", f"{target}{suffix}")
        except FileNotFoundError:
            pass
        except OSError as exc:  # (the directory allowed the main rename, so this is unexpected)
            log.warning("could not move %s%s aside: %s", file, suffix, exc)
    return target


class _Echo(logging.Handler):
    def __init__(self, show):
        super().__init__(logging.INFO)
        self.show = show

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.show(record.getMessage())
        except Exception:  # a warning that cannot be shown must not become the error
            self.handleError(record)


def show_with(show) -> None:
    """Send these warnings (and the store's, on navitrain.cache.*) to `show(message)`, a command's
    stderr console, rather than to logging's bare last-resort output. Idempotent."""
    for handler in log.handlers:
        if isinstance(handler, _Echo):
            handler.show = show
            return
    log.addHandler(_Echo(show))
