"""Moved to navitrain.select (issue 16: probe/ is about probing; the route choice uses it). This alias
keeps `navitrain.probe.select.RouteNotWorking` and friends, as docs/probe.md named them, importable."""
from navitrain.select import RouteNotWorking, active_route, device, essential_results, route_order

__all__ = ["RouteNotWorking", "active_route", "device", "essential_results", "route_order"]
