"""Misbehaving cases (segfault, GPU fault signature + abort, hang with a grandchild, HIP error, values
that change per call, exit without a result) are each classified correctly and in bounded time, and
Ctrl-C stops a run cleanly while keeping what it found."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from navitrain.probe import fingerprint as fingerprints
from navitrain.probe import session, store
from navitrain.probe.runner import list_cases_in_file

CASES_FILE = str(Path(__file__).with_name("misbehaving_cases.py"))
# Long enough for a healthy child (python + torch import + the case) on a loaded 2-core machine.
HANG_TIMEOUT = 20.0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes (its parent was killed and init will reap it).
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return True


@pytest.fixture(scope="module")
def misbehaving_run(tmp_path_factory):
    pidfile = tmp_path_factory.mktemp("pids") / "grandchild.pid"
    # Module scope runs before the suite's function-scoped cache isolation: isolate here too.
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NAVITRAIN_CACHE_DIR", str(tmp_path_factory.mktemp("misbehaving-cache")))
        mp.setenv("PROBE_TEST_PIDFILE", str(pidfile))
        cases = list_cases_in_file(CASES_FILE)
        started = time.monotonic()
        run = session.run(cases, ["cpu"], jobs=2, timeout=HANG_TIMEOUT)
        elapsed = time.monotonic() - started
        stored = {r.case: r.outcome for r in store.latest_results(run.fingerprint, routes=["cpu"])}
    return {r.case: r for r in run.results}, elapsed, pidfile, run, stored


def test_every_case_gets_one_result_in_bounded_time(misbehaving_run):
    results, elapsed, _, run, _ = misbehaving_run
    assert set(results) == {"good", "segfault", "aperture-violation", "sleeps-forever", "invalid-device-function",
                            "nondeterministic", "exits-without-result", "unsupported"}
    assert not run.interrupted
    # 8 children at ~2 s each on 2 workers, one of them held by the 20 s timeout: far below this bound.
    assert elapsed < 120


def test_good_case_passes(misbehaving_run):
    results = misbehaving_run[0]
    assert results["good"].outcome == "pass", results["good"].detail


def test_segfault_is_a_crash_with_the_signal_name(misbehaving_run):
    r = misbehaving_run[0]["segfault"]
    assert r.outcome == "crash"
    assert "SIGSEGV" in r.detail


def test_aperture_violation_then_abort_is_a_gpu_fault(misbehaving_run):
    r = misbehaving_run[0]["aperture-violation"]
    assert r.outcome == "gpu-fault"
    assert r.mode == "gfx-override-fault"
    assert "APERTURE_VIOLATION" in r.detail and "SIGABRT" in r.detail


def test_hang_is_killed_with_its_grandchild(misbehaving_run):
    r = misbehaving_run[0]["sleeps-forever"]
    pidfile = misbehaving_run[2]
    assert r.outcome == "hang"
    assert HANG_TIMEOUT <= r.seconds < HANG_TIMEOUT + 10
    grandchild = int(pidfile.read_text())
    deadline = time.monotonic() + 5
    while _alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(grandchild), "the hung case's own child survived the kill"


def test_hip_error_is_an_error_with_the_explain_mode(misbehaving_run):
    r = misbehaving_run[0]["invalid-device-function"]
    assert r.outcome == "error"
    assert r.mode == "no-code-object"
    assert r.detail == "RuntimeError: HIP error: invalid device function"


def test_values_that_change_per_call_are_a_mismatch(misbehaving_run):
    r = misbehaving_run[0]["nondeterministic"]
    assert r.outcome == "mismatch"
    assert r.max_abs == pytest.approx(1.0)
    assert "max abs err 1" in r.detail


def test_exit_without_result_is_a_crash_with_the_exit_code(misbehaving_run):
    r = misbehaving_run[0]["exits-without-result"]
    assert r.outcome == "crash"
    assert "code 3" in r.detail


def test_unsupported_is_unavailable_with_the_reason(misbehaving_run):
    r = misbehaving_run[0]["unsupported"]
    assert r.outcome == "unavailable"
    assert "no such feature" in r.detail


def test_results_were_stored_one_by_one(misbehaving_run):
    results, stored = misbehaving_run[0], misbehaving_run[4]
    for case, result in results.items():
        assert stored[case] == result.outcome


def test_ctrl_c_stops_cleanly_and_keeps_results(tmp_path, monkeypatch):
    """SIGINT to `navitrain probe` mid-run: exit 130, JSON of what finished, the good result stored,
    and the hung child's whole process group gone."""
    pidfile = tmp_path / "grandchild.pid"
    env = dict(os.environ, PROBE_TEST_PIDFILE=str(pidfile), NAVITRAIN_CACHE_DIR=str(tmp_path / "cache"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "navitrain", "probe", "--route", "cpu", "--cases", CASES_FILE, "-k", "good",
         "-k", "sleeps-forever", "--timeout", "120", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
        # SIGINT as a terminal delivers it, even when this test runs in a background job (where the shell
        # starts it ignored, and Python then installs no KeyboardInterrupt handler)
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 120
        while not pidfile.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert pidfile.exists(), "the hanging case never started"
        monkeypatch.setenv("NAVITRAIN_CACHE_DIR", env["NAVITRAIN_CACHE_DIR"])
        while not store.latest_results(fingerprints.current(), cases=["good"]) and time.monotonic() < deadline:
            time.sleep(0.2)  # let the good case finish beside the hanging one
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err.decode()
    records = json.loads(out)
    assert [r["case"] for r in records] == ["good"] and records[0]["outcome"] == "pass"
    assert b"interrupted" in err
    grandchild = int(pidfile.read_text())
    deadline = time.monotonic() + 5
    while _alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(grandchild)
