"""Rendering a bench report: chart, table, problem lines, and how default routes are chosen."""
import pytest

from navitrain.bench import plot, report, route_choice


def _row(route, workload, status="ok", sps=None, speedup=None, detail=""):
    return {"route": route, "workload": workload, "title": workload.upper(), "size": "quick", "batch_size": 8,
            "status": status, "detail": detail, "samples_per_s": sps, "median_ms": 8e3 / sps if sps else None,
            "iqr_ms": 0.1 if sps else None, "speedup_vs_cpu": speedup, "peak_memory_bytes": 2 ** 20 if sps else None,
            "memory_kind": "RSS growth", "time_to_first_step_s": 0.5 if sps else None,
            "first_loss": 2.3, "last_loss": 1.1 if sps else None}


REPORT = {
    "size": "quick", "steps": 6, "warmup": 2,
    "machine": {"cpu": "Test CPU", "devices": {"cpu": "Test CPU", "wgpu": "Test GPU (RADV NAVI10)"},
                "torch": "2.13.0", "navitrain": "0.1.0", "wgpu": "0.32.0"},
    "routes": [{"route": "cpu", "status": "ok", "detail": ""}, {"route": "wgpu", "status": "ok", "detail": ""},
               {"route": "native", "status": "crash", "detail": "killed by SIGSEGV"}],
    "results": [_row("cpu", "mlp", sps=1000.0, speedup=1.0), _row("wgpu", "mlp", sps=4000.0, speedup=4.0),
                _row("native", "mlp", "crash", detail="killed by SIGSEGV"),
                _row("cpu", "gpt", sps=50.0, speedup=1.0),
                _row("wgpu", "gpt", "refused", detail="first-step loss 9 disagrees with the CPU's 5.5"),
                _row("native", "gpt", "crash", detail="killed by SIGSEGV")],
}


@pytest.mark.parametrize("suffix,magic", [(".png", b"\x89PNG"), (".svg", b"<?xml")])
def test_chart_is_written_with_title_values_and_statuses(tmp_path, suffix, magic):
    path = plot.plot_report(REPORT, tmp_path / f"chart{suffix}")
    data = path.read_bytes()
    assert data.startswith(magic)
    if suffix == ".svg":
        text = data.decode()
        for needle in ("Test GPU (RADV NAVI10)", "torch 2.13.0", "samples/s", "4,000", "4.00x CPU", "refused", "crash"):
            assert needle in text, needle


def test_chart_refuses_other_formats(tmp_path):
    with pytest.raises(ValueError, match=".png or .svg"):
        plot.plot_report(REPORT, tmp_path / "chart.jpg")


def test_problems_name_every_untimed_row_once_per_route():
    lines = report.problems(REPORT)
    assert "native: crash: killed by SIGSEGV" in lines
    assert any(line.startswith("wgpu / gpt: refused: first-step loss") for line in lines)
    assert len(lines) == 2  # the crashed route is reported once, not per workload


def test_summary_is_the_geometric_mean_speedup():
    assert report.summary_lines(REPORT) == [
        "wgpu: 4.00x the CPU's speed on mlp b8, at quick sizes (Python per op, not what a GPU is worth)"]


def test_table_lists_every_row_fastest_first():
    from rich.console import Console

    console = Console(width=160, record=True)
    console.print(report.results_table(REPORT))
    text = console.export_text()
    assert text.index("wgpu") < text.index("cpu ")  # within mlp the faster route comes first
    assert "4.00x" in text and "refused" in text and "1.0 MiB" in text


def test_default_routes_follow_the_probes(monkeypatch):
    monkeypatch.setattr(route_choice, "available_routes", lambda: {"wgpu": "ok", "cpu": "ok", "nomiopen": "ok"})
    monkeypatch.setattr(route_choice.registry, "names", lambda: ["native", "nomiopen", "wgpu", "cpu"])
    monkeypatch.setattr(route_choice, "probe_status", lambda: None)
    routes, why = route_choice.default_routes()
    assert routes == ["nomiopen", "wgpu", "cpu"] and "nothing probed" in why
    monkeypatch.setattr(route_choice, "_benched_routes", lambda: set())
    monkeypatch.setattr(route_choice, "probe_status",
                        lambda: {"wgpu": ("passed", ""), "nomiopen": ("failed", "train_mlp crash")})
    routes, why = route_choice.default_routes()
    assert routes == ["wgpu", "cpu"]  # cpu always: the reference
    assert "nomiopen: essential probes failed (train_mlp crash; navitrain probe --report)" in why
    monkeypatch.setattr(route_choice, "probe_status", lambda: {"cpu": ("passed", "")})
    routes, why = route_choice.default_routes()
    assert routes == ["cpu"] and "nomiopen, wgpu: not probed yet" in why


def test_unknown_route_names_are_rejected():
    with pytest.raises(ValueError, match="unknown route 'warp'"):
        route_choice.check_names(["cpu", "warp"])
