"""Probe cases: what one probe computes, and the registry the catalogue and user files fill.

A case is a function `f(device) -> Tensor | tuple | list | dict of Tensors`. The worker calls it once on
the route's device and once on the CPU (the reference) with torch's CPU generator seeded identically
before each call, so inputs made on the CPU and moved to `device` are the same in both runs. A case may
also take a `dtype` parameter: it then gets the case's dtype on the device and the reference dtype
(float64 by default) on the CPU.

This module is torch-free: the parent process lists and selects cases without importing torch.
"""
from __future__ import annotations

import fnmatch
import importlib
import inspect
from dataclasses import dataclass, field
from typing import Callable

CATALOGUE_PACKAGE = "navitrain.probe.catalogue"
_FLOAT_NAMES = ("float64", "float32", "float16", "bfloat16")


class Unsupported(Exception):
    """Raise from a case when the device cannot run it by design (e.g. no autocast for the device
    type); the probe records the outcome `unavailable` with this message."""


@dataclass(frozen=True)
class Case:
    name: str
    fn: Callable = field(repr=False, compare=False)
    source: str                 # "module:<dotted name>" or "file:<path>": where the worker finds it
    dtype: str | None = None    # device-run dtype (passed when fn takes `dtype`); sets the tolerance class
    reference: str = "float64"  # dtype for the CPU reference run when fn takes `dtype`
    rtol: float | None = None   # override the dtype's tolerances
    atol: float | None = None
    essential: bool = False     # needed by navitrain.device(): a training step depends on it
    group: str = "custom"
    doc: str = ""

    @property
    def takes_dtype(self) -> bool:
        return "dtype" in inspect.signature(self.fn).parameters

    def describe(self) -> dict:
        return {"name": self.name, "group": self.group, "essential": self.essential, "dtype": self.dtype,
                "source": self.source, "doc": self.doc}


_REGISTRY: dict[str, Case] = {}
# Set by load_file() while a user file executes, so its cases remember where they came from.
_loading_file: str | None = None


def case(name: str, *, dtype: str | None = None, reference: str = "float64", rtol: float | None = None,
         atol: float | None = None, essential: bool = False, group: str = "custom"):
    """Decorator that registers a probe case: `@navitrain.probe.case("my-op")` on `f(device)`.

    dtype: the precision the case runs in on the device (float32, float16, bfloat16); passed to `f` when
    it has a `dtype` parameter, and used to pick the comparison tolerances. reference: the dtype of the
    CPU reference run for such an `f` (float64 by default; "same" to use `dtype`). rtol/atol override
    the tolerances (atol is relative to the largest reference value). essential: navitrain.device()
    needs it (catalogue use).
    """
    for label, value in (("dtype", dtype), ("reference", reference)):
        if value is not None and value not in _FLOAT_NAMES + (("same",) if label == "reference" else ()):
            raise ValueError(f"case {name!r}: {label}={value!r} is not one of {', '.join(_FLOAT_NAMES)}")

    def register(fn: Callable) -> Callable:
        source = f"file:{_loading_file}" if _loading_file else f"module:{fn.__module__}"
        existing = _REGISTRY.get(name)
        if existing is not None and existing.source != source:
            raise ValueError(f"probe case {name!r} is defined twice ({existing.source} and {source})")
        _REGISTRY[name] = Case(name=name, fn=fn, source=source, dtype=dtype, reference=reference, rtol=rtol,
                               atol=atol, essential=essential, group=group,
                               doc=inspect.cleandoc(fn.__doc__ or "").split("\n")[0])
        return fn

    return register


def load_catalogue() -> list[Case]:
    """Every built-in case, in catalogue order (torch is not imported)."""
    package = importlib.import_module(CATALOGUE_PACKAGE)
    for module in package.MODULES:
        importlib.import_module(f"{CATALOGUE_PACKAGE}.{module}")
    return [c for c in _REGISTRY.values() if c.source.startswith(f"module:{CATALOGUE_PACKAGE}.")]


def load_file(path: str) -> list[Case]:
    """Execute a user's case file and return the cases it defined (run this in a child: user code)."""
    global _loading_file
    import runpy

    before = set(_REGISTRY)
    _loading_file = path
    try:
        runpy.run_path(path, run_name="navitrain_user_cases")
    finally:
        _loading_file = None
    return [c for n, c in _REGISTRY.items() if n not in before or _REGISTRY[n].source == f"file:{path}"]


def load_source(source: str) -> None:
    """Make the cases of one source known in this process (the worker's lean import)."""
    kind, _, where = source.partition(":")
    if kind == "module":
        importlib.import_module(where)
    elif kind == "file":
        if not any(c.source == source for c in _REGISTRY.values()):
            load_file(where)
    else:
        raise ValueError(f"bad case source {source!r}")


def get(name: str) -> Case:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"no probe case named {name!r}") from None


def essential() -> list[Case]:
    """The catalogue cases navitrain.device() runs: training runs and what they depend on."""
    return [c for c in load_catalogue() if c.essential]


def select(cases: list[Case], patterns: list[str] | None) -> list[Case]:
    """Cases whose name matches any shell-style pattern (all when no patterns)."""
    if not patterns:
        return list(cases)
    return [c for c in cases if any(fnmatch.fnmatchcase(c.name, p) for p in patterns)]
