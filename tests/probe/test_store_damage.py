"""A damaged, unwritable or locked probe store never stops training: a damaged file is moved aside
(never deleted) and rebuilt, an unwritable one read where it can be and replaced by memory, a lock
waited for with a message naming its holder; navitrain.device("cpu") and `navitrain probe` (with and
without --report) keep working and name the file.

The tests run as root, where chmod does not stop writes: "read-only" is a SQLite connection opened
with mode=ro, "cannot be created" a cache directory under a regular file.
"""
import logging
import os
import random
import sqlite3
import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

from navitrain.cli import app
from navitrain.probe import fingerprint as fingerprints
from navitrain.probe import store
from navitrain.probe.results import ProbeResult


def _result(case, outcome="pass"):
    return ProbeResult(case=case, route="cpu", env={}, outcome=outcome, detail=f"{case} detail")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A cache directory of this test's own (stand-ins and warnings are per path and per process)."""
    directory = tmp_path / "cache"
    directory.mkdir()
    monkeypatch.setenv("NAVITRAIN_CACHE_DIR", str(directory))
    return directory


def _garbage(directory):
    rng = random.Random(os.urandom(8))
    return bytes(rng.getrandbits(8) for _ in range(3000))


def _truncated(directory):
    """A real store cut short: its pages are gone, its header says they are there."""
    store.save_result("fp-old", _result("case"))
    with sqlite3.connect(directory / store.FILENAME) as conn:
        conn.executemany("INSERT INTO probe_results (fp, case_name, route, outcome, detail, created)"
                         " VALUES ('fp-old', ?, 'cpu', 'pass', ?, 0)", [(f"case-{i}", "x" * 200) for i in range(300)])
    with sqlite3.connect(directory / store.FILENAME) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    data = (directory / store.FILENAME).read_bytes()
    for suffix in ("-wal", "-shm"):
        (directory / f"{store.FILENAME}{suffix}").unlink(missing_ok=True)
    return data[: len(data) // 3]


def _wrong_schema(directory):
    """A valid SQLite file claiming our schema version, without our tables."""
    other = directory / "other.sqlite3"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE unrelated (x)")
        conn.execute("PRAGMA user_version = 1")
    data = other.read_bytes()
    other.unlink()
    return data


@pytest.mark.parametrize("damage", [_garbage, _truncated, _wrong_schema])
def test_a_damaged_store_is_moved_aside_and_rebuilt(cache, caplog, damage):
    damaged = damage(cache)
    (cache / store.FILENAME).write_bytes(damaged)
    store.save_result("fp", _result("a"))
    assert [(r.case, r.outcome) for r in store.latest_results("fp")] == [("a", "pass")]
    aside = [p for p in cache.iterdir() if p.name.startswith(f"{store.FILENAME}.damaged-")
             and not p.name.endswith(("-wal", "-shm"))]  # (SQLite's companions move with it)
    assert len(aside) == 1 and aside[0].read_bytes() == damaged  # moved, never deleted or rewritten
    said = [r.getMessage() for r in caplog.records if "damaged" in r.getMessage()]
    assert len(said) == 1 and str(cache / store.FILENAME) in said[0] and aside[0].name in said[0]
    # the fresh store is a real file again: a new process sees the result
    with sqlite3.connect(cache / store.FILENAME) as conn:
        assert conn.execute("SELECT case_name FROM probe_results").fetchall() == [("a",)]


def test_a_read_only_store_is_read_and_new_results_stay_in_memory(cache, caplog, monkeypatch):
    store.save_result("fp", _result("old", outcome="mismatch"))
    with sqlite3.connect(cache / store.FILENAME) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    before = (cache / store.FILENAME).read_bytes()
    real_connect = sqlite3.connect

    def read_only(file):  # what a read-only file or directory gives: SQLite's own readonly error on writes
        return real_connect(f"{file.absolute().as_uri()}?mode=ro", uri=True, isolation_level=None)

    monkeypatch.setattr(store, "_connect", read_only)
    for case in ("new1", "new2"):
        store.save_result("fp", _result(case))
    assert {(r.case, r.outcome) for r in store.latest_results("fp")} == {
        ("old", "mismatch"), ("new1", "pass"), ("new2", "pass")}
    assert (cache / store.FILENAME).read_bytes() == before  # not moved, not written
    assert not [p for p in cache.iterdir() if ".damaged-" in p.name]
    said = [r.getMessage() for r in caplog.records if "probe store" in r.getMessage()]
    assert len(said) == 1, said  # said once, however many writes
    assert str(cache / store.FILENAME) in said[0] and "readonly" in said[0] and "NAVITRAIN_CACHE_DIR" in said[0]


def test_a_cache_directory_that_cannot_be_created_means_memory(tmp_path, monkeypatch, caplog):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("NAVITRAIN_CACHE_DIR", str(blocker / "cache"))
    store.save_bench("fp", "cpu", "mlp", 100.0, 10.0)
    store.save_bench("fp", "wgpu", "mlp", 50.0, 20.0)
    assert store.route_speeds("fp") == {"cpu": 1.0, "wgpu": 0.5}
    said = [r.getMessage() for r in caplog.records if "probe store" in r.getMessage()]
    assert len(said) == 1 and str(blocker / "cache") in said[0] and "memory" in said[0]


def test_a_held_lock_is_waited_for_with_a_message_naming_the_holder(cache, caplog, monkeypatch):
    store.save_result("fp", _result("before"))
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sqlite3, sys, time\n"
        f"conn = sqlite3.connect({str(cache / store.FILENAME)!r}, isolation_level=None)\n"
        "conn.execute('BEGIN IMMEDIATE'); print('locked', flush=True); time.sleep(60)\n")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        monkeypatch.setattr(store, "_WAIT_STEP_S", 0.3)
        monkeypatch.setattr(store, "_BUSY_TIMEOUT_S", 1.0)
        started = time.monotonic()
        store.save_result("fp", _result("during"))
        assert time.monotonic() - started < 10
    finally:
        holder.kill()
        holder.wait()
    messages = [r.getMessage() for r in caplog.records]
    waiting = [m for m in messages if m.startswith("waiting for the probe store")]
    assert waiting and all(f"pid {holder.pid}" in m and "so far" in m for m in waiting)
    assert any("stayed locked" in m and str(cache / store.FILENAME) in m for m in messages)
    assert {r.case for r in store.latest_results("fp")} == {"before", "during"}


def test_device_cpu_works_on_a_damaged_store(cache, caplog):
    import navitrain

    (cache / store.FILENAME).write_bytes(b"SQLite format 3\0" + bytes(range(256)) * 8)
    with caplog.at_level(logging.INFO, logger="navitrain"):
        assert str(navitrain.device("cpu")) == "cpu"
    assert any("was damaged" in r.getMessage() and str(cache / store.FILENAME) in r.getMessage()
               for r in caplog.records)
    assert {r.route for r in store.latest_results(fingerprints.current())} == {"cpu"}  # stored in the fresh file


def test_probe_report_and_probe_name_the_damaged_store(cache):
    runner = CliRunner()
    (cache / store.FILENAME).write_bytes(b"this is not a database" * 100)
    report = runner.invoke(app, ["probe", "--report", "-r", "cpu"])
    assert report.exit_code == 0, report.output
    assert f"the probe store {cache / store.FILENAME} was damaged" in report.output
    assert "no stored probe results" in report.output
    (cache / store.FILENAME).write_bytes(b"\x00garbage\xff" * 100)
    run = runner.invoke(app, ["probe", "-r", "cpu", "-k", "alloc-fill", "--format", "md"])
    assert run.exit_code == 0, run.output
    assert f"the probe store {cache / store.FILENAME} was damaged" in run.output
    assert "| alloc-fill | pass |" in run.output
    assert len([p for p in cache.iterdir() if ".damaged-" in p.name and not p.name.endswith(("-wal", "-shm"))]) == 2


def test_bench_results_kept_in_memory_say_so(tmp_path, monkeypatch):
    from navitrain.bench import machine, storage

    (tmp_path / "a-file").write_text("in the way")
    monkeypatch.setenv("NAVITRAIN_CACHE_DIR", str(tmp_path / "a-file" / "cache"))
    monkeypatch.setattr(machine, "fingerprint_object", lambda: None)
    report = {"results": [{"status": "ok", "samples_per_s": 12.5, "route": "cpu", "workload": "mlp", "size": "quick",
                           "median_ms": 80.0}], "steps": 5, "warmup": 1, "seed": 3,
              "machine": {"fingerprint": "fp-bench"}}
    stored = storage.save(report)
    assert stored["saved"] == 1 and "kept in memory only" in stored["note"], stored
    assert store.route_speeds("fp-bench") == {"cpu": 1.0}


def test_a_damaged_store_that_cannot_be_moved_is_left_alone_and_named(cache, caplog, monkeypatch):
    from navitrain import cache_files

    def refuse(file, companions=()):
        raise PermissionError(13, "Permission denied", str(file))

    monkeypatch.setattr(cache_files, "move_aside", refuse)
    damaged = b"\x01not sqlite\xfe" * 50
    (cache / store.FILENAME).write_bytes(damaged)
    store.save_result("fp", _result("a"))
    assert [r.case for r in store.latest_results("fp")] == ["a"]
    assert (cache / store.FILENAME).read_bytes() == damaged
    said = [r.getMessage() for r in caplog.records if "probe store" in r.getMessage()]
    assert len(said) == 1 and f"the probe store {cache / store.FILENAME} is damaged" in said[0]
    assert "Permission denied" in said[0] and "move that file away yourself" in said[0]
