"""Eager and graph rows of one route, its score (the best mode, named), the host-bound column, the
one-sentence-per-route summary, and which sizes `navitrain run` benches."""
from rich.console import Console

from navitrain.bench import modes, report, run_size, runner


def _row(route, workload, mode, sps, label=None, **more):
    return {"route": route, "workload": workload, "title": workload.upper(), "size": "standard", "batch_size": 128,
            "status": "ok", "detail": "", "mode": mode, "label": label or route, "samples_per_s": sps,
            "median_ms": 128e3 / sps, "iqr_ms": 0.01 * 128e3 / sps, "speedup_vs_cpu": sps / 100.0,
            "peak_memory_bytes": None, "memory_kind": "n/a", "time_to_first_step_s": 1.0, "first_loss": 2.3,
            "last_loss": 2.0, "host_ms": None, "host_share": None, "host_bound": None, "batch_note": "",
            "best_mode": False, **more}


# issue 18's H200, CIFAR ResNet-18 b128: eager wgpu 16x the CPU and host-bound, captured 39x
ROWS = [_row("cpu", "resnet18", "eager", 100.0, best_mode=True),
        _row("wgpu", "resnet18", "eager", 1600.0, "wgpu (eager)", host_ms=76.0, host_share=0.95, host_bound=True),
        _row("wgpu", "resnet18", "graph", 3900.0, "wgpu (graph)", host_ms=3.3, host_share=0.1, host_bound=False,
             best_mode=True),
        _row("native", "resnet18", "eager", 4300.0, host_ms=1.5, host_share=0.05, host_bound=False, best_mode=True)]
REPORT = {"size": "standard", "plan": "quick", "budget_s": 3.0, "representative": True, "steps": 50, "warmup": 2,
          "routes": [], "results": ROWS, "other_load": None}


def test_the_best_mode_is_the_score_and_is_marked():
    results = [runner.WorkloadResult(route="wgpu", workload="gpt", title="", size="standard", batch_size=16,
                                     status="ok", mode=m, samples_per_s=s)
               for m, s in (("eager", 40.0), ("graph", 90.0))]
    results.append(runner.WorkloadResult(route="wgpu", workload="mlp", title="", size="standard", batch_size=512,
                                         status="refused", mode="graph"))
    runner.mark_best_modes(results)
    assert [r.best_mode for r in results] == [False, True, False]  # a refused row is never the score
    assert modes.for_device("wgpu") == ("eager", "graph") and modes.for_device("cuda") == ("eager",)
    assert modes.label("wgpu", "graph", 2) == "wgpu (graph)" and modes.label("cpu", "eager", 1) == "cpu"


def test_table_has_a_row_per_mode_the_score_marked_and_who_set_the_pace():
    console = Console(width=200, record=True)
    console.print(report.results_table(REPORT))
    text = console.export_text()
    assert "wgpu (graph) *" in text and "wgpu (eager) " in text and "wgpu (eager) *" not in text
    assert "host-bound 95%" in text and "device 90%" in text and "device 95%" in text
    assert "standard sizes, quick: 2 warm-up + timed steps for 3 s per route and mode" in text
    assert "* the route's fastest mode" in text


def test_summary_is_one_sentence_per_route_at_these_sizes():
    lines = report.summary_lines(REPORT)
    assert lines == ["wgpu: 39.0x the CPU's speed on resnet18 b128 (graph), at standard sizes",
                     "native: 43.0x the CPU's speed on resnet18 b128, at standard sizes"]
    tiny = dict(REPORT, size="tiny", representative=False,
                results=[dict(ROWS[0]), dict(ROWS[1], best_mode=True, speedup_vs_cpu=0.18)])
    assert report.summary_lines(tiny) == [
        "wgpu: 0.18x the CPU's speed on resnet18 b128 (eager, host-bound), at tiny sizes (Python per op, not what "
        "a GPU is worth)"]


def test_a_batch_memory_forced_smaller_is_said():
    data = dict(REPORT, results=[_row("wgpu", "gpt", "graph", 50.0, "wgpu (graph)", batch_size=8,
                                      batch_note="batch 8 instead of 16: the first step at batch 16 ran out of "
                                                 "device memory")])
    assert report.batch_lines(data) == ["smaller batch: wgpu (graph) / gpt: batch 8 instead of 16: the first step "
                                        "at batch 16 ran out of device memory"]


def test_run_benches_standard_sizes_wherever_hardware_can_be_timed():
    soft = {"software": True, "adapter": "llvmpipe (LLVM 15.0.6, 256 bits)"}
    tiny, why = run_size.choose({"cpu": "", "wgpu": ""}, soft)
    assert tiny and why.startswith("tiny sizes: the only wgpu adapter here is software (llvmpipe (LLVM 15.0.6")
    assert run_size.choose({"cpu": ""}, None)[0] is True
    assert run_size.choose({"cpu": "", "wgpu": ""}, {"software": False, "adapter": "RADV NAVI10"}) == (
        False, "standard sizes: wgpu can be timed on hardware here")
    assert run_size.choose({"cpu": "", "wgpu": "", "native": ""}, soft) == (
        False, "standard sizes: native can be timed on hardware here")


def test_a_failed_mode_is_named_and_the_other_mode_still_scores():
    failed = _row("wgpu", "resnet18", "graph", 1.0, "wgpu (graph)", status="error",
                  detail="GraphCaptureError: .item() inside a capture", samples_per_s=None, speedup_vs_cpu=None)
    data = dict(REPORT, results=[ROWS[0], dict(ROWS[1], best_mode=True), failed])
    assert report.problems(data) == ["wgpu (graph) / resnet18: error: GraphCaptureError: .item() inside a capture"]
    assert report.summary_lines(data) == ["wgpu: 16.0x the CPU's speed on resnet18 b128 (eager, host-bound), "
                                          "at standard sizes"]
