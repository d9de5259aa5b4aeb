"""navitrain.device() chooses from bench results at standard sizes only (issue 18): results are keyed by
fingerprint, workload size and mode; tiny-size rows and rows of another shape are ignored and the
choice says so; a route is scored by its best mode."""
import logging

import pytest
import torch

import navitrain
from navitrain import select
from navitrain.bench import storage, workloads
from navitrain.probe import cases, store
from navitrain.probe import fingerprint as fingerprints
from navitrain.probe.results import ProbeResult
from navitrain.routes import registry


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NAVITRAIN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("NAVITRAIN_ROUTE", raising=False)


def _row(route, workload, size, mode, samples_per_s, **extra):
    return {"route": route, "workload": workload, "size": size, "mode": mode, "status": "ok",
            "samples_per_s": samples_per_s, "median_ms": 1e3 * 16 / samples_per_s, **extra}


def _save(fp, rows):
    report = {"results": rows, "steps": 6, "warmup": 2, "seed": 0, "plan": "quick",
              "machine": {"fingerprint": fp}, "other_load": None}
    for row in report["results"]:  # as storage.save stores them, without needing this machine's fingerprint
        extra = {"mode": row["mode"], "signature": storage._signature(row["workload"], row["size"])}
        extra.update(row.pop("extra", {}))
        store.save_bench(fp, row["route"], storage.workload_key(row), row["samples_per_s"], row["median_ms"], extra)


# issue 18's H200: at tiny sizes wgpu was 0.18x the CPU (Python per op); at standard sizes CIFAR
# ResNet-18 ran 16x eager and 39x captured
TINY = [_row("cpu", w, "tiny", "eager", 1000.0) for w in ("mlp", "resnet18", "gpt")] + \
       [_row("wgpu", w, "tiny", m, 20.0) for w in ("mlp", "resnet18", "gpt") for m in ("eager", "graph")]
STANDARD = [_row("cpu", "resnet18", "standard", "eager", 100.0), _row("wgpu", "resnet18", "standard", "eager", 1600.0),
            _row("wgpu", "resnet18", "standard", "graph", 3900.0), _row("cpu", "gpt", "standard", "eager", 10.0),
            _row("wgpu", "gpt", "standard", "graph", 50.0)]


def test_keys_name_size_and_mode():
    assert storage.workload_key(_row("wgpu", "resnet18", "standard", "graph", 1.0)) == "resnet18@standard/graph"
    assert storage.workload_key({"workload": "mlp", "size": "tiny"}) == "mlp@tiny/eager"


def test_only_tiny_results_choose_nothing_and_say_why(fresh_cache):
    _save("fp-tiny", [dict(r) for r in TINY])
    speeds, why = storage.representative_speeds("fp-tiny")
    assert speeds == {} and why == "no bench results at standard sizes; 9 stored results of tiny or other sizes ignored"
    order, why = select.route_order("fp-tiny")
    assert "default order (no bench results at standard sizes; 9 stored results" in why


def test_standard_results_win_over_tiny_ones_scored_by_the_best_mode(fresh_cache):
    _save("fp-mixed", [dict(r) for r in TINY + STANDARD])
    speeds, why = storage.representative_speeds("fp-mixed")
    assert speeds["wgpu"] == 1.0 and speeds["cpu"] == pytest.approx((100 / 3900 * 10 / 50) ** 0.5)
    assert why == ("navitrain bench at standard sizes: wgpu (graph) 5.00x the CPU's speed on gpt; "
                   "wgpu (graph) 39.0x the CPU's speed on resnet18; 9 stored results of tiny or other sizes ignored")
    order, why = select.route_order("fp-mixed")
    assert order.index("wgpu") < order.index("cpu") and "wgpu (graph) 39.0x the CPU's speed on resnet18" in why


def test_results_of_another_shape_are_ignored(fresh_cache):
    """A standard-size row stored before the standard sizes changed (the old GPT had vocabulary 8192)
    does not count, nor does a row stored without a signature (before sizes were keyed at all)."""
    old_gpt = {**workloads.get("gpt", "standard").signature(), "vocab": 8192}
    _save("fp-old", [_row("cpu", "gpt", "standard", "eager", 10.0, extra={"signature": old_gpt}),
                     _row("wgpu", "gpt", "standard", "eager", 500.0, extra={"signature": old_gpt})])
    store.save_bench("fp-old", "wgpu", "mlp@full", 9000.0, 1.0, {})  # the old key format
    assert storage.representative_speeds("fp-old") == (
        {}, "no bench results at standard sizes; 3 stored results of tiny or other sizes ignored")
    _save("fp-old", [_row("cpu", "gpt", "standard", "eager", 10.0), _row("wgpu", "gpt", "standard", "eager", 5.0)])
    assert storage.representative_speeds("fp-old")[0] == {"cpu": 1.0, "wgpu": 0.5}


def test_device_picks_the_route_faster_at_standard_sizes_and_says_why(fresh_cache, monkeypatch, caplog):
    """wgpu is 50x slower than the CPU at tiny sizes and 39x faster at standard ones: device() trains on
    wgpu, and its log says it was measured at standard sizes and the tiny results were ignored."""
    fp = fingerprints.current()
    for route in registry.names():
        passed = route in ("cpu", "wgpu")
        for case in cases.essential():
            store.save_result(fp, ProbeResult(case.name, route, {}, "pass" if passed else "unavailable",
                                              "ok" if passed else "not here", essential=True))
    _save(fp.id, [dict(r) for r in TINY + STANDARD])
    prepared = []
    # preparing a route is the route's business (tested elsewhere); here only the choice matters
    monkeypatch.setattr(select, "_prepare",
                        lambda route, *rest: (prepared.append(route) or torch.device("cpu"), "test"))
    caplog.set_level(logging.INFO, logger="navitrain")
    navitrain.device(progress=False)
    assert prepared == ["wgpu"]
    chosen = next(r.message for r in caplog.records if r.message.startswith("training on"))
    assert chosen.startswith("training on wgpu") and "measured speed" in chosen
    assert "wgpu (graph) 39.0x the CPU's speed on resnet18" in chosen
    assert "9 stored results of tiny or other sizes ignored" in chosen
