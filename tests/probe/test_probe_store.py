"""The SQLite store: newest result wins, filters, bench speeds as relative geometric means, and many
processes writing at once without losing or corrupting anything."""
import math
import multiprocessing
import sqlite3

import pytest

from navitrain.probe import store
from navitrain.probe.results import ProbeResult


def _result(case, route="cpu", outcome="pass", env=None, **kw):
    return ProbeResult(case=case, route=route, env=env or {}, outcome=outcome, **kw)


def test_newest_result_per_case_route_and_env_wins():
    store.save_result("fp1", _result("a", outcome="crash", detail="killed by SIGSEGV"))
    store.save_result("fp1", _result("a", outcome="pass", max_abs=1e-6))
    store.save_result("fp1", _result("a", outcome="mismatch", env={"HSA_OVERRIDE_GFX_VERSION": "10.3.0"}))
    store.save_result("fp1", _result("b", route="wgpu", outcome="error", mode="no-code-object"))
    store.save_result("fp2", _result("a", outcome="hang"))
    got = {(r.case, r.route, r.env_label): r for r in store.latest_results("fp1")}
    assert set(got) == {("a", "cpu", ""), ("a", "cpu", "HSA_OVERRIDE_GFX_VERSION=10.3.0"), ("b", "wgpu", "")}
    assert got[("a", "cpu", "")].outcome == "pass" and got[("a", "cpu", "")].max_abs == 1e-6
    assert got[("b", "wgpu", "")].mode == "no-code-object"
    assert got[("a", "cpu", "HSA_OVERRIDE_GFX_VERSION=10.3.0")].env == {"HSA_OVERRIDE_GFX_VERSION": "10.3.0"}
    assert [r.outcome for r in store.latest_results("fp2")] == ["hang"]


def test_filters_by_route_env_and_case():
    for case in ("x", "y", "z"):
        store.save_result("fp3", _result(case))
        store.save_result("fp3", _result(case, route="wgpu", outcome="mismatch"))
    store.save_result("fp3", _result("x", env={"A": "1"}))
    assert {r.case for r in store.latest_results("fp3", routes=["wgpu"], cases=["x", "z"])} == {"x", "z"}
    assert len(store.latest_results("fp3", env={})) == 6
    assert [r.env for r in store.latest_results("fp3", env={"A": "1"})] == [{"A": "1"}]


def test_non_finite_errors_are_stored_as_null():
    store.save_result("fp4", _result("n", outcome="mismatch", max_abs=float("nan"), max_rel=float("inf")))
    (r,) = store.latest_results("fp4")
    assert r.max_abs is None and r.max_rel is None


def test_fingerprint_facts_are_kept():
    class FakeFingerprint:
        id = "fp5"
        facts = {"torch": {"version": "2.13.0"}}

    store.save_fingerprint(FakeFingerprint())
    assert store.fingerprint_facts("fp5") == {"torch": {"version": "2.13.0"}}
    assert store.fingerprint_facts("nope") is None


def test_route_speeds_are_relative_geometric_means():
    store.save_bench("fpb", "cpu", "mlp", 100.0, 10.0, {})
    store.save_bench("fpb", "wgpu", "mlp", 400.0, 2.5, {"note": "x"})
    store.save_bench("fpb", "cpu", "resnet", 10.0, 100.0, {})
    store.save_bench("fpb", "wgpu", "resnet", 5.0, 200.0, {})
    store.save_bench("fpb", "wgpu", "resnet", 40.0, 25.0, {})  # newer measurement replaces the older
    speeds = store.route_speeds("fpb")
    assert speeds["wgpu"] == pytest.approx(1.0)
    assert speeds["cpu"] == pytest.approx(math.sqrt(0.25 * 0.25))
    assert store.route_speeds("nothing") == {}
    rows = store.bench_results("fpb")
    assert {(r["route"], r["workload"], r["samples_per_s"]) for r in rows} >= {("wgpu", "resnet", 40.0)}


def test_save_bench_rejects_nonsense_speeds():
    with pytest.raises(ValueError, match="positive"):
        store.save_bench("fpb", "cpu", "mlp", 0.0, 1.0, {})
    with pytest.raises(ValueError):
        store.save_bench("fpb", "cpu", "mlp", float("nan"), 1.0, {})


def test_passed_routes_needs_every_essential_case():
    from navitrain.probe.cases import essential

    names = [c.name for c in essential()]
    for name in names:
        store.save_result("fpp", _result(name, route="cpu"))
        store.save_result("fpp", _result(name, route="wgpu"))
    store.save_result("fpp", _result(names[0], route="wgpu", outcome="mismatch"))
    store.save_result("fpp", _result(names[0], route="native"))  # only one case probed
    assert store.passed_routes("fpp") == ["cpu"]


def _writer(cache_dir: str, worker: int, count: int) -> None:
    import os

    os.environ["NAVITRAIN_CACHE_DIR"] = cache_dir
    from navitrain.probe import store as s
    from navitrain.probe.results import ProbeResult as R

    for i in range(count):
        s.save_result("fpc", R(case=f"case-{worker}-{i}", route="cpu", env={}, outcome="pass"))
        if i % 5 == 0:
            s.save_bench("fpc", f"route{worker}", f"w{i}", 1.0 + i, 1.0, {"worker": worker})


def test_concurrent_writers_lose_nothing(tmp_path, monkeypatch):
    cache = str(tmp_path / "shared-cache")
    monkeypatch.setenv("NAVITRAIN_CACHE_DIR", cache)
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(cache, w, 40)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    assert len(store.latest_results("fpc")) == 160
    assert len(store.bench_results("fpc")) == 4 * 8
    with sqlite3.connect(str(store.path())) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
