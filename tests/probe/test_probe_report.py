"""Reports in all three formats from the same results: coloured matrix, Markdown, JSON records."""
import io
import json

from rich.console import Console

from navitrain.probe import report
from navitrain.probe.results import ProbeResult

RESULTS = [
    ProbeResult("conv2d-classic", "native", {}, "gpu-fault",
                "HSA_STATUS_ERROR_MEMORY_APERTURE_VIOLATION (killed by SIGABRT)", mode="gfx-override-fault"),
    ProbeResult("matmul-fp32", "native", {}, "error", "RuntimeError: HIP error: invalid device function",
                mode="no-code-object"),
    ProbeResult("conv2d-classic", "wgpu", {}, "pass", "4 outputs: max abs err 1e-06"),
    ProbeResult("matmul-fp32", "wgpu", {}, "mismatch", "grad a: max abs err 0.5 | [weird] text", max_abs=0.5),
    ProbeResult("conv2d-classic", "native", {"HSA_OVERRIDE_GFX_VERSION": "10.3.0"}, "hang", "no result after 60 s"),
    ProbeResult("matmul-fp32", "cpu", {}, "pass"),
    ProbeResult("conv2d-classic", "nomiopen", {}, "unavailable", "torch 2.13.0+cpu is a CPU-only build",
                extra={"route_unavailable": True}),
    ProbeResult("matmul-fp32", "nomiopen", {}, "unavailable", "torch 2.13.0+cpu is a CPU-only build",
                extra={"route_unavailable": True}),
]


def test_summary_line_per_route_and_environment():
    assert report.summary_lines(RESULTS) == [
        "native: 1 error, 1 gpu-fault",
        "wgpu: 1 pass, 1 mismatch",
        "native [HSA_OVERRIDE_GFX_VERSION=10.3.0]: 1 hang",
        "cpu: 1 pass",
        "nomiopen: 2 unavailable (torch 2.13.0+cpu is a CPU-only build)",
    ]


def test_table_shows_every_cell_failures_and_summaries():
    buffer = io.StringIO()
    console = Console(file=buffer, width=200, force_terminal=True, color_system="truecolor")
    report.render_table(RESULTS, console, title="machine X")
    text = buffer.getvalue()
    plain = Console(file=io.StringIO(), width=200)
    plain_buffer = plain.file
    report.render_table(RESULTS, plain, title="machine X")
    plain_text = plain_buffer.getvalue()
    assert "\x1b[" in text  # coloured
    for word in ("gpu-fault (gfx-override-fault)", "error (no-code-object)", "mismatch", "hang", "unavailable"):
        assert word in plain_text
    assert "native [HSA_OVERRIDE_GFX_VERSION=10.3.0]" in plain_text
    assert "[weird] text" in plain_text  # details are escaped, not eaten as markup
    assert "wgpu: 1 pass, 1 mismatch" in plain_text
    assert plain_text.index("What failed") > plain_text.index("matmul-fp32")


def test_markdown_is_a_table_with_failures_listed():
    md = report.render_markdown(RESULTS, header="## navitrain probe")
    lines = md.splitlines()
    assert lines[0] == "## navitrain probe"
    assert lines[2] == "| case | native | wgpu | native [HSA_OVERRIDE_GFX_VERSION=10.3.0] | cpu | nomiopen |"
    assert lines[3] == "|---|---|---|---|---|---|"
    assert lines[4].startswith("| conv2d-classic | gpu-fault (gfx-override-fault) | pass | hang |  | unavailable |")
    assert "\\| [weird] text" in md  # pipes escaped inside cells and lists
    assert "- `matmul-fp32` on `native`: **error** (`no-code-object`): RuntimeError: HIP error" in md
    assert "- wgpu: 1 pass, 1 mismatch" in md


def test_json_records_have_exactly_the_public_fields():
    records = json.loads(json.dumps(report.render_json(RESULTS)))
    assert len(records) == len(RESULTS)
    assert all(set(r) == {"case", "route", "env", "outcome", "detail", "mode"} for r in records)
    assert records[4]["env"] == {"HSA_OVERRIDE_GFX_VERSION": "10.3.0"}
    assert records[1]["mode"] == "no-code-object"


def test_ordered_puts_routes_and_cases_in_the_given_order():
    ordered = report.ordered(RESULTS, ["native", "nomiopen", "wgpu", "cpu"], ["matmul-fp32", "conv2d-classic"])
    assert [(r.route, r.env_label, r.case) for r in ordered][:4] == [
        ("native", "", "matmul-fp32"), ("native", "", "conv2d-classic"),
        ("native", "HSA_OVERRIDE_GFX_VERSION=10.3.0", "conv2d-classic"), ("nomiopen", "", "matmul-fp32")]
