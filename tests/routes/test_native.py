"""Route `native`: availability says plainly why it is absent; on a GPU it prepares a working device."""
import pytest
import torch

from navitrain.routes import registry

HAS_GPU_BUILD = torch.version.cuda is not None or getattr(torch.version, "hip", None) is not None


@pytest.mark.skipif(HAS_GPU_BUILD, reason="this torch is a CUDA/ROCm build")
def test_cpu_build_is_unavailable_with_the_reason():
    availability = registry.get("native").availability()
    assert not availability.ok
    assert availability.reason == f"torch {torch.__version__} is a CPU-only build (no CUDA or ROCm)"


def test_availability_never_raises_and_describes_the_stack():
    availability = registry.get("native").availability()
    assert isinstance(availability.ok, bool)
    assert availability.reason.startswith(f"torch {torch.__version__}")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA/ROCm GPU")
def test_gpu_route_prepares_a_device_that_matches_the_cpu():
    route = registry.get("native")
    availability = route.availability()
    assert availability.ok and "GPU" in availability.reason
    dev = route.prepare()
    assert dev.type == "cuda"
    a, b = torch.randn(64, 32, dtype=torch.float64), torch.randn(32, 16, dtype=torch.float64)
    torch.testing.assert_close((a.float().to(dev) @ b.float().to(dev)).cpu().double(), a @ b, rtol=1e-3, atol=1e-3)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA/ROCm GPU")
def test_gpu_essential_probes_pass_on_native(tmp_path, monkeypatch):
    from navitrain.probe import cases, session

    monkeypatch.setenv("NAVITRAIN_CACHE_DIR", str(tmp_path))
    run = session.run(cases.essential(), ["native"], jobs=2, timeout=120)
    failed = {r.case: (r.outcome, r.detail) for r in run.results if r.outcome != "pass"}
    assert not failed, failed
