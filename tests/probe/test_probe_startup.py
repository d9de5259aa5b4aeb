"""--timeout times the case, not the child's start-up: a slow start-up (a loaded machine) with a quick
case passes; a start-up that runs out of its own limit is reported as such, never as a hang of the
case, and never stored; the cpu route is not refused for a hang; bad options and NAVITRAIN_PROBE_TIMEOUT
are refused up front (rc 2)."""
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

import navitrain
from navitrain import select
from navitrain.probe import cases, session, store
from navitrain.probe import fingerprint as fingerprints
from navitrain.probe.results import ProbeResult
from navitrain.probe.runner import list_cases_in_file

CASES_FILE = str(Path(__file__).with_name("lingering_cases.py"))


@pytest.fixture(scope="module")
def quick_case():
    return [c for c in list_cases_in_file(CASES_FILE) if c.name == "quick"]


def test_a_slow_start_up_does_not_count_against_the_case(quick_case):
    run = session.run(quick_case, ["cpu"], [{"LINGERING_SLOW_IMPORT": "4"}], timeout=2, save=False)
    (result,) = run.results
    assert result.outcome == "pass", result.detail
    assert result.extra["startup_seconds"] >= 4 and result.seconds < 2


def test_a_start_up_that_runs_out_is_not_a_hang_and_is_not_stored(quick_case, tmp_path, monkeypatch):
    monkeypatch.setenv("NAVITRAIN_CACHE_DIR", str(tmp_path / "cache"))  # a store of its own: empty before
    run = session.run(quick_case, ["cpu"], [{"LINGERING_SLOW_IMPORT": "60"}], timeout=60, startup_timeout=2)
    (result,) = run.results
    assert result.outcome != "hang" and result.extra.get("startup_timeout") is True
    assert "start-up" in result.detail and "the case never ran" in result.detail
    assert store.latest_results(run.fingerprint, routes=["cpu"]) == []


def test_cpu_is_not_refused_for_a_hang_record(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("NAVITRAIN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("NAVITRAIN_ROUTE", raising=False)
    fp = fingerprints.current()
    essential = cases.essential()
    for i, case in enumerate(essential):
        outcome = "hang" if i == 0 else "pass"
        store.save_result(fp, ProbeResult(case.name, "cpu", {}, outcome, "no result after 1 s", essential=True))
    caplog.set_level(logging.INFO, logger="navitrain")
    assert navitrain.device("cpu", progress=False).type == "cpu"
    chosen = next(r.message for r in caplog.records if r.message.startswith("training on cpu"))
    n = len(essential)
    assert f"{n - 1} of {n} essential probes passed" in chosen and "ran out of time" in chosen, chosen
    # elsewhere a hang still stops a route
    hung = ProbeResult(essential[0].name, "wgpu", {}, "hang", "no result after 60 s", essential=True)
    assert select._failures([hung]) == [hung]


def _probe(*args, **env):
    return subprocess.run([sys.executable, "-m", "navitrain", "probe", "-r", "cpu", "--cases", CASES_FILE,
                           "-k", "quick", "--json", *args], capture_output=True, text=True, timeout=180,
                          env={**os.environ, **env})


@pytest.mark.parametrize("args,env,message", [
    (["--timeout", "nan"], {}, "--timeout must be positive and finite"),
    (["--timeout", "inf"], {}, "--timeout must be positive and finite"),
    (["--seed", "99999999999999999999999"], {}, "--seed must be a whole number"),
    (["--seed", "-1"], {}, "--seed must be a whole number"),
    ([], {"NAVITRAIN_PROBE_TIMEOUT": "abc"}, "NAVITRAIN_PROBE_TIMEOUT='abc'"),
    ([], {"NAVITRAIN_PROBE_TIMEOUT": "nan"}, "NAVITRAIN_PROBE_TIMEOUT='nan'"),
], ids=["timeout-nan", "timeout-inf", "seed-huge", "seed-negative", "env-abc", "env-nan"])
def test_bad_options_and_variables_are_refused_up_front(args, env, message):
    result = _probe(*args, **env)
    assert result.returncode == 2, (result.returncode, result.stdout[-500:], result.stderr[-2000:])
    assert message in result.stderr and "Traceback" not in result.stderr
