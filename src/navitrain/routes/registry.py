"""The route registry: routes register themselves; the probe and navitrain.device() ask here.

Built-in routes live in navitrain.routes.<name>; third-party packages can add routes through the
`navitrain.routes` entry-point group. A route module that is absent is simply not listed.
"""
from __future__ import annotations

import importlib
import logging
from typing import TypeVar

from navitrain.routes.base import Route

log = logging.getLogger("navitrain.routes")

_BUILTIN_MODULES = (
    "navitrain.routes.native",
    "navitrain.routes.nomiopen",
    "navitrain.routes.wgpu",
    "navitrain.routes.cpu",
)
_ROUTES: dict[str, type[Route]] = {}
_loaded = False

R = TypeVar("R", bound=type[Route])


def register(cls: R) -> R:
    """Class decorator: make a Route subclass known by its `name`."""
    if not getattr(cls, "name", None):
        raise TypeError(f"{cls.__qualname__} has no route name")
    _ROUTES[cls.name] = cls
    return cls


def _load() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for module in _BUILTIN_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                log.warning("route module %s failed to import: %s", module, exc)
        except Exception as exc:  # a broken route must not break the others
            log.warning("route module %s failed to import: %s", module, exc)
    try:
        from importlib.metadata import entry_points

        for ep in entry_points(group="navitrain.routes"):
            try:
                ep.load()
            except Exception as exc:
                log.warning("route plugin %s failed to load: %s", ep.name, exc)
    except Exception:  # pragma: no cover - importlib.metadata oddities
        pass


def names() -> list[str]:
    """All registered route names, fastest first by their default rank."""
    _load()
    return sorted(_ROUTES, key=lambda n: (_ROUTES[n].default_rank, n))


def get(name: str) -> Route:
    """A fresh instance of the named route; a clear error for unknown names."""
    _load()
    try:
        return _ROUTES[name]()
    except KeyError:
        raise ValueError(f"unknown route {name!r}; known routes: {', '.join(names())}") from None
