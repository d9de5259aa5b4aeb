"""navitrain.device(): the torch.device of the fastest route that trains correctly on this machine.

A route is trusted when every essential probe case (the two short training runs and the operations
they are built from) passed on it for this machine's fingerprint, in the plain environment. Stored
results are used when there are any; missing ones are probed now, in child processes, route by
route in speed order, stopping at the first route that works. Speed order comes from `navitrain
bench` measurements at standard sizes for this fingerprint where there are any
(bench.storage.representative_speeds; tiny-size results never count), else from each
route's default rank (native > nomiopen > wgpu > cpu). The chosen route is prepared in this process
(overrides installed, device registered) and its device returned; the choice and the reasons are
logged on the `navitrain.device` logger.

The choice lives here, above the packages it combines (probe/ runs and stores the probes, routes/
defines and prepares the routes, bench/ measures their speed), not inside any of them.
"""
from __future__ import annotations

import logging
import sys
from contextlib import contextmanager

from navitrain import _env
from navitrain.probe import cases as case_catalogue
from navitrain.probe import fingerprint as fingerprints
from navitrain.probe import session, store
from navitrain.probe.results import HANG, PASS, UNAVAILABLE, ProbeResult
from navitrain.routes import registry

log = logging.getLogger("navitrain.device")
_active_route = None  # the prepared route object, kept alive (and releasable) for the process


class RouteNotWorking(RuntimeError):
    """The asked-for route failed essential probes (or is not available) on this machine."""

    def __init__(self, route: str, failed: list[ProbeResult]):
        self.route = route
        self.failed = failed
        if failed and all(r.outcome == UNAVAILABLE for r in failed):
            why = f"it is not available here: {failed[0].detail}"
        else:
            why = "these essential probes failed: " + "; ".join(
                f"{r.case} ({r.outcome}{', ' + r.mode if r.mode else ''}: {r.detail})" for r in failed)
        super().__init__(f"route {route!r} does not work on this machine: {why}. "
                         f"Details: `navitrain probe --route {route}`; navitrain.device() without a route "
                         f"picks one that works.")


def _ensure_log_handler() -> None:
    """Make the choice visible (NAVITRAIN_LOG, default info) unless the application set up logging."""
    logger = logging.getLogger("navitrain")
    if logger.handlers or logging.getLogger().handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("navitrain: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(_env.value(_env.LOG).upper())


def route_order(fingerprint) -> tuple[list[str], str]:
    """Route names fastest first, and a sentence saying where the order comes from."""
    names = registry.names()
    ranks = {n: registry.get(n).default_rank for n in names}
    # wgpu on a software rasteriser (lavapipe/llvmpipe) is correct but slower than plain PyTorch on the
    # same CPU: without measurements, rank it after `cpu`.
    facts = getattr(fingerprint, "facts", None) or {}
    software = ""
    if "wgpu" in ranks and (facts.get("wgpu") or {}).get("software"):
        ranks["wgpu"] = ranks.get("cpu", 100) + 10
        adapter = (facts.get("wgpu") or {}).get("adapter") or "the Vulkan adapter"
        software = (f"; wgpu placed after cpu: its adapter ({adapter}) is a software rasteriser, "
                    "slower than PyTorch on the same CPU")
    # Only standard-size results order routes (issue 18): at tiny sizes a step is Python per op, and
    # such a bench called an H200 0.18x the CPU. bench.storage says what it used and what it ignored.
    from navitrain.bench.storage import representative_speeds

    speeds, measured_why = representative_speeds(fingerprint)
    measured = {n: s for n, s in speeds.items() if n in ranks}
    if not measured:
        order = sorted(names, key=lambda n: (ranks[n], n))
        return order, f"default order ({measured_why}{software})"
    order = sorted(names, key=lambda n: (0, -measured[n], n) if n in measured else (1, ranks[n], n))
    shown = ", ".join(f"{n} {measured[n]:.2f}" for n in order if n in measured)
    return order, (f"measured speed (relative to the fastest: {shown}; {measured_why}"
                   f"{software if 'wgpu' not in measured else ''})")


@contextmanager
def _progress(enabled: bool, total: int, label: str):
    if not enabled:
        yield lambda result: log.debug("probe %s on %s: %s", result.case, result.route, result.outcome)
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(label, total=total)
        yield lambda result: bar.update(task, advance=1, description=f"{label}: {result.case} {result.outcome}")


def essential_results(fingerprint, route: str, *, rerun: bool = False, timeout: float | None = None,
                      jobs: int | None = None, progress: bool = False) -> list[ProbeResult]:
    """The essential cases' results for a route in the plain environment: stored ones, the rest probed now."""
    essential = case_catalogue.essential()
    names = [c.name for c in essential]
    found: dict[str, ProbeResult] = {}
    if not rerun:
        found = {r.case: r for r in store.latest_results(fingerprint, routes=[route], env={}, cases=names)}
    missing = [c for c in essential if c.name not in found]
    if missing:
        log.debug("probing %d essential cases on %s", len(missing), route)
        with _progress(progress, len(missing), f"probing {route}") as on_result:
            run = session.run(missing, [route], [{}], jobs=jobs, timeout=timeout, fingerprint=fingerprint,
                              on_result=on_result)
        if run.interrupted:
            raise KeyboardInterrupt
        found.update({r.case: r for r in run.results})
    return [found[n] for n in names if n in found]


def _prepare(route: str, index: int | None = None) -> tuple:
    """Prepare the route in this process: (device, the route's own one-line description of itself).
    index: which GPU of the route this process uses (torchrun: the local rank)."""
    global _active_route
    chosen = registry.get(route)
    # Asked here, not taken from the probes: a child's view (thread count, environment) can differ.
    info = chosen.availability().reason
    if index is not None and route == "wgpu":
        import navitrain.wgpu as nw

        nw.set_device(index)  # before prepare() opens an adapter: one per process
    dev = chosen.prepare()
    if index is not None:
        if dev.type == "cuda":
            import torch

            torch.cuda.set_device(index)
        elif dev.type != "wgpu" and index != 0:
            raise ValueError(f"index={index}: the {route} route has one device, {dev}")
        dev = type(dev)(dev.type, index) if dev.type in ("cuda", "wgpu") else dev
    _active_route = chosen
    return dev, info


def _failures(results: list[ProbeResult]) -> list[ProbeResult]:
    """The results that stop a route. On `cpu` (the last resort: plain PyTorch) a hang or a start-up that
    ran out is taken for a loaded machine, not a broken route: logged, never a reason to refuse it."""
    failed = []
    for r in results:
        if r.outcome == PASS:
            continue
        if r.route == "cpu" and (r.outcome == HANG or r.extra.get("startup_timeout")):
            log.warning("cpu: probe %s did not finish in time (%s); not refusing the CPU for that", r.case, r.detail)
            continue
        failed.append(r)
    return failed


def _passed(results: list[ProbeResult], sentence: str) -> str:
    """`sentence` with "N essential probes" filled in truly: on cpu some may have run out of time
    (see _failures), and then the sentence says how many passed and why the rest did not count."""
    ok = sum(r.outcome == PASS for r in results)
    if ok == len(results):
        return sentence % f"{ok} essential probes"
    return (sentence % f"{ok} of {len(results)} essential probes" + f"; the other {len(results) - ok} ran "
            "out of time, which is not held against the CPU")


def _skip_reason(failed: list[ProbeResult]) -> str:
    if all(r.outcome == UNAVAILABLE for r in failed):
        return f"unavailable: {failed[0].detail}"
    return ", ".join(f"{r.case} {r.outcome}" for r in failed[:3]) + (" ..." if len(failed) > 3 else "")


def device(route: str | None = None, *, index: int | None = None, rerun: bool = False, verify: bool = True,
           timeout: float | None = None, jobs: int | None = None, progress: bool | None = None):
    """A torch.device on the fastest route whose essential probes pass here, with that route prepared.

    route: use this route (NAVITRAIN_ROUTE does the same); raises RouteNotWorking naming the failed
    cases when its essential probes do not pass. verify=False skips the probes for an asked-for route.
    rerun: probe again instead of trusting stored results. progress: show a progress bar while
    probing (default: when stderr is a terminal). index: the route's GPU N for this process
    (torch.device(type, N); for wgpu the N-th adapter in docs/wgpu.md's order; torchrun: LOCAL_RANK).
    """
    _ensure_log_handler()
    asked = route or _env.route()
    if progress is None:
        progress = sys.stderr.isatty()
    if asked:
        registry.get(asked)  # a clear ValueError for an unknown name before any probing
        source = "asked for" if route else f"{_env.ROUTE}={asked}"
        if not verify:
            dev, info = _prepare(asked, index)
            log.info("training on %s (%s; %s): %s, probes skipped (verify=False)", asked, dev, info, source)
            return dev
    fp = fingerprints.current()
    if asked:
        results = essential_results(fp, asked, rerun=rerun, timeout=timeout, jobs=jobs, progress=progress)
        failed = _failures(results)
        if failed:
            raise RouteNotWorking(asked, failed)
        dev, info = _prepare(asked, index)
        log.info("training on %s (%s; %s): %s; %s", asked, dev, info, source, _passed(results, "its %s passed"))
        return dev

    order, order_why = route_order(fp)
    skipped = []
    for name in order:
        results = essential_results(fp, name, rerun=rerun, timeout=timeout, jobs=jobs, progress=progress)
        failed = _failures(results)
        if failed or not results:
            skipped.append(f"{name} ({_skip_reason(failed) if failed else 'no essential cases'})")
            continue
        dev, info = _prepare(name, index)
        log.info("training on %s (%s; %s): the fastest route %s, by %s%s",
                 name, dev, info, _passed(results, "whose %s pass here"), order_why,
                 f"; skipped {'; '.join(skipped)}" if skipped else "")
        return dev
    raise RuntimeError("no route works on this machine, not even cpu: " + "; ".join(skipped))


def active_route():
    """The route navitrain.device() prepared in this process (None before the first call)."""
    return _active_route
