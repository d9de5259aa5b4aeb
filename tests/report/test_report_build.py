"""navitrain report's content: it matches its JSON schema, carries what a reader needs, holds nothing
private (planted in the facts, the probe's error text and the environment), renders as Markdown, and two
reports compare side by side."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import jsonschema

from navitrain.doctor import collect, diagnose
from navitrain.doctor.report import document
from navitrain.report import build, compare, markdown, privacy, schema

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "doctor" / "rx5600xt-rocm7-cputorch"
HOST, USER, MAC, SERIAL = "zebra-workstation", "alex", "3c:7c:3f:1a:2b:4d", "SN-9F8E7D6C5B"

PROBE = [
    {"case": "matmul", "route": "cpu", "env": {}, "outcome": "pass", "detail": "", "mode": None},
    {"case": "matmul", "route": "wgpu", "env": {}, "outcome": "pass", "detail": "", "mode": None},
    {"case": "conv2d", "route": "native", "env": {"HSA_OVERRIDE_GFX_VERSION": "10.3.0"}, "outcome": "gpu-fault",
     "mode": "gpu-fault", "detail": f"Memory access fault by GPU node-1 in /home/{USER}/venv/lib/torch; "
                                    f"host {HOST} eth0 {MAC}"},
]
BENCH = {"size": "tiny", "plan": "quick", "results": [
    {"route": "cpu", "workload": "mlp", "title": "MLP", "size": "tiny", "mode": "eager", "status": "ok",
     "batch_size": 64, "median_ms": 4.2, "iqr_ms": 0.1, "samples_per_s": 15000.0, "speedup_vs_cpu": 1.0,
     "peak_memory_bytes": None, "memory_kind": "n/a", "detail": "", "losses": [1.0, 0.9]},
    {"route": "wgpu", "workload": "mlp", "title": "MLP", "size": "tiny", "mode": "graph", "status": "ok",
     "batch_size": 64, "median_ms": 2.1, "iqr_ms": 0.1, "samples_per_s": 30000.0, "speedup_vs_cpu": 2.0,
     "peak_memory_bytes": 12 << 20, "memory_kind": "allocated", "detail": ""}]}
ADAPTER = {"name": "AMD Radeon RX 5600 XT (RADV NAVI10)", "driver": "Mesa 24.2.8",
           "features": ["shader-f16", "timestamp-query"],
           "limits": {"max-compute-workgroup-storage-size": 65536, "max-buffer-size": 4294967292}}


def _facts() -> dict:
    facts = collect(FIXTURE / "root", json.loads((FIXTURE / "overrides.json").read_text()))
    facts = copy.deepcopy(facts)
    # Plant private data where it could leak: a host name, a serial, a MAC, home paths in free text.
    facts["system"]["hostname"] = HOST
    facts["gpus"][0]["serial_number"] = SERIAL
    facts["gpus"][0]["unique_id"] = "0x1234abcd5678ef90"
    facts["env"] = {"HSA_OVERRIDE_GFX_VERSION": "10.3.0", "MIOPEN_USER_DB_PATH": f"/home/{USER}/.cache/miopen",
                    "NIC": MAC}
    return facts


def _report(**changes) -> dict:
    facts = _facts()
    args = dict(facts=facts, doctor_doc=document(facts, diagnose(facts)), probe_results=PROBE,
                probe_cases="essential", bench=BENCH, adapter=ADAPTER, quick=True, version="0.1.0",
                secrets=[HOST])
    args.update(changes)
    return build(**args)


def test_report_matches_its_schema_and_carries_what_a_reader_needs():
    report = _report()
    jsonschema.Draft202012Validator(schema()).validate(json.loads(json.dumps(report)))
    gpu = report["gpus"][0]
    assert (gpu["name"], gpu["pci_id"], gpu["gfx_target"]) == ("AMD Radeon RX 5600 XT", "1002:731f", "gfx1010")
    assert report["system"]["kernel"] == "6.8.0-51-generic"
    assert report["drivers"]["mesa"] == "Mesa 24.2.8-1ubuntu1~24.04.1" and report["drivers"]["rocm"] == "7.0.2-56"
    assert report["torch"]["version"] == "2.13.0+cpu"
    assert report["wgpu_adapter"]["limits"]["max-compute-workgroup-storage-size"] == 65536
    assert report["doctor"]["route"] == "wgpu"
    assert report["probe"]["summary"]["native"] == {"gpu-fault": 1}
    assert report["bench"]["results"][1]["median_ms"] == 2.1 and "losses" not in report["bench"]["results"][0]


def test_schema_rejects_a_report_missing_a_part_or_of_another_version():
    validator = jsonschema.Draft202012Validator(schema())
    report = json.loads(json.dumps(_report()))
    for broken in ({k: v for k, v in report.items() if k != "probe"}, {**report, "schema": "navitrain.report/2"},
                   {**report, "extra": 1}):
        assert not validator.is_valid(broken)


def test_nothing_private_in_the_json_or_the_markdown():
    report = _report()
    for text in (json.dumps(report), markdown.render(report)):
        for secret in (HOST, USER, MAC, SERIAL, "/home/", "0x1234abcd5678ef90"):
            assert secret not in text, secret
    # what was scrubbed stays readable
    assert "~/venv/lib/torch" in report["probe"]["results"][2]["detail"]
    assert report["gpu_env"]["HSA_OVERRIDE_GFX_VERSION"] == "10.3.0"


def test_this_machines_host_and_user_names_are_found_and_scrubbed(monkeypatch):
    monkeypatch.setattr(privacy.socket, "gethostname", lambda: "lab-box-7.example.org")
    monkeypatch.setattr(privacy.getpass, "getuser", lambda: "mlperson")
    secrets = privacy.local_secrets()
    assert "lab-box-7" in secrets and "mlperson" in secrets
    text = privacy.scrub_text("mlperson@lab-box-7 ran /Users/mlperson/x and /root/y; lab-box-7s stays", secrets)
    assert text == "<private>@<private> ran ~/x and ~/y; lab-box-7s stays"


def test_markdown_has_the_probe_matrix_with_failure_modes_and_the_bench():
    text = markdown.render(_report())
    assert "| case | cpu | wgpu | native HSA_OVERRIDE_GFX_VERSION=10.3.0 |" in text
    assert "| matmul | pass | pass |  |" in text
    assert "gpu-fault (gpu-fault)" in text and "- conv2d on native: gpu-fault [gpu-fault]" in text
    assert "| MLP | wgpu (graph) | ok | 64 | 2.1 | 30000 | 2.00 | 12 |" in text
    assert "navitrain.report/1" in text


def test_compare_marks_what_changed():
    before = _report()
    after_probe = copy.deepcopy(PROBE)
    after_probe[2] = {**after_probe[2], "outcome": "pass", "mode": None, "detail": ""}
    after = _report(probe_results=after_probe, adapter={**ADAPTER, "driver": "Mesa 25.0.1"})
    rows = {r["field"]: r for r in compare.compare(before, after)}
    cell = rows["probe conv2d @ native HSA_OVERRIDE_GFX_VERSION=10.3.0"]
    assert (cell["a"], cell["b"], cell["same"]) == ("gpu-fault (gpu-fault)", "pass", False)
    assert rows["bench mlp @ wgpu (graph) step ms"]["same"] is True
    text = compare.render_markdown(list(rows.values()), "before.json", "after.json", differences_only=True)
    assert "conv2d" in text and "matmul" not in text
