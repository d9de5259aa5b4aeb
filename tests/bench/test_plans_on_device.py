"""benchmarks/plans_on_device.py at its lavapipe size: one process alternates plans off and on, and its rows say what
the op plans did (with plans off nothing; with plans on the tiny GPT's planned calls repeat, none re-recorded)."""
import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def test_plans_alternate_in_one_process_and_repeat(tmp_path):
    out = tmp_path / "plans.json"
    proc = subprocess.run([sys.executable, str(BENCH / "plans_on_device.py"), "--quick", "--models", "gpt",
                           "--blocks", "1", "--per-block", "2", "--json", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "median off:" in proc.stdout, proc.stdout
    (result,) = json.loads(out.read_text())
    off = [r for r in result["rows"] if r["plans"] == "0"]
    on = [r for r in result["rows"] if r["plans"] == "1"]
    assert len(off) == len(on) == 2
    assert all(not r["plan_stats"] for r in off)
    for r in on:
        assert r["plan_stats"].get("repeated", 0) >= 50 and not r["plan_stats"].get("moved"), r["plan_stats"]
        assert r["wall_ms"] >= r["host_ms"] > 0 and r["submits"] > 0
