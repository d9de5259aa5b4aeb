"""`navitrain run`, the README's main command: doctor summary, chosen route, a real training run."""
import json
import os
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_run_json_reports_doctor_route_and_training():
    env = dict(os.environ, NAVITRAIN_ROUTE="cpu")  # the route choice itself is the probe's to test
    command = [sys.executable, "-m", "navitrain", "run", "--json", "--steps", "8", "--budget", "600", "--no-bench"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert "error" not in data["doctor"] and data["doctor"]["recommendation"]["route"]
    assert data["device"]["device"] == "cpu"
    assert any("cpu" in line for line in data["device"]["why"])  # the choice is explained
    training = data["training"]
    assert len(training["losses"]) == 8 and not training["stopped_by_time_budget"]
    assert training["loss_end"] < training["loss_start"]
    assert training["held_out_accuracy"] > training["chance_accuracy"]
    assert "bench" not in data


def test_run_rejects_bad_options():
    from typer.testing import CliRunner

    from navitrain.cli import app

    for args, needle in ((["--steps", "1"], "--steps"), (["--plot", "x.gif"], ".png or .svg")):
        result = CliRunner().invoke(app, ["run", *args])
        assert result.exit_code == 2 and needle in result.output
