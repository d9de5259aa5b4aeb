"""wgpu tests run on a real adapter (lavapipe in CI) with NAVITRAIN_WGPU_STRICT=1: no silent CPU fallback,
and no silent skip when the adapter is missing -- the session fails instead."""
import os

import pytest

os.environ.setdefault("NAVITRAIN_WGPU_STRICT", "1")


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
