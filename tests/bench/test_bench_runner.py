"""The bench runner: real timing on the cpu route, and every way a route can go wrong becoming a row
in the report (never the end of the bench), each in its own spawned child."""
import os

import pytest

from navitrain.bench import noise, runner

HERE = os.path.dirname(__file__)


@pytest.fixture(scope="module")
def broken_report(tmp_path_factory):
    """One bench over the cpu route and every deliberately broken test route (see bench_fake_routes)."""
    import sys

    sys.path.insert(0, HERE)  # the children inherit sys.path and import bench_fake_routes from here
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("NAVITRAIN_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "navitrain-cache"))
        routes = ["test-wrong", "test-segfault", "test-faulty", "test-hang", "test-unavailable", "cpu"]
        events = []
        try:
            report = runner.run_bench(routes, ["mlp", "gpt"], size="tiny", steps=3, warmup=1, timeout=8,
                                      on_event=events.append, route_modules=("bench_fake_routes",))
        finally:
            sys.path.remove(HERE)
    return report, events


def test_cpu_route_is_timed_and_checked(broken_report):
    report, events = broken_report
    # the CPU runs first: it is the reference
    assert report.routes[0].route == "cpu"
    for workload in ("mlp", "gpt"):
        row = report.result("cpu", workload)
        assert row.status == "ok", row.detail
        assert len(row.step_ms) == 3 and len(row.losses) == 4
        assert row.min_ms <= row.median_ms <= row.max_ms
        batch = 64 if workload == "mlp" else 8
        assert row.samples_per_s == pytest.approx(batch / (row.median_ms / 1e3))
        assert row.speedup_vs_cpu == pytest.approx(1.0)
        assert row.check_loss == row.first_loss == row.losses[0]
        assert row.time_to_first_step_s > 0 and row.peak_memory_bytes is not None
        assert row.relative_spread == pytest.approx(row.iqr_ms / row.median_ms)
        assert row.noisy == (row.relative_spread > 0.3)
        assert row.speedup_reliable == (not row.noisy and not noise.machine_busy(report.other_load))
    assert report.other_load is None or 0 <= report.other_load["share"] <= 1
    steps = [e for e in events if e["route"] == "cpu" and e["kind"] == "step"]
    assert len(steps) == 8 and all("loss" in e for e in steps)


def test_disagreeing_loss_is_refused_and_not_timed(broken_report):
    report, _ = broken_report
    row = report.result("test-wrong", "mlp")
    assert row.status == "refused" and "disagrees with the CPU" in row.detail
    assert row.samples_per_s is None and row.median_ms is None and row.speedup_vs_cpu is None
    assert row.check_loss == pytest.approx(1.5 * report.result("cpu", "mlp").check_loss, rel=1e-5)


def test_rising_loss_is_refused(broken_report):
    report, _ = broken_report
    row = report.result("test-wrong", "gpt")
    assert row.status == "refused" and "did not decrease" in row.detail


def test_segfault_while_preparing_is_a_crash_of_the_route(broken_report):
    report, _ = broken_report
    info = next(r for r in report.routes if r.route == "test-segfault")
    assert info.status == "crash" and "SIGSEGV" in info.detail
    assert {report.result("test-segfault", w).status for w in ("mlp", "gpt")} == {"crash"}
    # a workload after a crash in an earlier one never ran
    assert report.result("test-faulty", "mlp").status == "error"  # mlp raised; the process went on
    assert report.result("test-hang", "gpt").status == "not run"


def test_gpu_fault_in_a_workload_is_classified(broken_report):
    report, _ = broken_report
    row = report.result("test-faulty", "gpt")
    assert row.status == "crash"
    assert "SIGABRT" in row.detail and "gfx-override-fault" in row.detail and "APERTURE" in row.detail


def test_hang_is_killed_after_the_timeout(broken_report):
    report, _ = broken_report
    row = report.result("test-hang", "mlp")
    assert row.status == "hang" and "no progress for 8 s" in row.detail
    info = next(r for r in report.routes if r.route == "test-hang")
    assert info.wall_s < 60


def test_exception_keeps_its_message_and_mode(broken_report):
    report, _ = broken_report
    row = report.result("test-faulty", "mlp")
    assert row.status == "error"
    assert "HIP error: invalid device function" in row.detail and "no-code-object" in row.detail


def test_unavailable_route_says_why(broken_report):
    report, _ = broken_report
    row = report.result("test-unavailable", "mlp")
    assert row.status == "unavailable" and "no such device here" in row.detail


def test_report_serialises(broken_report):
    import json

    report, _ = broken_report
    data = json.loads(json.dumps(report.to_dict()))
    assert {r["route"] for r in data["results"]} >= {"cpu", "test-hang"}
    assert data["machine"]["torch"] and data["machine"]["cores"]


def test_bad_settings_are_rejected():
    with pytest.raises(ValueError, match="steps"):
        runner.run_bench(["cpu"], ["mlp"], steps=1)
    with pytest.raises(ValueError, match="unknown workload"):
        runner.run_bench(["cpu"], ["nope"])
