"""Every NAVITRAIN_* variable the code reads is declared once in navitrain/_env.py with a parser; a
malformed value raises naming the variable wherever it is read, every command but doctor/explain
refuses it up front (rc 2), and doctor reports it as an error finding."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from navitrain import _env
from navitrain.doctor.knowledge import run_rules

SRC = Path(_env.__file__).parent

# (variable, malformed values, good values) for every declared variable that can be malformed
CASES = [
    ("NAVITRAIN_ROUTE", ["bogus", "cpu,wgpu"], ["cpu", "WGPU"]),
    ("NAVITRAIN_WGPU_STRICT", ["maybe", "2"], ["1", "off"]),
    ("NAVITRAIN_WGPU_FUSION", ["maybe", "2"], ["0", "on"]),
    ("NAVITRAIN_WGPU_FUSION_OFF", ["bogus", "norm,bogus"], ["conv_stats", "Norm, norm_pair", ",counters,"]),
    ("NAVITRAIN_WGPU_BATCH", ["0", "-3", "lots", "1e3", "nan"], ["1", "64"]),
    ("NAVITRAIN_WGPU_COMPILE_THREADS", ["-1", "many", "2.5"], ["0", "1", "16"]),
    ("NAVITRAIN_WGPU_TUNE", ["maybe", "2"], ["0", "force"]),
    ("NAVITRAIN_WGPU_CONV", ["fast"], ["gemm", "Winograd"]),
    ("NAVITRAIN_WGPU_PLANS", ["2", "check"], ["0", "1", "Verify"]),
    ("NAVITRAIN_CONV_WORKSPACE_MB", ["-1", "lots", "inf"], ["0", "512"]),
    ("NAVITRAIN_CONV_ALGO", ["fastest"], ["tune", "winograd4"]),
    ("NAVITRAIN_PROBE_TIMEOUT", ["abc", "nan", "inf", "0", "-5"], ["1", "2.5"]),
    ("NAVITRAIN_LOG", ["loud"], ["debug", "WARNING"]),
    ("NAVITRAIN_WGPU_LIMITS", ["rx9999", "/no/such/limits.json"], ["rx5600xt", "RX5600XT"]),
    ("NAVITRAIN_WGPU_MEMORY_LIMIT", ["lots", "0", "6XB", "-1GiB", "nan"], ["6GiB", "512MiB", "6GB", "1048576"]),
]


def test_every_variable_the_code_names_is_declared():
    named = set()
    for path in SRC.rglob("*.py"):
        named |= set(re.findall(r"(?<![_A-Z])NAVITRAIN_[A-Z0-9_]+", path.read_text()))
    assert named <= set(_env.VARIABLES), named - set(_env.VARIABLES)
    assert {name for name, _, _ in CASES} | {"NAVITRAIN_WGPU_ADAPTER", "NAVITRAIN_CACHE_DIR"} == set(_env.VARIABLES)


@pytest.mark.parametrize("name,bad,good", CASES, ids=[c[0] for c in CASES])
def test_malformed_values_raise_naming_the_variable_and_good_ones_parse(monkeypatch, name, bad, good):
    for text in bad:
        monkeypatch.setenv(name, text)
        with pytest.raises(_env.EnvError, match=re.escape(f"{name}={text!r}")):
            _env.value(name)
        assert _env.problems() == [_env.problem(name, text)] and name in _env.problems()[0]
    for text in good:
        monkeypatch.setenv(name, text)
        assert _env.problems() == []
        _env.value(name)
    monkeypatch.setenv(name, "")  # empty is unset: the default
    assert _env.problems() == []


def test_cache_dir_that_is_a_file_is_malformed(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("x")
    monkeypatch.setenv("NAVITRAIN_CACHE_DIR", str(tmp_path / "file"))
    assert _env.problems() and "NAVITRAIN_CACHE_DIR" in _env.problems()[0]
    with pytest.raises(_env.EnvError):
        _env.cache_dir()


def test_readers_use_the_table(monkeypatch):
    """A malformed value is never silently taken for a default where it is read."""
    from navitrain.nomiopen_conv import policy
    from navitrain.wgpu.kernels import gemm_tuning

    monkeypatch.setenv("NAVITRAIN_WGPU_TUNE", "maybe")  # was read as "on"
    with pytest.raises(_env.EnvError, match="NAVITRAIN_WGPU_TUNE"):
        gemm_tuning._mode()
    monkeypatch.setenv("NAVITRAIN_CONV_WORKSPACE_MB", "-1")  # was read as 0
    with pytest.raises(_env.EnvError, match="NAVITRAIN_CONV_WORKSPACE_MB"):
        policy.workspace_bytes()
    monkeypatch.setenv("NAVITRAIN_ROUTE", "bogus")
    with pytest.raises(_env.EnvError, match="NAVITRAIN_ROUTE='bogus'"):
        _env.route()
    from navitrain.wgpu import op_plans

    monkeypatch.setenv("NAVITRAIN_WGPU_PLANS", "off")   # would have been read as on
    with pytest.raises(_env.EnvError, match="NAVITRAIN_WGPU_PLANS='off'"):
        op_plans.mode()


def test_doctor_reports_malformed_variables_as_errors():
    findings = run_rules({"navitrain": {"env": {"NAVITRAIN_ROUTE": "bogus", "NAVITRAIN_LOG": "info",
                                                "NAVITRAIN_PROBE_TIMEOUT": "abc"}}})
    bad = [f for f in findings if f.id == "navitrain-env-malformed"]
    assert [f.severity for f in bad] == ["error", "error"]
    assert "NAVITRAIN_ROUTE='bogus'" in bad[0].title and "NAVITRAIN_PROBE_TIMEOUT='abc'" in bad[1].title


def _cli(*args, **env):
    return subprocess.run([sys.executable, "-m", "navitrain", *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **env})


def test_commands_refuse_a_malformed_variable_up_front_but_doctor_reports_it():
    result = _cli("probe", "--list", NAVITRAIN_ROUTE="bogus")
    assert result.returncode == 2 and "NAVITRAIN_ROUTE='bogus'" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    result = _cli("doctor", "--json", NAVITRAIN_ROUTE="bogus")
    assert '"navitrain-env-malformed"' in result.stdout, result.stderr[-2000:]
