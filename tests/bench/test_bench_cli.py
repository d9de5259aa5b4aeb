"""`navitrain bench --quick --tiny` end to end, as CI runs it: every available route (cpu, and wgpu on
lavapipe where the route exists, eager and graph), JSON on stdout, a PNG chart, results stored but not
used to choose (tiny sizes measure Python per op: issue 18)."""
import json
import os
import subprocess
import sys
import time

import pytest

from navitrain.bench import route_choice
from navitrain.routes import registry


def _navitrain(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "navitrain", *args], capture_output=True, text=True,
                          timeout=timeout, env=os.environ.copy())


@pytest.fixture(scope="module")
def quick_bench(tmp_path_factory):
    routes = list(route_choice.available_routes())
    chart = tmp_path_factory.mktemp("bench") / "chart.png"
    with pytest.MonkeyPatch.context() as patch:
        # module fixtures run before conftest's per-test cache isolation: isolate here, in the same place
        patch.setenv("NAVITRAIN_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "navitrain-cache"))
        started = time.monotonic()
        result = _navitrain("bench", "--quick", "--tiny", "--json", "--plot", str(chart), "--route", ",".join(routes))
    return routes, chart, result, time.monotonic() - started


@pytest.mark.slow
def test_quick_bench_covers_every_available_route(quick_bench):
    routes, _, result, seconds = quick_bench
    assert result.returncode == 0, result.stderr
    if "wgpu" in registry.names() and os.environ.get("CI"):
        # CI installs lavapipe: the wgpu route must really run there, not skip silently
        assert "wgpu" in routes, registry.get("wgpu").availability().reason
    data = json.loads(result.stdout)  # stdout is pure JSON: no progress bar, no table
    assert data["size"] == "tiny" and data["plan"] == "quick" and data["representative"] is False
    assert {r["route"] for r in data["routes"]} == set(routes)
    for row in data["results"]:
        assert row["status"] == "ok", f"{row['route']}/{row['workload']}: {row['detail']}"
        assert row["samples_per_s"] > 0 and row["median_ms"] > 0
        assert row["losses"][-1] < row["losses"][0]
        assert row["peak_memory_bytes"] is None or row["peak_memory_bytes"] >= 0
    assert {r["workload"] for r in data["results"]} == {"mlp", "resnet18", "gpt"}
    assert all(r["timed_steps"] == 3 for r in data["results"])  # tiny: a fixed count, no time budget
    cpu_rows = [r for r in data["results"] if r["route"] == "cpu"]
    assert all(r["speedup_vs_cpu"] == pytest.approx(1.0) for r in cpu_rows)
    # the agreement check really ran: every route's first loss sits next to the CPU's
    for row in data["results"]:
        assert row["check_loss"] == pytest.approx(row["cpu_check_loss"], rel=1e-2)
    print(f"quick bench on {routes}: {seconds:.0f} s")


@pytest.mark.slow
def test_wgpu_has_an_eager_and_a_graph_row_and_is_scored_by_the_faster(quick_bench):
    routes, _, result, _ = quick_bench
    if "wgpu" not in routes:
        pytest.skip("no wgpu adapter here")
    data = json.loads(result.stdout)
    for workload in ("mlp", "resnet18", "gpt"):
        rows = {r["mode"]: r for r in data["results"] if r["route"] == "wgpu" and r["workload"] == workload}
        assert set(rows) == {"eager", "graph"}
        assert rows["eager"]["label"] == "wgpu (eager)" and rows["graph"]["label"] == "wgpu (graph)"
        best = max(rows.values(), key=lambda r: r["samples_per_s"])
        assert [r["mode"] for r in rows.values() if r["best_mode"]] == [best["mode"]]
        for row in rows.values():  # wgpu queues its work: every row says whether the host set the pace
            assert 0 < row["host_share"] <= 1 and row["host_bound"] == (row["host_share"] >= 0.8)
        # the graph row trained on replays: as many losses as steps, the same first loss as eager
        assert rows["graph"]["first_loss"] == pytest.approx(rows["eager"]["first_loss"], rel=1e-5)
        assert len(rows["graph"]["losses"]) == rows["graph"]["warmup_steps"] + 3
    cpu = [r for r in data["results"] if r["route"] == "cpu"]
    assert all(r["mode"] == "eager" and r["label"] == "cpu" and r["host_bound"] is None for r in cpu)


@pytest.mark.slow
def test_quick_bench_draws_a_png(quick_bench):
    _, chart, result, _ = quick_bench
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["plot"] == str(chart)
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    height, width = matplotlib.image.imread(chart).shape[:2]
    assert width > 800 and height > 300


@pytest.mark.slow
def test_bench_results_are_stored_for_advise(quick_bench):
    routes, _, result, _ = quick_bench
    data = json.loads(result.stdout)
    from navitrain.bench import noise

    if noise.machine_busy(data["other_load"]):
        # timings taken against other load are not stored (they would steer navitrain.device())
        assert data["stored"]["saved"] == 0 and "not stored" in data["stored"]["note"]
        pytest.skip(f"other processes used {data['other_load']['share']:.0%} of the CPU: nothing stored to advise on")
    assert data["stored"]["saved"] == len(data["results"]), data["stored"]
    # stored, but tiny sizes never choose a device or price a GPU: advise says so and assumes
    advice = _navitrain("advise", "--json", timeout=120)
    assert advice.returncode == 0, advice.stderr
    inputs = json.loads(advice.stdout)["inputs"]
    assert inputs["speeds_source"] == "assumed"
    assert "no bench results at standard sizes" in json.dumps(json.loads(advice.stdout))


def test_bench_rejects_bad_options():
    from typer.testing import CliRunner

    from navitrain.cli import app

    runner = CliRunner()
    for args, needle in ((["--route", "warp"], "unknown route"), (["--workload", "bert"], "unknown workload"),
                         (["--steps", "1"], "--steps"), (["--timeout", "0"], "--timeout"),
                         (["--plot", "chart.jpg"], ".png or .svg")):
        result = runner.invoke(app, ["bench", "--quick", *args])
        assert result.exit_code == 2, (args, result.output)
        assert needle in result.output and "Traceback" not in result.output
