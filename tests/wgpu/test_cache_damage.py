"""A damaged or unwritable file on disk never stops training on the wgpu device: a GEMM tuning cache
of the wrong shape is moved aside and rebuilt, an uncreatable cache directory means tuning in memory
(said once), and navitrain.device("cpu") / ("wgpu") return a device with a damaged probe store or an
uncreatable cache directory.

Tuning is forced (NAVITRAIN_WGPU_TUNE=force) so lavapipe reads and writes the cache, over two
candidate tiles to keep it quick. The device() tests stand a passing fake in for the probe children
(the store and the route preparation are what is tested; tests/probe/test_store_damage.py probes
for real on the cpu route).
"""
import json
import logging

import pytest
import torch

from navitrain.probe import session, store
from navitrain.probe.results import ProbeResult
from navitrain.probe.runner import RunReport
from navitrain.wgpu.kernels import gemm, gemm_tuning


@pytest.fixture
def tuning(monkeypatch):
    monkeypatch.setenv("NAVITRAIN_WGPU_TUNE", "force")
    monkeypatch.setattr(gemm_tuning, "_cache", None)
    monkeypatch.setattr(gemm_tuning, "_picked", {})
    monkeypatch.setattr(gemm_tuning, "CANDIDATES",
                        [gemm.TileConfig(32, 32, 8, 4, 4), gemm.TileConfig(64, 64, 16, 4, 4)])
    timed = []
    real_time = gemm_tuning._time
    monkeypatch.setattr(gemm_tuning, "_time", lambda rt, run: (timed.append(1), real_time(rt, run))[1])
    return timed


def _matmul_matches_cpu(seed, M=48, K=72, N=40):
    gen = torch.Generator().manual_seed(seed)
    a, b = torch.randn(M, K, generator=gen), torch.randn(K, N, generator=gen)
    a[0, 0], b[1, 1] = float("nan"), float("inf")  # specials pass through a tuned product like any other
    got = (a.to("wgpu") @ b.to("wgpu")).cpu()
    torch.testing.assert_close(got, a @ b, rtol=1e-5, atol=1e-4, equal_nan=True)


@pytest.mark.parametrize("content", ["[1]", "null", '{"some adapter": [1, 2]}', '{"some adapter": {"mm|x": 5}}',
                                     '{"truncated": {"mm|', "\udcff not text"])
def test_a_damaged_tuning_cache_is_moved_aside_and_rebuilt(tmp_path, monkeypatch, caplog, tuning, content):
    monkeypatch.setenv("NAVITRAIN_CACHE_DIR", str(tmp_path))
    cache = tmp_path / gemm_tuning.FILENAME
    damaged = content.encode("utf-8", "surrogateescape")
    cache.write_bytes(damaged)
    _matmul_matches_cpu(1)
    assert tuning, "the product was not tuned, so the cache was never read"
    aside = [p for p in tmp_path.iterdir() if p.name.startswith(f"{gemm_tuning.FILENAME}.damaged-")]
    assert len(aside) == 1 and aside[0].read_bytes() == damaged  # kept, not silently overwritten
    table = json.loads(cache.read_text())  # rebuilt with this run's choice
    assert gemm_tuning._shape_error(table) is None and any(table.values())
    said = [r.getMessage() for r in caplog.records if "GEMM tuning cache" in r.getMessage()]
    assert len(said) == 1 and str(cache) in said[0] and aside[0].name in said[0]


def test_an_uncreatable_cache_directory_means_tuning_in_memory_said_once(tmp_path, monkeypatch, caplog, tuning):
    blocker = tmp_path / "a-file"
    blocker.write_text("in the way")
    monkeypatch.setenv("NAVITRAIN_CACHE_DIR", str(blocker / "cache"))
    _matmul_matches_cpu(2)
    first = len(tuning)
    _matmul_matches_cpu(3, M=200, K=300, N=100)  # another shape class: tuned and saved again
    assert first and len(tuning) > first
    said = [r.getMessage() for r in caplog.records if "GEMM tuning cache" in r.getMessage()]
    assert len(said) == 1 and str(blocker / "cache") in said[0] and "in memory" in said[0]


def _passing_probes(tasks, *, on_result=None, **_):
    results = []
    for task in tasks:
        result = ProbeResult(case=task.case, route=task.route, env=dict(task.env), outcome="pass",
                             essential=task.essential, detail="(fake probe child)")
        results.append(result)
        if on_result is not None:
            on_result(result)
    return RunReport(results=results)


@pytest.mark.parametrize("damage", ["garbage store", "uncreatable cache directory"])
def test_device_cpu_and_wgpu_with_a_damaged_store_or_cache(tmp_path, monkeypatch, caplog, tuning, damage):
    import navitrain

    if damage == "garbage store":
        monkeypatch.setenv("NAVITRAIN_CACHE_DIR", str(tmp_path))
        (tmp_path / store.FILENAME).write_bytes(b"\x13\x37 not sqlite " * 64)
        (tmp_path / gemm_tuning.FILENAME).write_text("[1]")
    else:
        (tmp_path / "a-file").write_text("in the way")
        monkeypatch.setenv("NAVITRAIN_CACHE_DIR", str(tmp_path / "a-file" / "cache"))
    monkeypatch.setattr(session, "run_tasks", _passing_probes)
    with caplog.at_level(logging.INFO, logger="navitrain"):
        assert navitrain.device("cpu") == torch.device("cpu")
        assert navitrain.device("wgpu").type == "wgpu"
        _matmul_matches_cpu(4)
    messages = [r.getMessage() for r in caplog.records if r.name.startswith("navitrain.cache")]
    assert any("probe store" in m for m in messages), messages
    assert any("GEMM tuning cache" in m for m in messages), messages
