"""One probe session: cases x routes x environments, run in children, each result stored as it arrives.

This is what `navitrain probe` and navitrain.device() call; the mechanics of children live in
runner.py, persistence in store.py.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from navitrain.probe import fingerprint as fingerprints
from navitrain.probe import store
from navitrain.probe.results import ProbeResult
from navitrain.probe.runner import Task, run_tasks


@dataclass
class ProbeRun:
    fingerprint: fingerprints.Fingerprint
    results: list[ProbeResult]
    interrupted: bool
    seed: int


def tasks_for(cases: Sequence, routes: Sequence[str], envs: Sequence[dict[str, str]]) -> list[Task]:
    """Route by route (so an unavailable route is found out early), environment by environment."""
    return [Task.make(case, route, env) for route in routes for env in envs for case in cases]


def run(cases: Sequence, routes: Sequence[str], envs: Sequence[dict[str, str]] = ({},), *, jobs: int | None = None,
        timeout: float | None = None, seed: int | None = None, fingerprint: fingerprints.Fingerprint | None = None,
        save: bool = True, on_result: Callable[[ProbeResult], None] | None = None,
        startup_timeout: float | None = None) -> ProbeRun:
    """Probe `cases` (Case or CaseRef) on `routes` under each of `envs`; results are stored one by one,
    so an interrupted session keeps what it found."""
    fp = fingerprint or fingerprints.current()
    if save:
        store.save_fingerprint(fp)

    def handle(result: ProbeResult) -> None:
        # A child that never got to start its case (start-up ran out) found nothing to remember: storing
        # it would let navitrain.device() refuse a route for a slow start on a loaded machine.
        if save and not result.extra.get("startup_timeout"):
            store.save_result(fp, result)
        if on_result is not None:
            on_result(result)

    limits = {} if startup_timeout is None else {"startup_timeout": startup_timeout}
    report = run_tasks(tasks_for(cases, routes, envs), jobs=jobs, timeout=timeout, seed=seed, on_result=handle,
                       **limits)
    return ProbeRun(fp, report.results, report.interrupted, report.seed)
