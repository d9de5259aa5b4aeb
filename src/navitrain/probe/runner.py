"""Running probe cases in child processes: start, time out, kill, classify.

Each task (one case on one route under one environment) runs in a fresh Python interpreter (a new
process, never a fork of this one) in its own session, so on a timeout the whole process group (the
child and anything it started) is killed. The parent never imports torch and never touches the GPU;
it reads the child's result file, its phase file and the tail of its output, and turns them into one
of the outcome words in navitrain.probe.results. A small pool (`jobs`) keeps several children busy;
Ctrl-C kills the running children and returns the results so far.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from navitrain.probe.results import (CRASH, ERROR, GPU_FAULT, HANG, UNAVAILABLE, ProbeResult, env_label)

_OUTPUT_TAIL = 64 * 1024
_KILL_WAIT_S = 5.0   # how long to wait for a killed child to go (one stuck in the GPU driver may not)
_POLL_S = 0.05


@dataclass(frozen=True)
class CaseRef:
    """What the parent needs to know about a case (the function itself stays in the child)."""
    name: str
    source: str
    essential: bool = False
    group: str = "custom"


@dataclass(frozen=True)
class Task:
    case: str
    source: str
    route: str
    env: tuple[tuple[str, str], ...] = ()
    essential: bool = False

    @staticmethod
    def make(case, route: str, env: dict[str, str] | None = None) -> "Task":
        return Task(case.name, case.source, route, tuple(sorted((env or {}).items())), case.essential)


@dataclass
class RunReport:
    results: list[ProbeResult] = field(default_factory=list)
    interrupted: bool = False
    seed: int = 0


def default_jobs() -> int:
    return max(1, min(2, os.cpu_count() or 1))


def _package_parent() -> str:
    import navitrain

    return str(Path(navitrain.__file__).resolve().parent.parent)


def child_environment(extra: dict[str, str], threads: int | None = None) -> dict[str, str]:
    """This process's environment plus the task's; an empty value removes the variable. `threads`
    caps each child's CPU threads (unless the user set OMP_NUM_THREADS) so parallel children share
    the cores instead of fighting over them."""
    env = dict(os.environ)
    if threads and "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(threads)
    for name, value in extra.items():
        if value == "":
            env.pop(name, None)
        else:
            env[name] = value
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_package_parent(), env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"  # whatever the child printed before dying is in the log
    return env


def _popen(argv: list[str], env: dict[str, str], log) -> subprocess.Popen:
    kwargs: dict = {"stdin": subprocess.DEVNULL, "stdout": log, "stderr": subprocess.STDOUT, "env": env}
    if os.name == "posix":
        kwargs["start_new_session"] = True  # its own process group: killable as a whole
    else:  # pragma: no cover - Windows
        kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP
    return subprocess.Popen(argv, **kwargs)


def kill_group(proc: subprocess.Popen) -> None:
    try:
        if os.name == "posix":
            os.killpg(proc.pid, signal.SIGKILL)
        else:  # pragma: no cover
            proc.kill()
    except (ProcessLookupError, PermissionError, OSError):
        pass


def reap(proc: subprocess.Popen) -> bool:
    """Wait briefly for a killed child; False when it would not die (stuck in the kernel)."""
    try:
        proc.wait(timeout=_KILL_WAIT_S)
        return True
    except subprocess.TimeoutExpired:
        return False


def _tail(path: Path) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - _OUTPUT_TAIL))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def signal_name(returncode: int) -> str:
    try:
        return signal.Signals(-returncode).name
    except ValueError:
        return f"signal {-returncode}"


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


def _modes(text: str, prefer_fault: bool):
    """(mode id or None, first matching line) from the explain classifier."""
    from navitrain.doctor import logs

    matches = [m for m in logs.classify(text) if m.id != "unknown"]
    if prefer_fault:
        matches.sort(key=lambda m: m.id not in logs.GPU_FAULT_MODES)
    if not matches:
        return None, ""
    return matches[0].id, (matches[0].lines[0] if matches[0].lines else "")


def _is_gpu_fault(text: str) -> bool:
    from navitrain.doctor import logs

    return logs.is_gpu_fault(text)


def classify(returncode: int | None, result: dict | None, output: str, phase: str, timed_out: bool,
             timeout: float, stuck: bool = False) -> tuple[str, str, str | None]:
    """(outcome, detail, mode) from what a finished (or killed) child left behind."""
    where = f" during {phase}" if phase else ""
    if timed_out and result is not None:
        # The answer was written, then the process hung on its way out (a GPU runtime's teardown):
        # the answer stands, with a note.
        outcome, detail, mode = classify(0, result, output, phase, False, timeout)
        return outcome, f"{detail} (then hung on exit and was killed)", mode
    if timed_out:
        mode, _ = _modes(output, prefer_fault=True)
        detail = f"no result after {timeout:g} s{where}; killed the child and its process group"
        if stuck:
            detail += " (it did not die: stuck in the kernel, probably the GPU driver)"
        return HANG, detail, mode
    if result is not None:
        outcome, detail = result.get("outcome", ERROR), result.get("detail", "")
        if outcome != ERROR:
            return outcome, detail, result.get("mode")
        text = f"{detail}\n{output}"
        if _is_gpu_fault(text):
            mode, line = _modes(text, prefer_fault=True)
            return GPU_FAULT, detail or line, mode
        mode, _ = _modes(text, prefer_fault=False)
        return ERROR, detail, mode
    how = f"killed by {signal_name(returncode)}" if returncode is not None and returncode < 0 else \
        f"exited with code {returncode} without a result"
    if _is_gpu_fault(output):
        mode, line = _modes(output, prefer_fault=True)
        return GPU_FAULT, f"{line} ({how}{where})" if line else f"{how}{where}", mode
    mode, _ = _modes(output, prefer_fault=False)
    last = last_line(output)
    return CRASH, f"{how}{where}" + (f": {last}" if last and returncode and returncode > 0 else ""), mode


@dataclass
class _Running:
    task: Task
    proc: subprocess.Popen
    directory: Path
    log: object
    started: float
    deadline: float


def run_tasks(tasks: Iterable[Task], *, jobs: int | None = None, timeout: float | None = None,
              seed: int | None = None, on_result: Callable[[ProbeResult], None] | None = None) -> RunReport:
    """Run every task in a child; return the results (in completion order) and whether Ctrl-C stopped it.

    After a child reports its route unavailable, the remaining tasks of that route and environment are
    recorded as unavailable without starting more children.
    """
    from navitrain import _env

    jobs = jobs or default_jobs()
    timeout = float(timeout if timeout is not None else _env.integer(_env.PROBE_TIMEOUT))
    report = RunReport(seed=seed if seed is not None else random.randrange(1, 2**31))
    threads = max(1, (os.cpu_count() or 1) // jobs)
    pending = deque(tasks)
    running: list[_Running] = []
    dead_routes: dict[tuple[str, str], str] = {}
    workdir = Path(tempfile.mkdtemp(prefix="navitrain-probe-"))
    counter = 0

    def emit(result: ProbeResult) -> None:
        report.results.append(result)
        if on_result is not None:
            on_result(result)

    def start(task: Task) -> _Running:
        nonlocal counter
        counter += 1
        directory = workdir / f"{counter:05d}"
        directory.mkdir()
        job = {"case": task.case, "source": task.source, "route": task.route, "seed": report.seed,
               "result": str(directory / "result.json"), "phase": str(directory / "phase")}
        (directory / "job.json").write_text(json.dumps(job))
        log = open(directory / "output.log", "wb")
        argv = [sys.executable, "-X", "faulthandler", "-m", "navitrain.probe.worker", "run", str(directory / "job.json")]
        proc = _popen(argv, child_environment(dict(task.env), threads), log)
        now = time.monotonic()
        return _Running(task, proc, directory, log, now, now + timeout)

    def finish(run: _Running, timed_out: bool, stuck: bool = False) -> ProbeResult:
        run.log.close()
        raw = _read(run.directory / "result.json")
        try:
            result = json.loads(raw) if raw else None
        except ValueError:
            result = None
        output = _tail(run.directory / "output.log")
        phase = _read(run.directory / "phase") or ""
        outcome, detail, mode = classify(run.proc.returncode, result, output, phase, timed_out, timeout, stuck)
        result = result or {}
        return ProbeResult(
            case=run.task.case, route=run.task.route, env=dict(run.task.env), outcome=outcome, detail=detail,
            mode=mode, max_abs=result.get("max_abs"), max_rel=result.get("max_rel"),
            seconds=round(time.monotonic() - run.started, 3), route_info=result.get("route_info", ""),
            essential=run.task.essential, created=time.time(),
            extra={"seed": report.seed, **({"route_unavailable": True} if result.get("route_unavailable") else {})})

    try:
        while pending or running:
            while pending and len(running) < jobs:
                task = pending.popleft()
                reason = dead_routes.get((task.route, env_label(dict(task.env))))
                if reason is not None:
                    emit(ProbeResult(task.case, task.route, dict(task.env), UNAVAILABLE, reason, seconds=0.0,
                                     route_info=reason, essential=task.essential, created=time.time(),
                                     extra={"seed": report.seed, "route_unavailable": True}))
                    continue
                running.append(start(task))
            time.sleep(_POLL_S)
            now = time.monotonic()
            for run in list(running):
                if run.proc.poll() is None and now < run.deadline:
                    continue
                timed_out = run.proc.returncode is None
                kill_group(run.proc)  # on a timeout, and to take any grandchildren with it otherwise
                stuck = timed_out and not reap(run.proc)
                running.remove(run)
                result = finish(run, timed_out, stuck)
                if result.extra.get("route_unavailable"):
                    dead_routes[(result.route, result.env_label)] = result.detail
                emit(result)
    except KeyboardInterrupt:
        report.interrupted = True
        for run in running:
            kill_group(run.proc)
        for run in running:
            reap(run.proc)
            run.log.close()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return report


def list_cases_in_file(path: str, timeout: float = 120.0) -> list[CaseRef]:
    """The cases a user's case file defines, found by importing it in a child (it is user code and may
    import torch). Raises ValueError with a clear message when the file is missing or fails."""
    file = Path(path).expanduser().resolve()
    if not file.is_file():
        raise ValueError(f"case file {path} does not exist")
    with tempfile.TemporaryDirectory(prefix="navitrain-cases-") as tmp:
        out = Path(tmp) / "cases.json"
        with open(Path(tmp) / "output.log", "wb") as log:
            proc = _popen([sys.executable, "-m", "navitrain.probe.worker", "list", str(file), str(out)],
                          child_environment({}), log)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                kill_group(proc)
                reap(proc)
                raise ValueError(f"importing case file {path} took longer than {timeout:g} s") from None
        raw = _read(out)
        if raw is None:
            raise ValueError(f"importing case file {path} crashed: {last_line(_tail(Path(tmp) / 'output.log'))}")
    data = json.loads(raw)
    if "error" in data:
        raise ValueError(f"case file {path} failed to import: {data['error']}")
    if not data["cases"]:
        raise ValueError(f"case file {path} defines no cases (use the navitrain.probe.case decorator)")
    return [CaseRef(c["name"], c["source"], bool(c.get("essential")), c.get("group", "custom")) for c in data["cases"]]
