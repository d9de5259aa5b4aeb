"""Which routes `navitrain bench` times when the user names none: those whose essential probes passed on
this machine, and those not probed that trained correctly in an earlier bench here (`navitrain run`
benches every available route); when nothing was probed yet, every route that says it is available.
Every route left out is named with the true reason (unavailable, which probes failed, not probed). The cpu route is
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


def probe_status() -> dict[str, tuple[str, str]] | None:
    """What the stored essential probes say about each probed route for this fingerprint:
    route -> (state, detail), state "passed", "unavailable" (detail: the route's own reason, e.g. a
    CPU-only torch build) or "failed" (detail: the cases that did not pass and how). None when the probe
    store is unavailable or nothing was probed."""
    try:
        from navitrain.bench.machine import fingerprint
        from navitrain.probe import cases, store

        key = fingerprint()
        if not key:
            return None
        names = [c.name for c in cases.essential()]
        results = store.latest_results(key, env={}, cases=names)
    except Exception:
        return None
    by_route: dict[str, list] = {}
    for result in results:
        by_route.setdefault(result.route, []).append(result)
    status = {}
    for route, found in by_route.items():
        missing = [n for n in names if n not in {r.case for r in found}]
        not_passed = [r for r in found if r.outcome != "pass"]
        if not not_passed and not missing:
            status[route] = ("passed", "")
        elif not_passed and len(not_passed) == len(found) and all(r.outcome == "unavailable" for r in found):
            status[route] = ("unavailable", not_passed[0].detail)
        else:
            what = [f"{r.case} {r.outcome}" for r in not_passed[:3]] + (["..."] if len(not_passed) > 3 else [])
            if missing:
                what.append(f"{len(missing)} of {len(names)} essential cases never ran")
            status[route] = ("failed", ", ".join(what))
    return status or None


def _benched_routes() -> set[str]:
    """Routes with stored bench results for this fingerprint: the bench stores only rows whose losses
    fell and matched the CPU's, so such a route trained correctly here (`navitrain run` benches every
    available route, probed or not)."""
    try:
        from navitrain.bench import storage

        return storage.benched_routes()
    except Exception:
        return set()


def _grouped(routes_with_reason: dict[str, str]) -> list[str]:
    """'native, nomiopen: reason' for routes that share a reason, in registry order."""
    by_reason: dict[str, list[str]] = {}
    for route, reason in routes_with_reason.items():
        by_reason.setdefault(reason, []).append(route)
    return [f"{', '.join(routes)}: {reason}" for reason, routes in by_reason.items()]


def default_routes() -> tuple[list[str], str]:
    """(routes in registry order, a sentence saying why each route is benched or not)."""
    status = probe_status()
    available = available_routes()
    if status is None:
        routes = [r for r in registry.names() if r in available] or ["cpu"]
        return routes, ("nothing probed on this machine yet, so every available route; "
                        "run `navitrain probe` to bench only the routes that work")
    benched = _benched_routes()
    chosen: dict[str, str] = {}
    left_out: dict[str, str] = {}
    benched_unprobed: list[str] = []
    unprobed: list[str] = []
    for route in registry.names():
        state, detail = status.get(route, ("not probed", ""))
        if state == "passed":
            chosen[route] = "essential probes passed"
        elif route == "cpu":
            chosen[route] = f"the reference every speed-up is measured against (its probes: {state})"
        elif state == "unavailable":
            left_out[route] = f"unavailable here ({detail})"
        elif state == "failed":
            left_out[route] = f"essential probes failed ({detail}; navitrain probe --report)"
        elif route not in available:
            continue  # neither probed nor available: nothing true to say beyond not listing it
        elif route in benched:
            benched_unprobed.append(route)
            chosen[route] = "not probed, but trained correctly in an earlier bench here"
        else:
            unprobed.append(route)
            left_out[route] = "not probed yet"
    # the commands that would settle it, once per group of routes
    names = ",".join(benched_unprobed)
    for route in benched_unprobed:
        chosen[route] += f" (navitrain probe --route {names} probes {'it' if len(benched_unprobed) == 1 else 'them'})"
    names = ",".join(unprobed)
    for route in unprobed:
        left_out[route] += (f" (navitrain probe --route {names}, or bench "
                            f"{'it' if len(unprobed) == 1 else 'them'} anyway with --route {names})")
    routes = [r for r in registry.names() if r in chosen] or ["cpu"]
    why = "; ".join(_grouped(chosen))
    if left_out:
        why += "; not benched: " + "; ".join(_grouped(left_out))
    return routes, why
