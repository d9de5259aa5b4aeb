"""The other roads to training on RDNA1 (doctor/data/roads.json): each fixture machine gets the roads that can
apply to it, with an install line, limits and sources, and never one that cannot (DirectML on Linux, a
gfx1010-only source build on Windows, an HSA override to 10.3.0 on gfx101x)."""
from __future__ import annotations

import copy
import json
from importlib import resources

import pytest
from doctor_helpers import case_overrides, case_root

from navitrain.doctor import collect, diagnose, recommendation
from navitrain.doctor.roads import load

RX5600 = "rx5600xt-rocm7-cputorch"
RDNA1_GFX = ("gfx1010", "gfx1011", "gfx1012")


def _diagnose(case: str, **changes):
    overrides = copy.deepcopy(case_overrides(case))
    overrides.update(changes)
    return diagnose(collect(case_root(case), overrides))


def _roads(findings) -> set[str]:
    return {f.id for f in findings if f.id.startswith("road-")}


def _rocm_torch(version: str, arch_list: list[str]) -> dict:
    torch = copy.deepcopy(case_overrides(RX5600)["torch"])
    torch.update({"version": version, "build": "rocm", "hip": "7.0", "arch_list": arch_list, "device_count": 1,
                  "devices": [{"name": "AMD Radeon RX 5600 XT", "gcn_arch": "gfx1010"}]})
    return torch


def _no_override_to_rdna2(findings) -> None:
    for f in findings:
        assert "export HSA_OVERRIDE_GFX_VERSION=10.3.0" not in (f.fix or ""), f.id


def test_the_data_file_is_complete():
    raw = json.loads(resources.files("navitrain.doctor").joinpath("data/roads.json").read_text())
    assert raw["checked"]
    roads = load()
    assert {r.id for r in roads} >= {"therock", "rocm-sdk-builder", "dlprim", "directml"}
    for road in roads:
        assert road.install and road.limits and road.sources and road.verified, road.id
        assert set(road.platforms) <= {"linux", "windows"}, road.id
        assert road.speed or road.speed_note, f"{road.id}: say what is known of its speed, even 'nothing'"
        for figure in road.speed:
            assert figure["source"], road.id
    therock = next(r for r in roads if r.id == "therock")
    assert "torch[device-gfx1012]" in therock.install_for("gfx1012")


def test_rx5600xt_with_cpu_only_torch_hears_of_every_linux_road():
    findings = _diagnose(RX5600)
    assert _roads(findings) == {"road-therock", "road-rocm-sdk-builder", "road-dlprim"}
    by_id = {f.id: f for f in findings}
    therock = by_id["road-therock"]
    assert '"torch[device-gfx1010]"' in therock.fix and "rocm.nightlies.amd.com/whl-multi-arch" in therock.fix
    assert "navitrain probe" in therock.why and "has not" in therock.why
    assert any("ROCm/TheRock" in s for s in therock.sources)
    assert "71%" in by_id["road-dlprim"].why  # the published figure, with its source
    assert "No OpenCL driver is installed" in by_id["road-dlprim"].fix
    assert all(f.severity == "info" for f in findings if f.id.startswith("road-"))
    assert recommendation(findings).route == "wgpu"  # navitrain's own route still comes first
    _no_override_to_rdna2(findings)


def test_an_installed_opencl_driver_is_named(tmp_path):
    findings = _diagnose(RX5600, opencl_icds=[{"file": "/etc/OpenCL/vendors/amdocl64.icd",
                                                "library": "libamdocl64.so"}])
    assert "libamdocl64.so" in {f.id: f for f in findings}["road-dlprim"].fix


def test_rocm7_torch_without_gfx1010_code():
    arches = ["gfx900", "gfx906", "gfx908", "gfx90a", "gfx942", "gfx1030", "gfx1100", "gfx1101", "gfx1102"]
    findings = _diagnose(RX5600, torch=_rocm_torch("2.9.0+rocm7.0", arches))
    ids = {f.id for f in findings}
    assert {"road-therock", "road-rocm-sdk-builder", "road-dlprim"} <= ids
    assert "road-directml" not in ids
    _no_override_to_rdna2(findings)


def test_therock_build_with_gfx1010_code_is_recognised_and_not_reinstalled():
    arches = ["gfx1010", "gfx1030", "gfx1100"]
    findings = _diagnose(RX5600, torch=_rocm_torch("2.13.0+rocm7.13.0a20261101", arches))
    roads = _roads(findings)
    assert roads == {"road-therock-installed"}, roads
    installed = {f.id: f for f in findings}["road-therock-installed"]
    assert "navitrain probe" in installed.fix
    assert recommendation(findings).route == "nomiopen"  # RDNA1 with a ROCm torch that has its code
    _no_override_to_rdna2(findings)


def test_windows_machine_gets_windows_roads_only(tmp_path):
    gpu = {"vendor_id": "0x1002", "device_id": "0x731f", "revision": "0xca", "vendor": "AMD",
           "name": "AMD Radeon RX 5600 XT", "gfx_target": "gfx1010", "family": "RDNA1", "known": True}
    overrides = copy.deepcopy(case_overrides(RX5600))
    overrides.update(system={"kernel": None, "os": "Windows 11", "python": "3.12.1", "machine": "AMD64",
                             "platform": "Windows"}, gpus=[gpu])
    findings = diagnose(collect(tmp_path, overrides))
    roads = _roads(findings)
    assert roads == {"road-therock", "road-dlprim", "road-directml"}, roads
    assert "road-rocm-sdk-builder" not in roads  # Linux only


@pytest.mark.parametrize("case", ["nvidia-rtx4090", "no-gpu", "rx6600-gfx1032"])
def test_machines_that_need_no_other_road_hear_of_none(case):
    findings = _diagnose(case)
    assert not _roads(findings)
    assert not any(f.id == "road-directml" for f in findings)


@pytest.mark.parametrize("case", ["rx5500xt-gfx1012", "rx5700xt-override-mtype"])
def test_other_rdna1_fixtures_get_their_own_gfx_in_the_install_line(case):
    findings = _diagnose(case)
    by_id = {f.id: f for f in findings}
    gfx = collect(case_root(case), case_overrides(case))["gpus"][0]["gfx_target"]
    assert gfx in RDNA1_GFX
    assert f"device-{gfx}" in by_id["road-therock"].fix
    assert "road-directml" not in by_id  # these are Linux machines
    _no_override_to_rdna2(findings)
