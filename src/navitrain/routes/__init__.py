"""Routes: the ways navitrain can run a training step (see routes/base.py and routes/registry.py)."""
from navitrain.routes.base import Availability, Route
from navitrain.routes.registry import get, names, register

__all__ = ["Availability", "Route", "get", "names", "register"]
