"""Which routes `navitrain bench` and `navitrain run` time when the user names none: those whose probes
passed on this machine, else every route that says it is available. The cpu route is always included:
it is the reference every speed-up is measured against."""
from __future__ import annotations

from navitrain.routes import registry


def check_names(routes: list[str]) -> None:
    known = registry.names()
    for name in routes:
        if name not in known:
            raise ValueError(f"unknown route {name!r}; known routes: {', '.join(known)}")


def available_routes() -> dict[str, str]:
    """Every registered route that says it could run here, with its one-line reason."""
    found = {}
    for name in registry.names():
        try:
            availability = registry.get(name).availability()
        except Exception:  # availability() must not raise; a route that does is not available
            continue
        if availability.ok:
            found[name] = availability.reason
    return found


def _passed_routes() -> list[str] | None:
    """Routes whose essential probes passed for this fingerprint; None when nothing was probed."""
    try:
        from navitrain.bench.machine import fingerprint
        from navitrain.probe import store
    except Exception:
        return None
    passed = getattr(store, "passed_routes", None)
    key = fingerprint()
    if passed is None or not key:
        return None
    try:
        routes = list(passed(key))
    except Exception:
        return None
    return routes or None


def default_routes() -> tuple[list[str], str]:
    """(routes, why) in registry order (fastest first by default rank), cpu last."""
    passed = _passed_routes()
    if passed:
        routes = [r for r in registry.names() if r in passed or r == "cpu"]
        return routes, "the routes whose probes passed on this machine"
    available = available_routes()
    routes = [r for r in registry.names() if r in available] or ["cpu"]
    return routes, ("nothing probed on this machine yet, so every available route; "
                    "run `navitrain probe` to bench only the routes that work")
