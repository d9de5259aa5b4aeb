"""Every doctor finding says only what its facts show.

Each fixture machine is run as it is and in variants that change one fact (Vulkan not examined, a CUDA
build that sees no GPU, one that sees two, a ROCm whose version is unknown). Each finding's text is then
checked against claims that must hold of the facts whenever the text makes them: a finding may not say
"Vulkan offers no hardware adapter" when Vulkan was not examined, nor "torch.cuda.device_count() > 0"
when it is 0.
"""
from __future__ import annotations

import copy
import re

import pytest
from doctor_helpers import CASES, case_overrides, case_root

from navitrain.doctor import collect, diagnose
from navitrain.doctor.situation import Situation


def _cuda_torch(count: int) -> dict:
    return {"status": "ok", "version": "2.13.0+cu128", "build": "cuda", "cuda": "12.8", "hip": None,
            "arch_list": ["sm_80", "sm_90"], "device_count": count,
            "devices": [{"index": i, "name": f"NVIDIA Test {i}", "arch": None} for i in range(count)]}


def _variant(overrides: dict, variant: str) -> dict:
    out = copy.deepcopy(overrides)
    if variant == "vulkan-not-examined":
        out["vulkan"] = {"status": "skipped", "error": "not probed"}
    elif variant.startswith("cuda-sees-"):
        out["torch"] = _cuda_torch(int(variant.rsplit("-", 1)[1]))
    return out


VARIANTS = ("as-is", "vulkan-not-examined", "cuda-sees-0", "cuda-sees-2", "rocm-version-unknown")


def _facts(case: str, variant: str) -> dict:
    facts = collect(case_root(case), _variant(case_overrides(case), variant))
    if variant == "rocm-version-unknown" and isinstance(facts.get("rocm"), dict) and facts["rocm"].get("installed"):
        facts["rocm"]["version"] = None
    return facts


# (what the text says, the fact that must then hold, a description for the failure message)
CLAIMS = (
    (r"PyTorch sees (\d+) GPU", lambda s, m: s.torch_device_count == int(m.group(1)) > 0,
     "the count PyTorch reports, and more than 0"),
    (r"device_count\(\) > 0", lambda s, m: (s.torch_device_count or 0) > 0, "device_count() > 0"),
    (r"device_count\(\) is (\d+)", lambda s, m: s.torch_device_count == int(m.group(1)), "that count"),
    (r"sees (\d+) GPU\(s\)", lambda s, m: s.torch_device_count == int(m.group(1)), "that count"),
    (r"and it sees it|and sees it", lambda s, m: (s.torch_device_count or 0) > 0, "torch sees a GPU"),
    (r"Vulkan offers no hardware adapter|no hardware Vulkan adapter",
     lambda s, m: s.vulkan_hardware is False, "Vulkan was examined and has no hardware adapter"),
    (r"sysfs lists no display controller|No GPU in sysfs", lambda s, m: not s.facts.get("gpus"), "no sysfs GPU"),
    (r"this machine has no GPU", lambda s, m: not s.gpus and s.vulkan_hardware is False,
     "no GPU anywhere, Vulkan included"),
    (r"is a CPU-only build", lambda s, m: s.torch_build == "cpu", "a CPU build"),
    (r"is a CUDA build", lambda s, m: s.torch_build == "cuda", "a CUDA build"),
    (r"is a ROCm build", lambda s, m: s.torch_build == "rocm", "a ROCm build"),
    (r"has code for (gfx\w+)",
     lambda s, m: m.group(1) in s.arch_list or (m.group(1) == s.gfx and s.code_gfx in s.arch_list),
     "the gfx (or the one its override runs as) in torch's arch list"),
    (r"^ROCm (\d[\w.\-]*) at", lambda s, m: m.group(1) == (s.rocm.get("version") or ""), "the ROCm version"),
    (r"from its version file", lambda s, m: False, "a version file (the version may come from elsewhere)"),
)
# Text that is never a true sentence: a Python None, an empty list after a colon, doubled punctuation.
BROKEN = (r"\bNone\b", r":\s*$", r":\s*\.", r"(?<!\.)\.\.(?!\.)", r"\bfor no GPU\b", r"is none\b")


def _texts(finding) -> list[str]:
    return [t for t in (finding.title, finding.why, finding.fix) if t]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("case", CASES)
def test_every_finding_says_only_what_the_facts_show(case, variant):
    facts = _facts(case, variant)
    s = Situation(facts)
    for finding in diagnose(facts):
        assert finding.id != "doctor-internal-error", finding
        for text in _texts(finding):
            for pattern, holds, meaning in CLAIMS:
                for m in re.finditer(pattern, text):
                    assert holds(s, m), \
                        f"{finding.id} says {m.group(0)!r} but the facts do not show {meaning}: {text!r}"
            for pattern in BROKEN:
                assert not re.search(pattern, text), f"{finding.id}: broken sentence {text!r}"


def test_a_cuda_build_without_a_gpu_says_a_cpu_build_would_do():
    facts = _facts("no-gpu", "cuda-sees-0")
    by_id = {f.id: f for f in diagnose(facts)}
    assert "torch-devices" not in by_id
    found = by_id["torch-gpu-build-without-gpu"]
    assert found.severity == "info" and "CPU-only build" in found.why and "device_count() is 0" in found.why


def test_a_gpu_torch_sees_reports_its_count_and_names():
    facts = _facts("nvidia-rtx4090", "cuda-sees-2")
    found = {f.id: f for f in diagnose(facts)}["torch-devices"]
    assert found.title == "PyTorch sees 2 GPU(s): NVIDIA Test 0, NVIDIA Test 1"
    assert found.why == "torch.cuda.device_count() is 2."


def test_no_gpu_without_vulkan_examined_does_not_claim_vulkan_was_seen():
    facts = _facts("no-gpu", "vulkan-not-examined")
    findings = diagnose(facts)
    no_gpu = next(f for f in findings if f.id == "no-gpu")
    assert "not examined" in no_gpu.why
    route = next(f for f in findings if f.route)
    assert route.route == "cpu" and "not examined" in route.why
