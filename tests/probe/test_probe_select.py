"""navitrain.device(): picks a working route here and a training step really runs on it; speed order;
NAVITRAIN_ROUTE; an asked-for route that fails raises naming the failed cases."""
import logging
import time

import pytest
import torch

import navitrain
from navitrain.probe import cases, store
from navitrain.probe import fingerprint as fingerprints
from navitrain.probe.results import ProbeResult
from navitrain.routes import registry
from navitrain.select import RouteNotWorking, route_order


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NAVITRAIN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("NAVITRAIN_ROUTE", raising=False)
    return tmp_path / "cache"


def _seed(route: str, outcome_of: dict[str, str] | None = None) -> None:
    fp = fingerprints.current()
    for case in cases.essential():
        outcome = (outcome_of or {}).get(case.name, "pass")
        detail = "grad weight: max abs err 0.5" if outcome == "mismatch" else "ok"
        store.save_result(fp, ProbeResult(case.name, route, {}, outcome, detail, essential=True))


def _train_step(device):
    """One SGD step of a small MLP on `device`; returns the loss and updated weights on the CPU."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(10, 32), torch.nn.ReLU(), torch.nn.Linear(32, 3))
    x, y = torch.randn(16, 10), torch.randint(0, 3, (16,))
    model = model.to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    loss = torch.nn.functional.cross_entropy(model(x.to(device)), y.to(device))
    loss.backward()
    opt.step()
    assert model[0].weight.device.type == torch.device(device).type
    return loss.detach().cpu(), [p.detach().cpu() for p in model.parameters()]


@pytest.mark.slow
def test_device_returns_a_working_device_and_a_training_step_runs(fresh_cache, caplog):
    caplog.set_level(logging.INFO, logger="navitrain")
    dev = navitrain.device(progress=False)
    assert isinstance(dev, torch.device)
    chosen = next(r.message for r in caplog.records if r.message.startswith("training on"))
    assert chosen.startswith(f"training on {dev.type}")
    assert "essential probes pass" in chosen and "default order" in chosen

    loss, params = _train_step(dev)
    ref_loss, ref_params = _train_step("cpu")
    assert torch.isfinite(loss) and loss == pytest.approx(ref_loss.item(), rel=1e-4)
    torch.manual_seed(0)
    untrained = torch.nn.Linear(10, 32).weight.detach()
    assert not torch.allclose(params[0], untrained)  # the step changed the weights ...
    for p, q in zip(params, ref_params):  # ... exactly as on the CPU
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)

    # Its essential probes were stored; a second call trusts them and probes nothing.
    route = navitrain.select.active_route().name
    stored = store.latest_results(fingerprints.current(), routes=[route], env={})
    assert {r.case for r in stored} >= {c.name for c in cases.essential()}
    assert all(r.outcome == "pass" for r in stored)
    started = time.monotonic()
    assert navitrain.device(progress=False).type == dev.type
    assert time.monotonic() - started < 5


def test_forced_route_uses_stored_results(fresh_cache, monkeypatch, caplog):
    _seed("cpu")
    monkeypatch.setenv("NAVITRAIN_ROUTE", "cpu")
    caplog.set_level(logging.INFO, logger="navitrain")
    started = time.monotonic()
    assert navitrain.device(progress=False) == torch.device("cpu")
    assert time.monotonic() - started < 10  # no probes ran (only the fingerprint, once per process)
    assert any("NAVITRAIN_ROUTE=cpu" in r.message for r in caplog.records)


def test_asked_route_that_fails_raises_naming_the_failed_cases(fresh_cache):
    route = "wgpu" if "wgpu" in registry.names() else "cpu"
    _seed(route, {"tiny-cnn-3-steps": "mismatch", "conv2d-classic": "crash"})
    with pytest.raises(RouteNotWorking) as info:
        navitrain.device(route, progress=False)
    message = str(info.value)
    assert f"route {route!r} does not work on this machine" in message
    assert "tiny-cnn-3-steps (mismatch: grad weight: max abs err 0.5)" in message
    assert "conv2d-classic (crash" in message
    assert f"navitrain probe --route {route}" in message
    assert {r.case for r in info.value.failed} == {"tiny-cnn-3-steps", "conv2d-classic"}


@pytest.mark.skipif(torch.version.cuda is not None or getattr(torch.version, "hip", None) is not None,
                    reason="native is available with a CUDA/ROCm torch")
def test_absent_route_raises_with_the_reason(fresh_cache):
    with pytest.raises(RouteNotWorking, match="not available here: torch .* CPU-only build"):
        navitrain.device("native", progress=False)


def test_unknown_route_is_a_clear_error(fresh_cache):
    with pytest.raises(ValueError, match="unknown route 'tpu'; known routes: .*cpu"):
        navitrain.device("tpu")


def test_verify_false_skips_the_probes(fresh_cache):
    assert navitrain.device("cpu", verify=False, progress=False) == torch.device("cpu")
    assert store.latest_results(fingerprints.current()) == []


def test_route_order_follows_bench_measurements(fresh_cache):
    names = registry.names()
    order, why = route_order("fp-order")
    assert order == names and "default order" in why
    assert order.index("native") < order.index("cpu")
    # only standard-size rows order routes (issue 18; tests/bench/test_bench_sizes.py covers the keying)
    from navitrain.bench import workloads

    signature = {"signature": workloads.get("mlp", "standard").signature()}
    store.save_bench("fp-order", "cpu", "mlp@standard/eager", 300.0, 1.0, signature)
    store.save_bench("fp-order", "native", "mlp@standard/eager", 100.0, 3.0, signature)
    order, why = route_order("fp-order")
    assert order[:2] == ["cpu", "native"] and "measured speed" in why and "native 0.33" in why
    assert order[2:] == [n for n in names if n not in ("cpu", "native")]
