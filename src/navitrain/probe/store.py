"""The results store: probe outcomes and bench speeds per stack fingerprint, in one SQLite file.

It lives in navitrain's cache directory (NAVITRAIN_CACHE_DIR or the platform's user cache dir).
Several runs may write at once (two terminals, a probe beside a bench): the database uses WAL
journaling, a generous busy timeout, and every write is one short `BEGIN IMMEDIATE` transaction on a
connection opened for it, so writers queue instead of failing or corrupting anything. Rows are only
ever appended; "the" result of a case is the newest row for (fingerprint, route, env, case).
"""
from __future__ import annotations

import json
import math
import sqlite3
import time
from contextlib import closing, contextmanager
from pathlib import Path

from navitrain.probe.results import ProbeResult, env_label, parse_env_label

FILENAME = "navitrain.sqlite3"
_BUSY_TIMEOUT_S = 60.0
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
    from navitrain import _env

    return _env.cache_dir() / FILENAME


def _connect() -> sqlite3.Connection:
    conn = sqlite3.connect(str(path()), timeout=_BUSY_TIMEOUT_S, isolation_level=None)
    conn.execute(f"PRAGMA busy_timeout = {int(_BUSY_TIMEOUT_S * 1000)}")
    if conn.execute("PRAGMA user_version").fetchone()[0] != _SCHEMA_VERSION:
        conn.execute("PRAGMA journal_mode = WAL")  # persistent: set once per database file
        with _transaction(conn):  # (not executescript: it would commit the transaction first)
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")
    return conn


@contextmanager
def _transaction(conn: sqlite3.Connection):
    conn.execute("BEGIN IMMEDIATE")  # take the write lock now: no deadlock upgrading a read lock later
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    else:
        conn.execute("COMMIT")


@contextmanager
def _writing():
    with closing(_connect()) as conn, _transaction(conn):
        yield conn


def _id(fingerprint) -> str:
    return str(getattr(fingerprint, "id", fingerprint))


def _finite(value):
    return value if isinstance(value, (int, float)) and math.isfinite(value) else None


# --- probe results -------------------------------------------------------------------------------

def save_fingerprint(fingerprint) -> None:
    """Remember the facts behind a fingerprint (first sighting wins)."""
    facts = getattr(fingerprint, "facts", {})
    with _writing() as conn:
        conn.execute("INSERT OR IGNORE INTO fingerprints (fp, facts, first_seen) VALUES (?, ?, ?)",
                     (_id(fingerprint), json.dumps(facts, sort_keys=True), time.time()))


def fingerprint_facts(fingerprint) -> dict | None:
    with closing(_connect()) as conn:
        row = conn.execute("SELECT facts FROM fingerprints WHERE fp = ?", (_id(fingerprint),)).fetchone()
    return json.loads(row[0]) if row else None


def save_result(fingerprint, result: ProbeResult) -> None:
    with _writing() as conn:
        conn.execute(
            "INSERT INTO probe_results (fp, case_name, route, env, outcome, detail, mode, max_abs, max_rel, seconds,"
            " route_info, essential, extra, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (_id(fingerprint), result.case, result.route, env_label(result.env), result.outcome, result.detail,
             result.mode, _finite(result.max_abs), _finite(result.max_rel), result.seconds, result.route_info,
             int(result.essential), json.dumps(result.extra), result.created or time.time()))


def _row_to_result(row) -> ProbeResult:
    (case, route, env, outcome, detail, mode, max_abs, max_rel, seconds, route_info, essential, extra, created) = row
    return ProbeResult(case=case, route=route, env=parse_env_label(env), outcome=outcome, detail=detail, mode=mode,
                       max_abs=max_abs, max_rel=max_rel, seconds=seconds, route_info=route_info,
                       essential=bool(essential), created=created, extra=json.loads(extra or "{}"))


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
    with closing(_connect()) as conn:
        return [_row_to_result(row) for row in conn.execute(sql, params).fetchall()]


# --- bench results (written by navitrain bench) --------------------------------------------------

def save_bench(fingerprint, route: str, workload: str, samples_per_s: float, step_ms: float | None,
               extra: dict | None = None) -> None:
    """Store one measured training speed (samples per second) of a workload on a route."""
    if not (isinstance(samples_per_s, (int, float)) and math.isfinite(samples_per_s) and samples_per_s > 0):
        raise ValueError(f"samples_per_s must be a positive number, not {samples_per_s!r}")
    with _writing() as conn:
        conn.execute("INSERT INTO bench_results (fp, route, workload, samples_per_s, step_ms, extra, created)"
                     " VALUES (?, ?, ?, ?, ?, ?, ?)",
                     (_id(fingerprint), route, workload, float(samples_per_s), _finite(step_ms),
                      json.dumps(extra or {}, default=str), time.time()))


def bench_results(fingerprint) -> list[dict]:
    """The newest measurement per (route, workload) for a fingerprint."""
    sql = ("SELECT route, workload, samples_per_s, step_ms, extra, created FROM bench_results WHERE id IN"
           " (SELECT MAX(id) FROM bench_results WHERE fp = ? GROUP BY route, workload) ORDER BY route, workload")
    with closing(_connect()) as conn:
        rows = conn.execute(sql, (_id(fingerprint),)).fetchall()
    return [{"route": r, "workload": w, "samples_per_s": s, "step_ms": ms, "extra": json.loads(e), "created": c}
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
