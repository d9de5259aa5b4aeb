"""Probe children die with the probe: a lifeline pipe, a mark on every process of a child's tree, and
signal handlers that turn SIGTERM/SIGHUP into a clean stop.

A probe child runs in its own session (so a timeout can kill its whole process group), which also
means nothing kills it when the parent dies. Three mechanisms close that gap:

- The lifeline: the parent holds the write end of a pipe whose read end only the child has. At start
  the child forks a tiny watcher (before it imports torch) that blocks reading it. The parent writes
  one byte when it is done with the child (the watcher then exits quietly); end of file without that
  byte means the parent died, even by SIGKILL, and the watcher kills the child's process group and
  every marked process, and removes the parent's temp dir. A forked watcher (not a thread) acts even
  when the child holds the GIL inside a stuck driver call. It works on Linux and macOS alike.
- The mark: every child gets `_NAVITRAIN_PROBE_TREE=<run token>/<n>` in its environment, which its own
  children inherit, also those that call setsid() and leave the process group; on Linux they are
  found through /proc/<pid>/environ and killed (`kill_marked`).
- `stop_on_signals()`: in the main thread SIGTERM and SIGHUP raise `Terminated`, so the runner kills its
  children and removes its temp dir on the same path as Ctrl-C, and then dies of the same signal.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import threading
from pathlib import Path
from typing import Iterator

from navitrain._child import kill_process_group

TREE_VAR = "_NAVITRAIN_PROBE_TREE"          # the mark (a leading underscore: internal, not a setting)
LIFELINE_VAR = "_NAVITRAIN_PROBE_LIFELINE"  # "<read fd>:<parent temp dir>" for the child's watcher
_DONE = b"x"


class Terminated(BaseException):
    """SIGTERM or SIGHUP arrived while children ran (a BaseException, like KeyboardInterrupt, so that
    no `except Exception` in between swallows it)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


# --- parent side -----------------------------------------------------------------------------------

class Lifeline:
    """One pipe per child: pass `env()` and `fds()` to the child, call `started()` after the spawn and
    `release()` once the child is finished with (killed or exited)."""

    def __init__(self, tempdir: Path | None):
        self._read, self._write = os.pipe()  # both non-inheritable; only the child is passed the read end
        self._tempdir = tempdir

    def env(self) -> dict[str, str]:
        return {LIFELINE_VAR: f"{self._read}:{self._tempdir or ''}"}

    def fds(self) -> tuple[int, ...]:
        return (self._read,)

    def started(self) -> None:
        _close(self._read)
        self._read = -1

    def release(self) -> None:
        """The parent is done with this child: its watcher exits without killing anything."""
        if self._write >= 0:
            with contextlib.suppress(OSError):
                os.write(self._write, _DONE)
            _close(self._write)
            self._write = -1
        if self._read >= 0:
            self.started()


def _close(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)


def _environ(pid: str) -> list[bytes]:
    """A process's environment entries (b"NAME=value"); none when it is gone or not ours to read."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return f.read().split(b"\0")
    except OSError:
        return []


def kill_marked(mark: str, *, prefix: bool = False) -> int:
    """SIGKILL every process (but this one) whose environment holds TREE_VAR=mark (or a value starting
    with mark, with prefix=True): a probe child's descendants, also those that left its process group.
    Linux only (/proc); elsewhere it finds nothing. Returns how many it signalled."""
    entry = f"{TREE_VAR}={mark}".encode()
    killed = 0
    try:
        pids = [p for p in os.listdir("/proc") if p.isdigit() and int(p) != os.getpid()]
    except OSError:
        return 0
    for pid in pids:
        entries = _environ(pid)
        marked = any(e.startswith(entry) for e in entries) if prefix else entry in entries
        if marked:
            with contextlib.suppress(OSError):
                os.kill(int(pid), signal.SIGKILL)
                killed += 1
    return killed


@contextlib.contextmanager
def stop_on_signals() -> Iterator[list[int]]:
    """SIGTERM and SIGHUP raise Terminated inside the block (main thread only: elsewhere Python cannot
    install handlers, and the children's watchers still clean up when this process dies). Yields a
    list that holds the signal number once one arrived. The previous handlers are restored on exit."""
    caught: list[int] = []
    if threading.current_thread() is not threading.main_thread() or os.name != "posix":
        yield caught
        return

    def handler(signum, _frame):
        caught.append(signum)
        if len(caught) == 1:  # a second signal must not cut the clean-up the first one started
            raise Terminated(signum)

    # A signal this process was started ignoring (SIGHUP under nohup) stays ignored: the user asked for that.
    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGHUP)
                if signal.getsignal(sig) is not signal.SIG_IGN}
    try:
        yield caught
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def redeliver(signum: int) -> None:
    """After cleaning up, let the signal do what it would have done (by default: end the process, with
    the exit status a parent expects from it)."""
    os.kill(os.getpid(), signum)


# --- child side ------------------------------------------------------------------------------------

def watch_parent() -> None:
    """In a probe child, first thing: fork the watcher described above. No-op without a lifeline."""
    value = os.environ.pop(LIFELINE_VAR, None)
    if not value or os.name != "posix":
        return
    fd_text, _, tempdir = value.partition(":")
    try:
        fd = int(fd_text)
        os.fstat(fd)
    except (ValueError, OSError):
        return
    group = os.getpgrp()
    if os.fork() != 0:
        os.close(fd)  # the child itself does not need the pipe
        return
    try:  # the watcher: a copy of the child before any heavy import; it never returns
        with contextlib.suppress(OSError):
            os.setpgid(0, 0)  # out of the child's group, so killing the group does not end the watcher
        try:
            data = os.read(fd, 1)
        except OSError:
            data = b""
        if data != _DONE:  # end of file: the parent is gone
            kill_process_group(group)
            mark = os.environ.get(TREE_VAR)
            if mark:
                kill_marked(mark.rsplit("/", 1)[0] + "/", prefix=True)  # every child of that run
            if tempdir:
                shutil.rmtree(tempdir, ignore_errors=True)
    finally:
        os._exit(0)
