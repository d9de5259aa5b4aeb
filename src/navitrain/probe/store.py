"""The results store: probe outcomes and bench speeds per stack fingerprint, in one SQLite file.

It lives in navitrain's cache directory (NAVITRAIN_CACHE_DIR or the platform's user cache dir).
Several runs may write at once (two terminals, a probe beside a bench): the database uses WAL
journaling, a generous busy timeout, and every write is one short `BEGIN IMMEDIATE` transaction on a
connection opened for it, so writers queue instead of failing or corrupting anything. A damaged,
unwritable or long-locked file never stops training (see _use below and navitrain.cache_files). Rows are only
ever appended; "the" result of a case is the newest row for (fingerprint, route, env, case).
"""
from __future__ import annotations

import json
import logging
import math
import os
import sqlite3
import threading
import time
from contextlib import closing, contextmanager
from pathlib import Path

from navitrain import cache_files
from navitrain.probe.results import ProbeResult, env_label, parse_env_label

log = logging.getLogger("navitrain.cache.store")  # beside navitrain.cache_files' warnings, shown the same way

FILENAME = "navitrain.sqlite3"
_SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS fingerprints (
    fp TEXT PRIMARY KEY,
    facts TEXT NOT NULL,
    first_seen REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS probe_results (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    fp TEXT NOT NULL,
    case_name TEXT NOT NULL,
    route TEXT NOT NULL,
    env TEXT NOT NULL DEFAULT '',
    outcome TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT '',
    mode TEXT,
    max_abs REAL,
    max_rel REAL,
    seconds REAL,
    route_info TEXT NOT NULL DEFAULT '',
    essential INTEGER NOT NULL DEFAULT 0,
    extra TEXT NOT NULL DEFAULT '{}',
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS probe_results_key ON probe_results (fp, route, env, case_name, id);
CREATE TABLE IF NOT EXISTS bench_results (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    fp TEXT NOT NULL,
    route TEXT NOT NULL,
    workload TEXT NOT NULL,
    samples_per_s REAL NOT NULL,
    step_ms REAL,
    extra TEXT NOT NULL DEFAULT '{}',
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS bench_results_key ON bench_results (fp, route, workload, id);
"""


def path() -> Path:
    """Where the store lives (its directory is created here; OSError when it cannot be)."""
    return cache_files.path(FILENAME)


# --- opening the store: a damaged, unwritable or locked file never stops training -------------------
#
# Every read and write goes through _use(). A damaged file (not a database, a malformed page, a
# database without our tables) is moved aside by navitrain.cache_files and a fresh one started; a
# file or directory that cannot be written, or a lock held past _BUSY_TIMEOUT_S, switches this process
# to an in-memory stand-in (seeded with the file's results where it can still be read). Each is said
# once per process on the navitrain.cache logger, naming the file and the fix.

_BUSY_TIMEOUT_S = 60.0  # how long to wait for another process's lock before keeping results in memory
_WAIT_STEP_S = 10.0     # SQLite's busy timeout per attempt; a "still waiting" message after each
_TABLES = {"fingerprints", "probe_results", "bench_results"}
# SQLite primary result codes (sqlite3.Error.sqlite_errorcode & 0xff, Python 3.11+)
_SQLITE_BUSY, _SQLITE_LOCKED, _SQLITE_CORRUPT, _SQLITE_NOTADB = 5, 6, 11, 26


class _WrongShape(sqlite3.DatabaseError):
    """A SQLite file that says it is our schema but lacks our tables."""


class _KeptOpen(sqlite3.Connection):
    """The in-memory stand-in's only connection: callers close connections after each use, which
    here must not drop the data."""

    def close(self) -> None:
        pass


class _StandIn:
    def __init__(self, conn: _KeptOpen):
        self.conn = conn
        self.lock = threading.RLock()  # one connection shared by the process's threads


_stand_ins: dict[str, _StandIn] = {}   # by store path (or unreachable directory): this process only
_stand_ins_lock = threading.Lock()


def _init_schema(conn: sqlite3.Connection, wal: bool) -> None:
    if conn.execute("PRAGMA user_version").fetchone()[0] == _SCHEMA_VERSION:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if _TABLES <= tables:
            return
        raise _WrongShape(f"schema version {_SCHEMA_VERSION} without the tables {', '.join(sorted(_TABLES - tables))}")
    if wal:
        conn.execute("PRAGMA journal_mode = WAL")  # persistent: set once per database file
    with _transaction(conn):  # (not executescript: it would commit the transaction first)
        for statement in _SCHEMA.split(";"):
            if statement.strip():
                conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")


def _connect(file: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(str(file), timeout=_WAIT_STEP_S, isolation_level=None)
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(_WAIT_STEP_S * 1000)}")
        _init_schema(conn, wal=True)
    except BaseException:
        conn.close()
        raise
    return conn


@contextmanager
def _transaction(conn: sqlite3.Connection):
    conn.execute("BEGIN IMMEDIATE")  # take the write lock now: no deadlock upgrading a read lock later
    try:
        yield conn
    except BaseException:
        if conn.in_transaction:  # (SQLite may already have rolled back after an I/O or corruption error)
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
        raise
    else:
        conn.execute("COMMIT")


def _kind(exc: sqlite3.Error) -> str:
    """'damaged', 'locked' or 'unusable' (read-only, cannot open, disk full, I/O error, ...)."""
    code = getattr(exc, "sqlite_errorcode", None)
    code = code & 0xFF if isinstance(code, int) else None
    text = str(exc).lower()
    if isinstance(exc, _WrongShape) or code in (_SQLITE_CORRUPT, _SQLITE_NOTADB) or (
            code is None and ("not a database" in text or "malformed" in text)):
        return "damaged"
    if code in (_SQLITE_BUSY, _SQLITE_LOCKED) or (code is None and "locked" in text):
        return "locked"
    return "unusable"


def _seed(memory: sqlite3.Connection, file: Path | None) -> bool:
    """Copy what can still be read of `file` into the stand-in; False when nothing could be."""
    if file is None or not file.is_file():
        return False
    uri = file.absolute().as_uri()
    # a plain read-only open first (it sees a live writer's committed rows); immutable where the
    # directory does not let SQLite create its shared-memory file
    for options in ("mode=ro", "mode=ro&immutable=1"):
        try:
            with closing(sqlite3.connect(f"{uri}?{options}", uri=True, timeout=1.0)) as source:
                _init_schema(source, wal=False)  # only checks: a readable file of our schema
                source.backup(memory)
            return True
        except (sqlite3.Error, OSError):
            continue
    return False


def _stand_in(key: str, file: Path | None, why: str, fix: str, seed: bool = True) -> _StandIn:
    """The in-memory store for `key`, made (and announced, naming `file`) once per process; seeded
    with what can be read of `file` unless `seed` is false (a damaged file)."""
    with _stand_ins_lock:
        stand_in = _stand_ins.get(key)
        if stand_in is not None:
            return stand_in
        conn = sqlite3.connect(":memory:", factory=_KeptOpen, isolation_level=None, check_same_thread=False)
        seeded = seed and _seed(conn, file)
        _init_schema(conn, wal=False)
        stand_in = _stand_ins[key] = _StandIn(conn)
    kept = ("its stored results are read from it, and new" if seeded else "new")
    cache_files.say_once(("store", key), f"the probe store {file or ''} {why}: {kept} probe and bench "
                         f"results are kept in memory by this process only. Fix: {fix}.".replace("  ", " "))
    return stand_in


def _holders(file: Path) -> str:
    """Which other processes hold a lock on the store file or its WAL files (Linux /proc/locks)."""
    ids = set()
    for suffix in ("", "-shm", "-wal"):
        try:
            st = os.stat(f"{file}{suffix}")
        except OSError:
            continue
        ids.add(f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}")
    pids = set()
    try:
        with open("/proc/locks") as f:
            for line in f:  # "1: POSIX  ADVISORY  WRITE 4242 08:01:1234 0 EOF" (blocked waiters: "1: -> POSIX ...")
                parts = [p for p in line.split() if p != "->"]
                if len(parts) > 5 and parts[5] in ids and parts[4].isdigit() and int(parts[4]) != os.getpid():
                    pids.add(int(parts[4]))
    except OSError:
        pass
    if not pids:
        return "another process (not identified)"
    named = []
    for pid in sorted(pids)[:3]:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                command = " ".join(f.read(400).replace(b"\0", b" ").decode(errors="replace").split())[:100]
        except OSError:
            command = "?"
        named.append(f"pid {pid} ({command})")
    return ", ".join(named)


def in_memory() -> bool:
    """Whether this process keeps results in memory instead of the file (damaged and unmovable,
    unwritable, or locked too long): what it stores now is gone when it exits."""
    try:
        key = str(path())
    except OSError as exc:
        key = f"dir:{getattr(exc, 'filename', '')}"
    return key in _stand_ins


def _use(work, *, write: bool):
    """work(conn) on the store, in one write transaction when `write`; damaged, unwritable and locked
    files are handled as the comment above says, then the work is retried."""
    waiting_since = None
    moved = 0
    while True:
        try:
            file = path()
        except OSError as exc:
            stand_in = _stand_in(f"dir:{getattr(exc, 'filename', '')}", None,
                                 f"cannot be kept on disk: the cache directory cannot be created ({exc})",
                                 cache_files.FIX)
        else:
            stand_in = _stand_ins.get(str(file))
            if stand_in is None:
                try:
                    with closing(_connect(file)) as conn:
                        if not write:
                            return work(conn)
                        with _transaction(conn):
                            return work(conn)
                except sqlite3.Error as exc:
                    kind = _kind(exc)
                    if kind == "locked":
                        waiting_since = waiting_since or time.monotonic() - _WAIT_STEP_S
                        waited = time.monotonic() - waiting_since
                        holders = _holders(file)
                        if waited < _BUSY_TIMEOUT_S:
                            log.warning("waiting for the probe store %s: %s holds its lock (%.0f s so far; "
                                        "giving up after %.0f s)", file, holders, waited, _BUSY_TIMEOUT_S)
                            continue
                        _stand_in(str(file), file, f"stayed locked for {waited:.0f} s by {holders}",
                                  "let that process finish, or stop it")
                    elif kind == "damaged" and moved < 2:
                        try:
                            aside = cache_files.move_aside(file, ("-wal", "-shm", "-journal"))
                        except OSError as move_exc:
                            _stand_in(str(file), file, f"is damaged ({exc}) and could not be moved aside ({move_exc})",
                                      f"move that file away yourself, or {cache_files.FIX}", seed=False)
                        else:
                            moved += 1
                            cache_files.say_once(("store-moved", str(aside)), (
                                f"the probe store {file} was damaged ({exc}): moved it to {aside.name} (kept for "
                                "inspection) and started a fresh one; `navitrain probe` measures again what was lost"))
                    else:
                        _stand_in(str(file), file, f"cannot be used ({exc})", cache_files.FIX)
                    continue
        with stand_in.lock:
            if not write:
                return work(stand_in.conn)
            with _transaction(stand_in.conn):
                return work(stand_in.conn)


def _id(fingerprint) -> str:
    return str(getattr(fingerprint, "id", fingerprint))


def _json(text, default):
    """A stored JSON cell; `default` for one that does not parse (the store outlives code versions)."""
    try:
        return json.loads(text) if text else default
    except ValueError:
        return default


def _finite(value):
    return value if isinstance(value, (int, float)) and math.isfinite(value) else None


# --- probe results -------------------------------------------------------------------------------

def save_fingerprint(fingerprint) -> None:
    """Remember the facts behind a fingerprint (first sighting wins)."""
    facts = getattr(fingerprint, "facts", {})
    _use(lambda conn: conn.execute("INSERT OR IGNORE INTO fingerprints (fp, facts, first_seen) VALUES (?, ?, ?)",
                                   (_id(fingerprint), json.dumps(facts, sort_keys=True), time.time())), write=True)


def fingerprint_facts(fingerprint) -> dict | None:
    row = _use(lambda conn: conn.execute("SELECT facts FROM fingerprints WHERE fp = ?", (_id(fingerprint),)).fetchone(),
               write=False)
    return _json(row[0], None) if row else None


def save_result(fingerprint, result: ProbeResult) -> None:
    _use(lambda conn: conn.execute(
            "INSERT INTO probe_results (fp, case_name, route, env, outcome, detail, mode, max_abs, max_rel, seconds,"
            " route_info, essential, extra, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (_id(fingerprint), result.case, result.route, env_label(result.env), result.outcome, result.detail,
             result.mode, _finite(result.max_abs), _finite(result.max_rel), result.seconds, result.route_info,
             int(result.essential), json.dumps(result.extra), result.created or time.time())), write=True)


def _row_to_result(row) -> ProbeResult:
    (case, route, env, outcome, detail, mode, max_abs, max_rel, seconds, route_info, essential, extra, created) = row
    return ProbeResult(case=case, route=route, env=parse_env_label(env), outcome=outcome, detail=detail, mode=mode,
                       max_abs=max_abs, max_rel=max_rel, seconds=seconds, route_info=route_info,
                       essential=bool(essential), created=created, extra=_json(extra, {}))


def latest_results(fingerprint, routes: list[str] | None = None, env: dict[str, str] | None = None,
                   cases: list[str] | None = None) -> list[ProbeResult]:
    """The newest result per (route, env, case) for a fingerprint, optionally filtered; ordered by
    route, env and the order cases were first stored."""
    sql = ("SELECT case_name, route, env, outcome, detail, mode, max_abs, max_rel, seconds, route_info, essential,"
           " extra, created FROM probe_results WHERE id IN (SELECT MAX(id) FROM probe_results WHERE fp = ?"
           " GROUP BY route, env, case_name)")
    params: list = [_id(fingerprint)]
    if routes is not None:
        sql += f" AND route IN ({','.join('?' * len(routes))})"
        params += list(routes)
    if env is not None:
        sql += " AND env = ?"
        params.append(env_label(env))
    if cases is not None:
        sql += f" AND case_name IN ({','.join('?' * len(cases))})"
        params += list(cases)
    sql += " ORDER BY route, env, id"
    rows = _use(lambda conn: conn.execute(sql, params).fetchall(), write=False)
    return [_row_to_result(row) for row in rows]


# --- bench results (written by navitrain bench) --------------------------------------------------

def save_bench(fingerprint, route: str, workload: str, samples_per_s: float, step_ms: float | None,
               extra: dict | None = None) -> None:
    """Store one measured training speed (samples per second) of a workload on a route."""
    if not (isinstance(samples_per_s, (int, float)) and math.isfinite(samples_per_s) and samples_per_s > 0):
        raise ValueError(f"samples_per_s must be a positive number, not {samples_per_s!r}")
    _use(lambda conn: conn.execute(
        "INSERT INTO bench_results (fp, route, workload, samples_per_s, step_ms, extra, created)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)", (_id(fingerprint), route, workload, float(samples_per_s), _finite(step_ms),
                                          json.dumps(extra or {}, default=str), time.time())), write=True)


def bench_results(fingerprint) -> list[dict]:
    """The newest measurement per (route, workload) for a fingerprint."""
    sql = ("SELECT route, workload, samples_per_s, step_ms, extra, created FROM bench_results WHERE id IN"
           " (SELECT MAX(id) FROM bench_results WHERE fp = ? GROUP BY route, workload) ORDER BY route, workload")
    rows = _use(lambda conn: conn.execute(sql, (_id(fingerprint),)).fetchall(), write=False)
    return [{"route": r, "workload": w, "samples_per_s": s, "step_ms": ms, "extra": _json(e, {}), "created": c}
            for r, w, s, ms, e, c in rows]


def route_speeds(fingerprint) -> dict[str, float]:
    """Relative training speed per route (higher is faster; the fastest route of each workload is 1).

    For each workload every route's samples/s is divided by the best route's, and a route's speed is
    the geometric mean of its ratios, so routes measured on different workload sets still compare.
    Empty when nothing was measured for this fingerprint.
    """
    by_workload: dict[str, dict[str, float]] = {}
    for row in bench_results(fingerprint):
        by_workload.setdefault(row["workload"], {})[row["route"]] = row["samples_per_s"]
    logs: dict[str, list[float]] = {}
    for speeds in by_workload.values():
        best = max(speeds.values())
        for route, speed in speeds.items():
            logs.setdefault(route, []).append(math.log(speed / best))
    return {route: math.exp(sum(values) / len(values)) for route, values in logs.items()}


def passed_routes(fingerprint) -> list[str]:
    """Routes whose essential probe cases all passed for this fingerprint in the plain environment."""
    from navitrain.probe.cases import essential

    names = [c.name for c in essential()]
    by_route: dict[str, dict[str, str]] = {}
    for r in latest_results(fingerprint, env={}, cases=names):
        by_route.setdefault(r.route, {})[r.case] = r.outcome
    return [route for route, outcomes in by_route.items()
            if all(outcomes.get(n) == "pass" for n in names)]
