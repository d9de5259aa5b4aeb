"""Running probe cases in child processes: start, time out, kill, classify.

Each task (one case on one route under one environment) runs in a fresh Python interpreter (a new
process, never a fork of this one) in its own session, so on a timeout the whole process group (the
child and anything it started) is killed. The parent never imports torch and never touches the GPU;
it reads the child's result file, its phase file and the tail of its output, and turns them into one
of the outcome words in navitrain.probe.results. A small pool (`jobs`) keeps several children busy;
Ctrl-C, SIGTERM and SIGHUP kill the running children and return the results so far (lifeline.py:
children die with the parent, also when it is killed outright; tempdirs.py: no temp dir outlives it).

Two clocks: a child first starts up (Python, imports, the route check, route.prepare()) under a
generous start-up limit, then writes a `ready` file; only then does the case's `timeout` start. A
start-up that runs out is not a hang of the case: it is reported as such and never stored as a
verdict on the route (session.py), since a loaded machine, not the route, is the likely cause.
"""
from __future__ import annotations

import json
import math
import os
import random
import shutil
import subprocess
import sys
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from navitrain._child import how_it_ended, kill_group, last_line, with_package_on_path
from navitrain.probe import lifeline, tempdirs
from navitrain.probe.results import CRASH, ERROR, GPU_FAULT, HANG, UNAVAILABLE, ProbeResult, env_label

_OUTPUT_TAIL = 64 * 1024
_KILL_WAIT_S = 5.0   # how long to wait for a killed child to go (one stuck in the GPU driver may not)
_POLL_S = 0.05
# Python + torch import + the route check + route.prepare() on a loaded machine; far above a healthy
# start-up (seconds), so running out of it means something is stuck, yet it says nothing about the case.
STARTUP_TIMEOUT_S = 300.0
MAX_SEED = 2**63 - 1  # torch.manual_seed takes at most 64 bits; the store keeps a signed 64-bit integer


def check_timeout(value: float, what: str = "timeout") -> float:
    """A usable number of seconds (finite, > 0), or ValueError saying what was wrong."""
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a number of seconds (got {value!r})") from None
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"{what} must be positive and finite, in seconds (got {value!r})")
    return seconds


def check_seed(value: int, what: str = "seed") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SEED:
        raise ValueError(f"{what} must be a whole number from 0 to {MAX_SEED} (got {value!r})")
    return value


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
    with_package_on_path(env)
    env["PYTHONUNBUFFERED"] = "1"  # whatever the child printed before dying is in the log
    return env


def _popen(argv: list[str], env: dict[str, str], log, line: lifeline.Lifeline | None = None) -> subprocess.Popen:
    kwargs: dict = {"stdin": subprocess.DEVNULL, "stdout": log, "stderr": subprocess.STDOUT, "env": env}
    if line is not None:
        kwargs["env"] = {**env, **line.env()}
        kwargs["pass_fds"] = line.fds()
    if os.name == "posix":
        kwargs["start_new_session"] = True  # its own process group: killable as a whole
    else:  # pragma: no cover - Windows
        kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP
    try:
        return subprocess.Popen(argv, **kwargs)
    finally:
        if line is not None:
            line.started()


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


def startup_detail(limit: float, phase: str) -> str:
    return (f"the child was not ready to run the case after {limit:g} s of start-up"
            f"{f' (stuck in {phase})' if phase else ''}; the case never ran, so this says nothing about it "
            f"or the route (not stored); killed the child and its process group")


def classify(returncode: int | None, result: dict | None, output: str, phase: str, timed_out: bool,
             timeout: float, stuck: bool = False) -> tuple[str, str, str | None]:
    """(outcome, detail, mode) from what a finished (or killed) child left behind. `timed_out` means
    the case's own clock ran out (a start-up that ran out is reported by the runner, not here)."""
    where = f" during {phase}" if phase else ""
    if timed_out and result is not None:
        # The answer was written, then the process hung on its way out (a GPU runtime's teardown):
        # the answer stands, with a note.
        outcome, detail, mode = classify(0, result, output, phase, False, timeout)
        return outcome, f"{detail} (then hung on exit and was killed)", mode
    if timed_out:
        mode, _ = _modes(output, prefer_fault=True)
        detail = f"no result {timeout:g} s after the case started{where}; killed the child and its process group"
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
    how = how_it_ended(returncode, "exited with code {code} without a result")
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
    line: lifeline.Lifeline
    mark: str
    ready_at: float | None = None


def stop(run: "_Running") -> bool:
    """Kill the child's process group and every process that carries its mark (also those that called
    setsid()); tell its watcher to stand down; reap it. False when it would not die."""
    run.line.release()
    kill_group(run.proc)
    lifeline.kill_marked(run.mark)  # ~1 ms: a scan of /proc
    return reap(run.proc)


def run_tasks(tasks: Iterable[Task], *, jobs: int | None = None, timeout: float | None = None,
              seed: int | None = None, on_result: Callable[[ProbeResult], None] | None = None,
              startup_timeout: float = STARTUP_TIMEOUT_S) -> RunReport:
    """Run every task in a child; return the results (in completion order) and whether Ctrl-C, SIGTERM
    or SIGHUP stopped it (after SIGTERM/SIGHUP the signal is re-sent to this process once the children
    and temp dirs are gone, so by default it then ends as the signal intended).

    After a child reports its route unavailable, the remaining tasks of that route and environment are
    recorded as unavailable without starting more children.
    """
    from navitrain import _env

    jobs = jobs or default_jobs()
    timeout = check_timeout(timeout if timeout is not None else _env.probe_timeout())
    startup_timeout = check_timeout(startup_timeout, "startup_timeout")
    report = RunReport(seed=check_seed(seed) if seed is not None else random.randrange(1, 2**31))
    threads = max(1, (os.cpu_count() or 1) // jobs)
    pending = deque(tasks)
    running: list[_Running] = []
    dead_routes: dict[tuple[str, str], str] = {}
    tempdirs.remove_abandoned()  # what a killed earlier run left behind
    workdir = tempdirs.make("navitrain-probe-")
    token = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
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
               "result": str(directory / "result.json"), "phase": str(directory / "phase"),
               "ready": str(directory / "ready")}
        (directory / "job.json").write_text(json.dumps(job))
        log = open(directory / "output.log", "wb")
        argv = [sys.executable, "-X", "faulthandler", "-m", "navitrain.probe.worker", "run",
                str(directory / "job.json")]
        mark = f"{token}/{counter}"
        env = {**child_environment(dict(task.env), threads), lifeline.TREE_VAR: mark}
        if not env.get("XDG_RUNTIME_DIR"):  # else the wgpu route makes one in /tmp per child (adapters.py)
            (directory / "xdg").mkdir(mode=0o700)  # and nothing removes it; this one goes with the workdir
            env["XDG_RUNTIME_DIR"] = str(directory / "xdg")
        line = lifeline.Lifeline(workdir)
        proc = _popen(argv, env, log, line)
        now = time.monotonic()
        return _Running(task, proc, directory, log, now, now + startup_timeout, line, mark)

    def finish(run: _Running, timed_out: bool, stuck: bool = False) -> ProbeResult:
        run.log.close()
        raw = _read(run.directory / "result.json")
        try:
            result = json.loads(raw) if raw else None
        except ValueError:
            result = None
        output = _tail(run.directory / "output.log")
        phase = _read(run.directory / "phase") or ""
        now = time.monotonic()
        startup = round((run.ready_at or now) - run.started, 3)
        extra = {"seed": report.seed, "startup_seconds": startup}
        if timed_out and run.ready_at is None and result is None:
            outcome, detail, mode = ERROR, startup_detail(startup_timeout, phase), None
            extra["startup_timeout"] = True
        else:
            outcome, detail, mode = classify(run.proc.returncode, result, output, phase,
                                             timed_out, timeout, stuck)
        result = result or {}
        if result.get("route_unavailable"):
            extra["route_unavailable"] = True
        return ProbeResult(
            case=run.task.case, route=run.task.route, env=dict(run.task.env), outcome=outcome, detail=detail,
            mode=mode, max_abs=result.get("max_abs"), max_rel=result.get("max_rel"),
            # the case's own time once it started (what --timeout limits); the start-up is in extra
            seconds=round(now - (run.ready_at or run.started), 3), route_info=result.get("route_info", ""),
            essential=run.task.essential, created=time.time(), extra=extra)

    terminated = 0
    with lifeline.stop_on_signals():
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
                    if run.ready_at is None and os.path.exists(run.directory / "ready"):
                        run.ready_at = now  # start-up done: the case's clock starts now
                        run.deadline = now + timeout
                    if run.proc.poll() is None and now < run.deadline:
                        continue
                    timed_out = run.proc.returncode is None
                    stuck = not stop(run)  # on a timeout, and to take any grandchildren with it otherwise
                    running.remove(run)
                    result = finish(run, timed_out, timed_out and stuck)
                    if result.extra.get("route_unavailable"):
                        dead_routes[(result.route, result.env_label)] = result.detail
                    emit(result)
        except (KeyboardInterrupt, lifeline.Terminated) as exc:
            report.interrupted = True
            terminated = getattr(exc, "signum", 0)
            for run in running:
                kill_group(run.proc)
            for run in running:
                stop(run)
                run.log.close()
        finally:
            for run in running:  # an exception of our own: the children must not outlive it either
                if run.proc.poll() is None:
                    stop(run)
            lifeline.kill_marked(token + "/", prefix=True)  # descendants that outlived their child (setsid)
            shutil.rmtree(workdir, ignore_errors=True)
    if terminated:
        lifeline.redeliver(terminated)
    return report


def list_cases_in_file(path: str, timeout: float = 120.0) -> list[CaseRef]:
    """The cases a user's case file defines, found by importing it in a child (it is user code and may
    import torch). Raises ValueError with a clear message when the file is missing or fails."""
    file = Path(path).expanduser().resolve()
    if not file.is_file():
        raise ValueError(f"case file {path} does not exist")
    tmp = tempdirs.make("navitrain-cases-")
    mark = f"{os.getpid()}-{uuid.uuid4().hex[:12]}/list"
    terminated = 0
    with lifeline.stop_on_signals():
        line = lifeline.Lifeline(tmp)
        try:
            with open(tmp / "output.log", "wb") as log:
                proc = _popen(
                    [sys.executable, "-m", "navitrain.probe.worker", "list", str(file), str(tmp / "cases.json")],
                    {**child_environment({}), lifeline.TREE_VAR: mark}, log, line)
                try:
                    proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    raise ValueError(f"importing case file {path} took longer than {timeout:g} s") from None
                finally:
                    line.release()
                    kill_group(proc)
                    lifeline.kill_marked(mark)
                    reap(proc)
            raw = _read(tmp / "cases.json")
            if raw is None:
                raise ValueError(f"importing case file {path} crashed: {last_line(_tail(tmp / 'output.log'))}")
        except lifeline.Terminated as exc:
            terminated = exc.signum
        finally:
            line.release()
            shutil.rmtree(tmp, ignore_errors=True)
    if terminated:
        lifeline.redeliver(terminated)
        raise KeyboardInterrupt  # the signal was handled elsewhere and the process lives on: stop here
    data = json.loads(raw)
    if "error" in data:
        raise ValueError(f"case file {path} failed to import: {data['error']}")
    if not data["cases"]:
        raise ValueError(f"case file {path} defines no cases (use the navitrain.probe.case decorator)")
    return [CaseRef(c["name"], c["source"], bool(c.get("essential")), c.get("group", "custom")) for c in data["cases"]]
