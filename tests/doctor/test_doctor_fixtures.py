"""Each fixture tree is a machine: its GPU must be identified, and its findings and route must be the
ones the knowledge notes call for."""
from __future__ import annotations

import io

import pytest
from doctor_helpers import CASES, case_overrides, case_root, validate_doctor
from rich.console import Console

from navitrain.doctor import collect, diagnose, recommendation
from navitrain.doctor.report import document, render


def run_case(name: str):
    facts = collect(case_root(name), case_overrides(name))
    findings = diagnose(facts)
    return facts, findings, {f.id: f for f in findings}


def severities(findings, *levels):
    return {f.id for f in findings if f.severity in levels}


def test_every_required_machine_has_a_fixture():
    assert {"rx5600xt-rocm7-cputorch", "rx5700xt-override-mtype", "rx5500xt-gfx1012", "rx6600-gfx1032",
            "rx7900xtx-gfx1100", "nvidia-rtx4090", "no-gpu"} <= set(CASES)


@pytest.mark.parametrize("case", CASES)
def test_fixture_reports_validate_and_render(case):
    facts, findings, _ = run_case(case)
    doc = document(facts, findings)
    validate_doctor(doc)
    assert facts["problems"] == []
    assert not [f for f in findings if f.id == "doctor-internal-error"]
    assert facts["torch"]["status"] == "ok"  # came from overrides.json, not from this machine
    out = io.StringIO()
    render(doc, Console(file=out, width=120, color_system=None))
    text = out.getvalue()
    assert "Findings" in text and f"Recommended route: {doc['recommendation']['route']}" in text


def test_rx5600xt_on_rocm7_with_cpu_torch_is_sent_to_wgpu():
    facts, findings, by_id = run_case("rx5600xt-rocm7-cputorch")
    (gpu,) = facts["gpus"]
    assert (gpu["vendor_id"], gpu["device_id"], gpu["revision"]) == ("0x1002", "0x731f", "0xca")
    assert gpu["name"] == "AMD Radeon RX 5600 XT"  # revision 0xca of 0x731f, not the 5700 XT
    assert (gpu["chip"], gpu["family"], gpu["gfx_target"], gpu["gfx_source"]) == ("Navi 10", "RDNA1", "gfx1010", "kfd")
    assert facts["rocm"]["version"] == "7.0.2-56"
    assert by_id["torch-cpu-only-with-gpu"].severity == "warning"
    assert by_id["rocblas-missing-arch-system"].severity == "warning"  # ROCm 7.0 ships no gfx1010 rocBLAS
    assert "gfx1010" in by_id["rocblas-missing-arch-system"].title
    assert "vulkan-hardware" in by_id and "RADV" in by_id["vulkan-hardware"].title
    assert severities(findings, "error") == set()
    rec = recommendation(findings)
    assert rec.route == "wgpu" and "CPU-only" in rec.why


def test_rx5700xt_with_override_and_mtype_local():
    facts, findings, by_id = run_case("rx5700xt-override-mtype")
    (gpu,) = facts["gpus"]
    assert gpu["name"] == "AMD Radeon RX 5700 XT" and gpu["gfx_target"] == "gfx1010"
    fault = by_id["hsa-override-rdna1-fault"]
    assert fault.severity == "error" and "10.3.0" in fault.title
    assert any("stable-diffusion-webui/issues/11942" in src for src in fault.sources)
    mtype = by_id["mtype-local-no-effect"]
    assert mtype.severity == "warning"
    assert "/etc/modprobe.d/amdgpu.conf" in mtype.why and "running module" in mtype.why
    # The override points torch at gfx1030 code; that does not count as code for this card.
    assert by_id["torch-arch-missing"].severity == "error" and "gfx1010" in by_id["torch-arch-missing"].title
    assert "torch-arch-ok" not in by_id
    assert by_id["miopen-gfx10-training"].severity == "warning"
    rec = recommendation(findings)
    assert rec.route == "wgpu" and "HSA_OVERRIDE_GFX_VERSION=10.3.0" in rec.why


def test_rx5500xt_gfx1012_without_kfd_access():
    facts, findings, by_id = run_case("rx5500xt-gfx1012")
    (gpu,) = facts["gpus"]
    assert (gpu["name"], gpu["chip"], gpu["gfx_target"]) == ("AMD Radeon RX 5500 XT", "Navi 14", "gfx1012")
    assert facts["kfd_nodes"][0]["gfx_target_version"] == 100102
    assert by_id["kfd-no-access"].severity == "error" and "usermod -aG render,video sam" in by_id["kfd-no-access"].fix
    suggestion = by_id["hsa-override-suggested"]
    assert "10.1.0" in suggestion.title and "never 10.3.0" in suggestion.fix
    assert by_id["torch-arch-missing"].severity == "error"
    assert by_id["torch-no-device"].severity == "error"
    assert by_id["rocminfo-failed"].severity == "warning"
    assert recommendation(findings).route == "wgpu"


def test_rx6600_gfx1032_with_the_right_override_uses_native():
    facts, findings, by_id = run_case("rx6600-gfx1032")
    (gpu,) = facts["gpus"]
    assert (gpu["name"], gpu["family"], gpu["gfx_target"]) == ("AMD Radeon RX 6600", "RDNA2", "gfx1032")
    assert by_id["hsa-override-rdna2"].severity == "ok"
    assert "through HSA_OVERRIDE_GFX_VERSION" in by_id["torch-arch-ok"].title
    assert severities(findings, "error", "warning") == set()
    assert recommendation(findings).route == "native"


def test_rx7900xtx_gfx1100_healthy_stack():
    facts, findings, by_id = run_case("rx7900xtx-gfx1100")
    (gpu,) = facts["gpus"]
    assert (gpu["name"], gpu["chip"], gpu["family"], gpu["gfx_target"]) == (
        "AMD Radeon RX 7900 XTX", "Navi 31", "RDNA3", "gfx1100")
    assert gpu["vram_bytes"] == 24 << 30
    assert severities(findings, "error", "warning") == set()
    assert {"kfd-ok", "torch-arch-ok", "torch-devices", "rocm-installed", "vulkan-hardware"} <= set(by_id)
    assert "miopen-gfx10-training" not in by_id
    assert recommendation(findings).route == "native"


def test_nvidia_machine():
    facts, findings, by_id = run_case("nvidia-rtx4090")
    (gpu,) = facts["gpus"]
    assert (gpu["vendor"], gpu["device_id"], gpu["driver"]) == ("NVIDIA", "0x2684", "nvidia")
    assert gpu["name"] == "NVIDIA GeForce RTX 4090"  # from torch/Vulkan: the table only knows the vendor
    assert gpu["gfx_target"] is None and gpu["known"] is False
    amd_only = {"kfd-missing", "kfd-no-access", "rocm-not-installed", "amdgpu-not-bound", "miopen-gfx10-training"}
    assert not amd_only & set(by_id)
    assert severities(findings, "error", "warning") == set()
    assert recommendation(findings).route == "native"


def test_no_gpu_machine():
    facts, findings, by_id = run_case("no-gpu")
    assert facts["gpus"] == []  # the NIC at 0000:00:02.0 is not a display controller
    assert by_id["no-gpu"].severity == "info"
    assert by_id["vulkan-software-only"].severity == "info"
    assert severities(findings, "error", "warning") == set()
    assert recommendation(findings).route == "cpu"


def test_fixture_trees_are_not_probed_and_not_this_machine(tmp_path):
    facts = collect(case_root("rx7900xtx-gfx1100"))  # no overrides: nothing may leak in from this machine
    assert facts["live"] is False
    assert facts["env"] is None and facts["user"] is None
    for name in ("torch", "vulkan", "rocminfo"):
        assert facts[name]["status"] == "skipped"
    findings = diagnose(facts)
    rec = recommendation(findings)
    assert rec.route == "cpu" and "until Vulkan is checked" in rec.title and "not probed" in rec.why


@pytest.mark.parametrize("value,expected", [
    ("10.3.0", "hsa-override-rdna1-fault"), ("11.0.0", "hsa-override-rdna1-fault"),
    ("10.1.0", "hsa-override-rdna1-sibling"), ("10.2", "hsa-override-malformed")])
def test_override_values_on_rdna1_siblings(value, expected):
    overrides = case_overrides("rx5500xt-gfx1012") | {"env": {"HSA_OVERRIDE_GFX_VERSION": value}}
    findings = diagnose(collect(case_root("rx5500xt-gfx1012"), overrides))
    assert expected in {f.id for f in findings}


def test_override_on_rdna1_gfx1010_with_10_1_0_is_a_noop():
    overrides = case_overrides("rx5600xt-rocm7-cputorch") | {"env": {"HSA_OVERRIDE_GFX_VERSION": "10.1.0"}}
    by_id = {f.id: f for f in diagnose(collect(case_root("rx5600xt-rocm7-cputorch"), overrides))}
    assert by_id["hsa-override-noop"].severity == "info"


def test_rdna2_without_override_gets_the_suggestion():
    overrides = case_overrides("rx6600-gfx1032") | {"env": {}}
    findings = diagnose(collect(case_root("rx6600-gfx1032"), overrides))
    by_id = {f.id: f for f in findings}
    assert "10.3.0" in by_id["hsa-override-suggested"].title
    assert by_id["torch-arch-missing"].severity == "error"
    assert recommendation(findings).route == "wgpu"


def test_rdna1_with_a_torch_built_for_it_goes_to_nomiopen():
    overrides = case_overrides("rx5700xt-override-mtype")
    overrides["env"] = {}
    overrides["torch"] = dict(overrides["torch"], arch_list=["gfx1010"], bundled_rocblas_arches=["gfx1010"],
                              devices=[{"index": 0, "name": "AMD Radeon RX 5700 XT", "arch": "gfx1010"}])
    findings = diagnose(collect(case_root("rx5700xt-override-mtype"), overrides))
    rec = recommendation(findings)
    assert rec.route == "nomiopen" and "MIOpen" in rec.why and "wgpu" in rec.why


def test_broken_vulkan_and_crashed_torch_are_rows_not_crashes():
    overrides = case_overrides("rx5600xt-rocm7-cputorch")
    overrides["vulkan"] = {"status": "crashed", "error": "killed by SIGSEGV", "returncode": -11,
                           "stderr_tail": "Segmentation fault", "stderr_modes": [], "gpu_fault": False}
    overrides["torch"] = {"status": "crashed", "error": "killed by SIGABRT: Memory access fault by GPU node-1",
                          "returncode": -6, "stderr_tail": "Memory access fault by GPU node-1 (Agent handle: 0x1)",
                          "stderr_modes": ["gfx-override-fault"], "gpu_fault": True}
    facts = collect(case_root("rx5600xt-rocm7-cputorch"), overrides)
    findings = diagnose(facts)
    validate_doctor(document(facts, findings))
    by_id = {f.id: f for f in findings}
    assert by_id["torch-broken"].severity == "error" and "GPU itself faulted" in by_id["torch-broken"].why
    assert by_id["vulkan-probe-failed"].severity == "error"
    assert recommendation(findings).route == "cpu"


def test_missing_vulkan_driver_gets_install_advice():
    overrides = case_overrides("rx5600xt-rocm7-cputorch")
    overrides["vulkan"] = {"status": "ok", "adapters": [], "chosen": None, "hardware": False}
    by_id = {f.id: f for f in diagnose(collect(case_root("rx5600xt-rocm7-cputorch"), overrides))}
    assert by_id["vulkan-no-adapter"].severity == "warning"
    assert "mesa-vulkan-drivers" in by_id["vulkan-no-adapter"].fix


def test_llvmpipe_only_beside_a_real_gpu_is_a_warning():
    overrides = case_overrides("rx5600xt-rocm7-cputorch")
    overrides["vulkan"] = {"status": "ok", "adapters": [overrides["vulkan"]["adapters"][1]], "chosen": 0,
                           "hardware": False}
    findings = diagnose(collect(case_root("rx5600xt-rocm7-cputorch"), overrides))
    by_id = {f.id: f for f in findings}
    assert by_id["vulkan-software-only"].severity == "warning"
    assert recommendation(findings).route == "cpu"
