"""`navitrain doctor` on an adapter that flushes float32 subnormals (navitrain.float_modes): the Vulkan
child's probe result becomes an info finding, and a child that dies while probing keeps its adapter list."""
from __future__ import annotations

from navitrain.doctor import knowledge, probes
from navitrain.doctor.child import ChildResult

H100 = {"name": "NVIDIA H100 80GB HBM3", "vendor": "NVIDIA", "vendor_id": 0x10DE, "device_id": 0x2330,
        "adapter_type": "DiscreteGPU", "backend": "Vulkan", "driver": "580.159.04", "software": False}


def _findings(vulkan: dict) -> dict:
    return {f.id: f for f in knowledge.run_rules({"vulkan": vulkan})}


def test_a_flushing_adapter_is_an_info_finding():
    found = _findings({"status": "ok", "adapters": [H100], "chosen": 0, "hardware": True,
                       "flushes_subnormals": True})
    f = found["wgpu-flushes-subnormals"]
    assert f.severity == "info" and "H100" in f.title
    assert "torch.set_flush_denormal(True)" in f.why and "1.2e-38" in f.why


def test_no_finding_where_subnormals_survive_or_nobody_asked():
    for answer in (False, None, "yes"):
        vulkan = {"status": "ok", "adapters": [H100], "chosen": 0, "hardware": True, "flushes_subnormals": answer}
        assert "wgpu-flushes-subnormals" not in _findings(vulkan)
    assert "wgpu-flushes-subnormals" not in _findings({"status": "crashed", "flushes_subnormals": True})


def test_a_child_that_dies_probing_keeps_the_adapter_list(monkeypatch):
    listed = {"status": "ok", "wgpu_version": "0.32.0", "adapters": [dict(H100)], "chosen": 0}
    monkeypatch.setattr(probes, "run_python", lambda code, timeout, env: ChildResult(
        "crashed", listed, -11, "Segmentation fault", "killed by SIGSEGV"))
    data = probes.probe_vulkan()
    assert data["status"] == "ok" and data["adapters"][0]["driver_name"] == "NVIDIA"
    assert data["flushes_subnormals"] is None and "SIGSEGV" in data["float_probe_error"]


def test_the_live_child_reports_the_chosen_adapters_answer():
    """On this machine's adapter (lavapipe in CI), end to end through the child process."""
    data = probes.probe_vulkan()
    if data.get("status") != "ok" or data.get("chosen") is None:
        return  # no adapter here: tests/doctor's fixtures cover the rule
    assert isinstance(data["flushes_subnormals"], bool), data.get("float_probe_error")
    if "llvmpipe" in data["adapters"][data["chosen"]]["name"].lower():
        assert data["flushes_subnormals"] is False
