"""`navitrain report`: bad input exits 2 with a clear message; a run (doctor, probe and bench replaced by
fast stand-ins: the real ones take minutes) writes a Markdown and a schema-valid JSON file; --compare."""
from __future__ import annotations

import json

import jsonschema
import pytest
from test_report_build import ADAPTER, BENCH, PROBE, _facts
from typer.testing import CliRunner

from navitrain.cli import app
from navitrain.doctor import diagnose
from navitrain.doctor.report import document
from navitrain.report import gather, privacy, schema

runner = CliRunner()
LOCAL_HOST = "otter-laptop"


@pytest.fixture
def stand_ins(monkeypatch):
    """gather's sources replaced; records what the CLI asked of them."""
    asked = {}
    facts = _facts()
    monkeypatch.setattr(gather, "doctor", lambda: (facts, document(facts, diagnose(facts))))
    monkeypatch.setattr(gather, "adapter", lambda: ADAPTER)

    def probe(essential):
        asked["essential"] = essential
        return PROBE + [{"case": "matmul", "route": "nomiopen", "env": {}, "outcome": "error", "mode": "error",
                         "detail": f"RuntimeError: lost contact with {LOCAL_HOST}"}]

    monkeypatch.setattr(gather, "probe", probe)

    def bench(routes, size):
        asked["bench"] = (routes, size)
        return BENCH

    monkeypatch.setattr(gather, "bench", bench)
    return asked


@pytest.mark.parametrize("args, message", [
    (["--size", "huge"], "--size must be one of"),
    (["-o", "/no/such/dir/report"], "does not exist"),
    (["--compare", "/no/such/a.json", "/no/such/b.json"], "cannot read report"),
])
def test_bad_input_is_a_clear_error(args, message):
    result = runner.invoke(app, ["report", *args])
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_a_run_writes_markdown_and_schema_valid_json(stand_ins, tmp_path, monkeypatch):
    # this machine's name, which the facts do not carry, is in a probe child's error text
    monkeypatch.setattr(privacy.socket, "gethostname", lambda: LOCAL_HOST)
    result = runner.invoke(app, ["report", "--quick", "--size", "tiny", "-o", str(tmp_path / "mine.md"), "--json"])
    assert result.exit_code == 0, result.output
    assert stand_ins == {"essential": True, "bench": (["cpu", "wgpu"], "tiny")}  # the CPU and doctor's route
    printed = json.loads(result.stdout)
    written = json.loads((tmp_path / "mine.json").read_text())
    assert printed == written
    jsonschema.validate(written, schema())
    text = (tmp_path / "mine.md").read_text()
    assert text.startswith("# navitrain report") and "gpu-fault" in text
    assert LOCAL_HOST not in text and LOCAL_HOST not in result.stdout and "<private>" in text


def test_compare_two_reports_and_refuse_what_is_not_one(stand_ins, tmp_path):
    assert runner.invoke(app, ["report", "-o", str(tmp_path / "a"), "--no-bench"]).exit_code == 0
    assert stand_ins.get("essential") is False and "bench" not in stand_ins
    b = json.loads((tmp_path / "a.json").read_text())
    b["drivers"]["mesa"] = "Mesa 25.0.1"
    (tmp_path / "b.json").write_text(json.dumps(b))
    result = runner.invoke(app, ["report", "--compare", str(tmp_path / "a.json"), str(tmp_path / "b.json"),
                                 "--differences"])
    assert result.exit_code == 0, result.output
    assert "| drivers.mesa | Mesa 24.2.8-1ubuntu1~24.04.1 | Mesa 25.0.1 | differs |" in result.stdout
    assert "drivers.rocm" not in result.stdout
    rows = json.loads(runner.invoke(app, ["report", "--compare", str(tmp_path / "a.json"), str(tmp_path / "b.json"),
                                          "--json"]).stdout)["rows"]
    assert [r["field"] for r in rows if not r["same"]] == ["drivers.mesa"]
    (tmp_path / "bad.json").write_text(json.dumps({"schema": "navitrain.report/1", "gpus": "many"}))
    (tmp_path / "other.json").write_text("[1, 2]")
    for bad, message in (("bad.json", "does not match the report schema"), ("other.json", "is not a navitrain report")):
        result = runner.invoke(app, ["report", "--compare", str(tmp_path / bad), str(tmp_path / "a.json")])
        assert result.exit_code == 2 and message in result.output, result.output
