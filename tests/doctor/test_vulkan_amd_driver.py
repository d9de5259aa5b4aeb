"""doctor on an AMD card says which Vulkan driver the wgpu route will use (RADV, AMDVLK, both, none) and
warns when RADV's Mesa is older than knowledge.RADV_MIN_MESA."""
from __future__ import annotations

import copy

import pytest
from doctor_helpers import case_overrides, case_root

from navitrain.doctor import collect, diagnose

AMDVLK_ADAPTER = {"name": "AMD Radeon RX 5600 XT", "vendor": "amd", "vendor_id": 4098, "device_id": 29471,
                  "adapter_type": "DiscreteGPU", "backend": "Vulkan", "driver": "2023.Q3.3 (LLPC)",
                  "software": False, "driver_name": "AMD open-source driver"}


@pytest.fixture(scope="module")
def rx5600xt_facts():
    return collect(case_root("rx5600xt-rocm7-cputorch"), case_overrides("rx5600xt-rocm7-cputorch"))


def _findings(facts):
    return {f.id: f for f in diagnose(facts) if f.id in ("vulkan-amd-driver", "vulkan-old-mesa")}


def test_radv_alone_is_named_with_its_mesa(rx5600xt_facts):
    found = _findings(rx5600xt_facts)
    assert found["vulkan-amd-driver"].severity == "ok"
    assert "RADV" in found["vulkan-amd-driver"].title and "Mesa 24.2.8" in found["vulkan-amd-driver"].title
    assert "vulkan-old-mesa" not in found


def test_both_drivers_installed_say_which_one_wins(rx5600xt_facts):
    facts = copy.deepcopy(rx5600xt_facts)
    facts["vulkan_icds"] = [{"file": "/usr/share/vulkan/icd.d/radeon_icd.x86_64.json", "library_path": None,
                             "driver": "RADV"},
                            {"file": "/etc/vulkan/icd.d/amd_icd64.json", "library_path": None, "driver": "AMDVLK"}]
    facts["vulkan"]["adapters"].insert(0, dict(AMDVLK_ADAPTER))
    facts["vulkan"]["chosen"] = 0  # wgpu picked AMDVLK's adapter
    driver = _findings(facts)["vulkan-amd-driver"]
    assert "AMD open-source driver" in driver.title
    assert "AMDVLK, RADV (Mesa)" in driver.why and "AMD_VULKAN_ICD=RADV" in driver.why


def test_old_mesa_gets_a_warning(rx5600xt_facts):
    facts = copy.deepcopy(rx5600xt_facts)
    facts["vulkan"]["adapters"][0]["driver"] = "Mesa 20.0.8"
    found = _findings(facts)
    assert found["vulkan-old-mesa"].severity == "warning"
    assert "20.0" in found["vulkan-old-mesa"].title and "20.2" in found["vulkan-old-mesa"].title


def test_no_amd_adapter_is_a_warning(rx5600xt_facts):
    facts = copy.deepcopy(rx5600xt_facts)
    facts["vulkan"]["adapters"] = [a for a in facts["vulkan"]["adapters"] if a["software"]]
    facts["vulkan"]["chosen"] = 0
    facts["vulkan_icds"] = []
    driver = _findings(facts)["vulkan-amd-driver"]
    assert driver.severity == "warning" and "no AMD Vulkan driver" in driver.why


def test_nvidia_machine_gets_no_amd_driver_finding():
    facts = collect(case_root("nvidia-rtx4090"), case_overrides("nvidia-rtx4090"))
    assert _findings(facts) == {}
