"""wgpu tests run on a real adapter (lavapipe in CI) with NAVITRAIN_WGPU_STRICT=1: no silent CPU fallback,
and no silent skip when the adapter is missing -- the session fails instead."""
import os
import warnings

import pytest

SUITE_STRICT = os.environ.setdefault("NAVITRAIN_WGPU_STRICT", "1")


@pytest.fixture(autouse=True)
def suite_strictness(monkeypatch):
    """Every test starts with the suite's strictness, whatever an earlier test left in os.environ (a CI
    run once found it off by the time tests/wgpu/test_host_fast_paths.py ran); `lenient` and `strict`
    below override it for one test."""
    left = os.environ.get("NAVITRAIN_WGPU_STRICT")
    if left != SUITE_STRICT:  # say so: whatever changed it outside monkeypatch should be found
        warnings.warn(f"NAVITRAIN_WGPU_STRICT was {left!r} at the start of this test (suite: {SUITE_STRICT!r})")
    monkeypatch.setenv("NAVITRAIN_WGPU_STRICT", SUITE_STRICT)


@pytest.fixture(scope="session", autouse=True)
def wgpu_adapter():
    import navitrain.wgpu as nw

    info = nw.adapter_info()  # raises (fails the session) when no Vulkan/Metal/DX12 adapter exists
    assert info["name"], "the wgpu device has no adapter"
    if os.environ.get("CI"):
        # CI machines have no GPU: the suite must really be running kernels on lavapipe.
        assert info["backend"] == "Vulkan", info
    return info


@pytest.fixture
def strict(monkeypatch):
    monkeypatch.setenv("NAVITRAIN_WGPU_STRICT", "1")


@pytest.fixture
def lenient(monkeypatch):
    monkeypatch.setenv("NAVITRAIN_WGPU_STRICT", "0")


@pytest.fixture
def fresh_compile_state():
    """A clean slate for tests of compiled graphs: no graph left from an earlier test in dynamo's cache,
    compile statistics and fallback counts at zero. Afterwards the fusion switch is as it was (tests flip
    it to compare fused against unfused graphs), and the test must not have taken a CPU fallback (strict
    mode raises on one; this makes sure). Modules that need it everywhere say
    `pytestmark = pytest.mark.usefixtures("fresh_compile_state")`."""
    import torch

    import navitrain.wgpu as nw
    import navitrain.wgpu.compile as wc
    from navitrain.wgpu import fusion

    fusion_enabled = fusion.ENABLED
    torch._dynamo.reset()
    wc.reset_stats()
    nw.reset_fallback_counts()
    yield
    fusion.ENABLED = fusion_enabled
    torch._dynamo.reset()
    assert nw.fallback_report()["total_fallback_calls"] == 0
