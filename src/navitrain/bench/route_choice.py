"""Which routes `navitrain bench` times when the user names none: those whose essential probes passed on
this machine; when nothing was probed yet, every route that says it is available. The cpu route is
always included: it is the reference every speed-up is measured against. (`navitrain run` benches every
available route: see `available_routes`.)"""
from __future__ import annotations

from navitrain.routes import registry


def check_names(routes: list[str]) -> None:
    known = registry.names()
    for name in routes:
        if name not in known:
            raise ValueError(f"unknown route {name!r}; known routes: {', '.join(known)}")


def _available_here() -> dict[str, str]:
    found = {}
    for name in registry.names():
        try:
            availability = registry.get(name).availability()
        except Exception:  # availability() must not raise; a route that does is not available
            continue
        if availability.ok:
            found[name] = availability.reason
    return found


def _report_availability(conn) -> None:
    conn.send(_available_here())
    conn.close()


def available_routes(timeout: float = 120.0) -> dict[str, str]:
    """Every registered route that says it could run here, with its one-line reason, fastest first.

    Asked in a spawned child: a route's availability check may open the GPU runtime (the native route
    counts devices and reads their properties), and the bench's parent process never touches the GPU.
    When the child fails or stalls, only the cpu route is offered."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    receive, send = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_report_availability, args=(send,), name="navitrain-route-availability",
                        daemon=True)
    child.start()
    send.close()
    try:
        if receive.poll(timeout):
            return receive.recv()
    except (EOFError, OSError):
        pass
    finally:
        child.join(5)
        if child.is_alive():
            child.kill()
            child.join(5)
        receive.close()
    return {"cpu": "the route availability check failed; offering the CPU only"}


def probe_status() -> tuple[list[str], list[str]] | None:
    """(routes whose essential probes all passed, routes with essential results that did not all pass)
    for this fingerprint; None when the probe store is unavailable or nothing was probed."""
    try:
        from navitrain.bench.machine import fingerprint
        from navitrain.probe import cases, store

        key = fingerprint()
        if not key:
            return None
        passed = list(store.passed_routes(key))
        names = [c.name for c in cases.essential()]
        probed = {r.route for r in store.latest_results(key, env={}, cases=names)}
    except Exception:
        return None
    if not probed:
        return None
    return passed, sorted(probed - set(passed))


def default_routes() -> tuple[list[str], str]:
    """(routes in registry order, a sentence saying how they were chosen)."""
    status = probe_status()
    available = available_routes()
    if status is None:
        routes = [r for r in registry.names() if r in available] or ["cpu"]
        return routes, ("nothing probed on this machine yet, so every available route; "
                        "run `navitrain probe` to bench only the routes that work")
    passed, failed = status
    routes = [r for r in registry.names() if r in passed or r == "cpu"]
    why = "the routes whose essential probes passed here"
    if failed:
        why += f"; not {', '.join(failed)} (probes failed: navitrain probe --report)"
    unprobed = [r for r in registry.names() if r in available and r not in passed and r not in failed]
    if unprobed:
        why += f"; {', '.join(unprobed)} not probed yet (navitrain probe --route {','.join(unprobed)})"
    return routes, why
