"""`navitrain doctor` and `navitrain explain` from the command line: on this machine (no GPU, lavapipe in
CI), on fixture trees, and on bad input."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from doctor_helpers import case_overrides, case_root, validate_doctor, validate_explain
from typer.testing import CliRunner

from navitrain.cli import app

runner = CliRunner()


def said(result) -> str:
    """The command's output with rich's line wrapping undone."""
    return " ".join(result.output.split())


@pytest.fixture(scope="module")
def this_machine():
    """One real `navitrain doctor --json` run (torch and Vulkan probed in child processes)."""
    result = runner.invoke(app, ["doctor", "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_doctor_json_on_this_machine_validates(this_machine):
    validate_doctor(this_machine)
    facts = this_machine["facts"]
    assert facts["live"] is True and facts["problems"] == []


def test_torch_facts_match_this_process(this_machine):
    import torch

    probed = this_machine["facts"]["torch"]
    assert probed["status"] == "ok" and probed["version"] == torch.__version__
    assert probed["hip"] == getattr(torch.version, "hip", None) and probed["cuda"] == torch.version.cuda
    build = "rocm" if probed["hip"] else ("cuda" if probed["cuda"] else "cpu")
    assert probed["build"] == build
    assert probed["arch_list"] == list(torch.cuda.get_arch_list())
    assert probed["device_count"] == (torch.cuda.device_count() if build != "cpu" else 0)


def test_vulkan_facts_on_this_machine(this_machine):
    vulkan = this_machine["facts"]["vulkan"]
    assert vulkan["status"] == "ok", vulkan
    adapters = vulkan["adapters"]
    assert vulkan["hardware"] == any(not a["software"] for a in adapters)
    if adapters:
        assert 0 <= vulkan["chosen"] < len(adapters)
    for a in adapters:
        assert a["backend"] in ("Vulkan", "Metal", "DX12")
        if "llvmpipe" in a["name"]:
            assert a["software"] is True and a["driver_name"] == "llvmpipe"
    if os.environ.get("CI"):
        # CI installs lavapipe (.ci/run): the adapter list must not silently be empty there.
        assert any(a["driver_name"] == "llvmpipe" for a in adapters)


def test_this_machine_report_makes_sense(this_machine):
    facts = this_machine["facts"]
    assert facts["system"]["python"] == ".".join(map(str, sys.version_info[:3]))
    rec = this_machine["recommendation"]
    assert rec["route"] in ("native", "nomiopen", "wgpu", "cpu")
    if not facts["gpus"] and not facts["vulkan"]["hardware"]:  # this CI machine: no GPU, lavapipe only
        assert rec["route"] == "cpu"
        assert "no-gpu" in {f["id"] for f in this_machine["findings"]}


def test_doctor_text_report_on_this_machine(this_machine, tmp_path):
    # Reuse the probe results of the JSON run: the file facts are read live again, the text is rendered.
    facts = this_machine["facts"]
    saved = tmp_path / "probed.json"
    saved.write_text(json.dumps({k: facts[k] for k in ("torch", "vulkan", "rocminfo")}))
    result = runner.invoke(app, ["doctor", "--overrides", str(saved)], env={"COLUMNS": "120"})
    assert result.exit_code == 0, result.output
    text = result.stdout
    for expected in ("navitrain doctor", "Machine", "PyTorch", facts["torch"]["version"], "Vulkan", "Findings",
                     f"Recommended route: {this_machine['recommendation']['route']}"):
        assert expected in text, expected
    if facts["vulkan"]["adapters"]:
        assert "Vulkan adapters (wgpu)" in text and facts["vulkan"]["adapters"][0]["driver_name"] in text


@pytest.mark.parametrize("name,route", [("rx5600xt-rocm7-cputorch", "wgpu"), ("rx7900xtx-gfx1100", "native"),
                                        ("no-gpu", "cpu")])
def test_doctor_on_fixture_trees(name, route, tmp_path):
    overrides = tmp_path / "overrides.json"
    overrides.write_text(json.dumps(case_overrides(name)))
    result = runner.invoke(app, ["doctor", "--json", "--root", str(case_root(name)), "--overrides", str(overrides)])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    validate_doctor(doc)
    assert doc["recommendation"]["route"] == route and doc["root"] == str(case_root(name))


def test_doctor_bad_input_is_a_clear_error(tmp_path):
    result = runner.invoke(app, ["doctor", "--root", str(tmp_path / "nope")])
    assert result.exit_code == 2 and "is not a directory" in said(result)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    result = runner.invoke(app, ["doctor", "--root", str(tmp_path), "--overrides", str(bad)])
    assert result.exit_code == 2 and "not valid JSON" in said(result)
    bad.write_text("[1, 2]")
    result = runner.invoke(app, ["doctor", "--root", str(tmp_path), "--overrides", str(bad)])
    assert result.exit_code == 2 and "JSON object" in said(result)
    result = runner.invoke(app, ["doctor", "--root", str(tmp_path), "--overrides", str(tmp_path / "missing.json")])
    assert result.exit_code == 2 and "cannot read" in said(result)


def test_python_dash_m_navitrain_doctor_works():
    proc = subprocess.run([sys.executable, "-m", "navitrain", "doctor", "--json", "--no-probe", "--root",
                           str(case_root("rx5700xt-override-mtype"))], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["facts"]["gpus"][0]["name"] == "AMD Radeon RX 5700 XT"
    assert "mtype-local-no-effect" in {f["id"] for f in doc["findings"]}


APERTURE = ("HSA_STATUS_ERROR_MEMORY_APERTURE_VIOLATION: The agent attempted to access memory beyond the largest "
            "legal address. code: 0x29")


def test_explain_file_json(tmp_path):
    log = tmp_path / "crash.log"
    log.write_text(f"Traceback...\n{APERTURE}\nSegmentation fault (core dumped)\n")
    result = runner.invoke(app, ["explain", str(log), "--json", "--no-facts"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    validate_explain(doc)
    assert [m["id"] for m in doc["modes"]] == ["gfx-override-fault"]
    assert doc["modes"][0]["lines"][0] == APERTURE


def test_explain_stdin_text():
    result = runner.invoke(app, ["explain", "--no-facts"],
                           input="rocBLAS error: Cannot read /opt/rocm/lib/rocblas/library/TensileLibrary.dat: "
                                 "No such file or directory\n")
    assert result.exit_code == 0, result.output
    assert "rocblas-missing-arch" in result.stdout and "Fix:" in result.stdout


def test_explain_adds_the_machine_context(tmp_path):
    name = "rx5700xt-override-mtype"
    overrides = tmp_path / "overrides.json"
    overrides.write_text(json.dumps(case_overrides(name)))
    log = tmp_path / "crash.log"
    log.write_text(APERTURE + "\n")
    result = runner.invoke(app, ["explain", str(log), "--json", "--root", str(case_root(name)),
                                 "--overrides", str(overrides)])
    assert result.exit_code == 0, result.output
    (mode,) = json.loads(result.stdout)["modes"]
    assert any("HSA_OVERRIDE_GFX_VERSION=10.3.0" in note and "Unset it" in note for note in mode["context"])


def test_explain_unknown_and_binary_logs(tmp_path):
    log = tmp_path / "blob.bin"
    log.write_bytes(bytes(range(256)) * 64)
    result = runner.invoke(app, ["explain", str(log), "--json", "--no-facts"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    validate_explain(doc)
    assert [m["id"] for m in doc["modes"]] == ["unknown"]


def test_explain_bad_input(tmp_path):
    result = runner.invoke(app, ["explain", str(tmp_path / "nope.log")])
    assert result.exit_code == 2 and "does not exist" in said(result)
    result = runner.invoke(app, ["explain", str(tmp_path)])
    assert result.exit_code == 2 and "is a directory" in said(result)
