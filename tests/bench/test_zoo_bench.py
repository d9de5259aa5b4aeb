"""benchmarks/bench_wgpu_zoo.py end to end at its lavapipe size: wgpu eager and graph share one child per
model, and their first-step losses equal the CPU's with no fallbacks (the device run compares with CUDA)."""
import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))

import bench_wgpu_zoo  # noqa: E402


def test_eager_and_graph_share_a_child():
    assert bench_wgpu_zoo._child_runs(["wgpu", "wgpu-graph", "cuda"]) == ["wgpu+graph", "cuda"]
    assert bench_wgpu_zoo._child_runs(["wgpu-graph", "cuda", "wgpu-compile"]) == ["wgpu-graph", "cuda", "wgpu-compile"]
    assert bench_wgpu_zoo._child_runs(["cpu", "wgpu"]) == ["wgpu", "cpu"]


def test_quick_zoo_matches_the_cpu(tmp_path):
    out = tmp_path / "zoo.json"
    proc = subprocess.run([sys.executable, str(BENCH / "bench_wgpu_zoo.py"), "--quick", "--models",
                           "mobilenet_v3_small", "--devices", "wgpu,wgpu-graph,cpu", "--steps", "1", "--warmup", "2",
                           "--no-layers", "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = {r["device"]: r for r in json.loads(out.read_text())["models"]}
    assert set(rows) == {"wgpu", "wgpu-graph", "cpu"}, rows
    for device in ("wgpu", "wgpu-graph"):
        assert "error" not in rows[device], rows[device]
        assert abs(rows[device]["first_loss"] - rows["cpu"]["first_loss"]) <= 1e-3 * abs(rows["cpu"]["first_loss"])
        assert rows[device]["fallbacks"] == 0 and rows[device]["median_ms"] > 0
