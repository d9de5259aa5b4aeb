"""`navitrain probe`: bad input exits 2 with a clear message; --list; a real run; --report in all formats."""
import json
import subprocess
import sys
import textwrap

import pytest
from typer.testing import CliRunner

from navitrain.cli import app
from navitrain.probe import fingerprint as fingerprints
from navitrain.probe import store
from navitrain.probe.results import ProbeResult

runner = CliRunner()


@pytest.mark.parametrize("args, message", [
    (["--route", "tpu"], "unknown route 'tpu'"),
    (["--env", "NOVALUE", "-r", "cpu"], "NAME=VALUE"),
    (["--format", "html"], "--format must be one of"),
    (["--timeout", "0"], "--timeout must be positive"),
    (["--jobs", "0"], "--jobs must be at least 1"),
    (["-k", "no-such-case*"], "no case matches"),
    (["--cases", "/nonexistent/my_cases.py"], "does not exist"),
])
def test_bad_input_is_a_clear_error(args, message):
    result = runner.invoke(app, ["probe", *args])
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output


def test_list_json_names_the_essential_cases():
    result = runner.invoke(app, ["probe", "--list", "--essential", "--json"])
    assert result.exit_code == 0
    rows = json.loads(result.output)
    assert {r["name"] for r in rows} >= {"tiny-cnn-3-steps", "conv2d-classic"}
    assert all(r["essential"] for r in rows)


def test_a_real_run_prints_json_records_stores_them_and_never_imports_torch_in_the_parent():
    code = textwrap.dedent("""
        import json, sys
        from typer.testing import CliRunner
        from navitrain.cli import app
        result = CliRunner().invoke(app, ["probe", "-r", "cpu", "-k", "alloc-fill", "-k", "softmax*", "--json",
                                          "--seed", "7", "--env", "PROBE_TEST_FLAG=1"])
        print(json.dumps({"code": result.exit_code, "output": result.output, "torch": "torch" in sys.modules}))
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    outcome = json.loads(done.stdout.strip().splitlines()[-1])
    assert outcome["code"] == 0, outcome["output"]
    assert outcome["torch"] is False  # children ran the cases; the parent never imported torch
    records = json.loads(outcome["output"])
    assert sorted(r["case"] for r in records) == ["alloc-fill", "softmax-logsoftmax"]
    assert all(r["outcome"] == "pass" and r["route"] == "cpu" and r["env"] == {"PROBE_TEST_FLAG": "1"}
               for r in records)
    stored = store.latest_results(fingerprints.current(), env={"PROBE_TEST_FLAG": "1"})
    assert {r.case for r in stored} == {"alloc-fill", "softmax-logsoftmax"}


def test_report_renders_stored_results_in_three_formats():
    fp = fingerprints.current()
    store.save_result(fp, ProbeResult("conv2d-classic", "native", {}, "gpu-fault",
                                      "HSA_STATUS_ERROR_MEMORY_APERTURE_VIOLATION", mode="gfx-override-fault"))
    store.save_result(fp, ProbeResult("conv2d-classic", "cpu", {}, "pass", "4 outputs"))
    table = runner.invoke(app, ["probe", "--report", "-r", "native,cpu", "-k", "conv2d-classic"])
    assert table.exit_code == 0, table.output
    assert "gpu-fault (gfx-override-fault)" in table.output and "native: 1 gpu-fault" in table.output
    md = runner.invoke(app, ["probe", "--report", "-r", "native,cpu", "-k", "conv2d-classic", "--format", "md"])
    assert "| conv2d-classic | gpu-fault (gfx-override-fault) | pass |" in md.output
    js = runner.invoke(app, ["probe", "--report", "-r", "native,cpu", "-k", "conv2d-classic", "--json"])
    records = json.loads(js.output)
    assert [(r["route"], r["outcome"], r["mode"]) for r in records] == [
        ("native", "gpu-fault", "gfx-override-fault"), ("cpu", "pass", None)]
