"""Every NAVITRAIN_* environment variable, in one place.

Each variable is declared once here with its default, its meaning and its parser; code reads it only
through `value()` (or the accessors below), so a malformed value raises the same clear error wherever
it is read, `problems()` lets every command refuse it up front, and `navitrain doctor` reports it.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable


class EnvError(ValueError):
    """A NAVITRAIN_* variable holds a value its parser rejects."""


@dataclass(frozen=True)
class EnvVar:
    name: str
    default: str | None
    help: str
    parse: Callable[[str], Any] = str  # raises ValueError (message: what was expected) on a bad value


VARIABLES: dict[str, EnvVar] = {}


def _declare(name: str, default: str | None, help: str, parse: Callable[[str], Any] = str) -> str:
    VARIABLES[name] = EnvVar(name, default, help, parse)
    return name


# --- parsers: each takes the raw text and returns the value, or raises ValueError saying what it expects

def _choice(*options: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        value = text.strip().lower()
        if value not in options:
            raise ValueError(f"expected one of {', '.join(options)}")
        return value
    return parse


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _flag(text: str) -> bool:
    value = text.strip().lower()
    if value in _TRUE or value in _FALSE:
        return value in _TRUE
    raise ValueError(f"expected 1 or 0 (or {'/'.join(_TRUE[1:])} / {'/'.join(_FALSE[1:])})")


def _integer(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            raise ValueError(f"expected a whole number >= {minimum}") from None
        if value < minimum:
            raise ValueError(f"expected a whole number >= {minimum}")
        return value
    return parse


def _positive_seconds(text: str) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        raise ValueError("expected a number of seconds > 0") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError("expected a finite number of seconds > 0")
    return value


_SIZE_UNITS = {"": 1, "b": 1, "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "kb": 10**3, "mb": 10**6, "gb": 10**9}


def _size(text: str) -> int:
    """A byte count such as 6GiB, 512MiB, 6GB or 1073741824 (GiB = 2**30 bytes, GB = 10**9)."""
    import re

    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*", text)
    unit = match and match.group(2).lower()
    if not match or unit not in _SIZE_UNITS or float(match.group(1)) * _SIZE_UNITS[unit] < 1:
        raise ValueError("expected a size such as 6GiB, 512MiB or 6GB")
    return int(float(match.group(1)) * _SIZE_UNITS[unit])


def _limits_profile(text: str):
    from navitrain.wgpu.limits_profile import parse  # lazy: imports nothing heavy

    return parse(text)


def _route(text: str) -> str:
    from navitrain.routes import registry  # lazy: the route modules import nothing heavy at load

    return _choice(*registry.names())(text)


def _directory(text: str) -> Path:
    path = Path(text).expanduser()
    if path.exists() and not path.is_dir():
        raise ValueError("expected a directory (this path is a file)")
    return path


def _tune_mode(text: str) -> str:
    value = text.strip().lower()
    if value == "force":
        return "force"
    try:
        return "on" if _flag(value) else "off"
    except ValueError:
        raise ValueError("expected 1, 0 or force") from None


ROUTE = _declare("NAVITRAIN_ROUTE", None, "Force navitrain.device() to this route (native, nomiopen, wgpu, cpu).",
                 _route)
WGPU_ADAPTER = _declare(
    "NAVITRAIN_WGPU_ADAPTER", None,
    "Pick the wgpu adapter whose name contains this text (case-insensitive); 'llvmpipe' or 'lavapipe' "
    "asks for the software adapter explicitly.")
WGPU_STRICT = _declare("NAVITRAIN_WGPU_STRICT", "0",
                       "1: an op without a wgpu kernel raises instead of running on the CPU.", _flag)
WGPU_BATCH = _declare(
    "NAVITRAIN_WGPU_BATCH", "64",
    "Dispatches recorded before the wgpu device submits its command buffer (matrix products and "
    "convolutions are submitted sooner, so the GPU starts while Python records the rest).", _integer(1))
WGPU_COMPILE_THREADS = _declare(
    "NAVITRAIN_WGPU_COMPILE_THREADS", "0",
    "Threads that compile the candidate kernels of one tuned shape together (0: one per CPU core, up to "
    "16; 1: one after another, as they are first run).", _integer(0))
WGPU_TUNE = _declare("NAVITRAIN_WGPU_TUNE", "1", "0: never autotune wgpu GEMM tiles; use the built-in defaults. "
                     "force: tune even on software adapters.", _tune_mode)
WGPU_CONV = _declare(
    "NAVITRAIN_WGPU_CONV", "auto",
    "wgpu 3x3 stride-1 convolutions: 'auto' (time implicit GEMM against Winograd F(2x2,3x3) once per shape "
    "on hardware adapters), 'gemm' or 'winograd'.", _choice("auto", "gemm", "winograd"))
WGPU_PLANS = _declare(
    "NAVITRAIN_WGPU_PLANS", "1",
    "1: an eager wgpu op called again with the same arguments at the same addresses repeats its recorded "
    "work instead of running its handler's Python; 0: every call runs its handler; 'verify': every repeat "
    "runs the handler as well and raises if it did anything else (for testing).", _choice("1", "0", "verify"))
WGPU_FUSION = _declare("NAVITRAIN_WGPU_FUSION", "1",
                       "0: torch.compile(backend='wgpu') runs each pointwise op of its graphs as its own kernel "
                       "instead of fusing chains (to compare, or to rule fusion out).", _flag)
# The graph passes of torch.compile(backend="wgpu"), in the order they run (wgpu/compile.py).
FUSION_PASSES = ("foreach", "gemm", "constants", "norm", "conv_stats", "conv_relu", "inplace", "norm_pair", "counters")


def _fusion_passes(text: str) -> frozenset:
    names = {part.strip().lower() for part in text.split(",") if part.strip()}
    unknown = sorted(names - set(FUSION_PASSES))
    if unknown:
        raise ValueError(f"expected a comma-separated list of {', '.join(FUSION_PASSES)} "
                         f"(unknown: {', '.join(unknown)})")
    return frozenset(names)


WGPU_FUSION_OFF = _declare("NAVITRAIN_WGPU_FUSION_OFF", "",
                           "Comma-separated passes of torch.compile(backend='wgpu') to leave out, of "
                           + ", ".join(FUSION_PASSES) + " (to time or rule out one pass; norm_pair builds on norm's "
                           "fused batch norms; NAVITRAIN_WGPU_FUSION=0 leaves out all).", _fusion_passes)
WGPU_LIMITS = _declare(
    "NAVITRAIN_WGPU_LIMITS", None,
    "Request the wgpu device with no more than a card's limits and features: 'rx5600xt' (RADV on Navi 10) "
    "or the path of a JSON file {\"limits\": {...}, \"features\": [...]} (docs/wgpu.md).", _limits_profile)
WGPU_MEMORY_LIMIT = _declare(
    "NAVITRAIN_WGPU_MEMORY_LIMIT", None,
    "Cap the wgpu device's memory (e.g. 6GiB, the RX 5600 XT's): past it, torch.OutOfMemoryError.", _size)
CONV_WORKSPACE_MB = _declare(
    "NAVITRAIN_CONV_WORKSPACE_MB", "512", "Cap on the im2col workspace of the nomiopen convolution, in MiB.",
    _integer(0))
CONV_ALGO = _declare(
    "NAVITRAIN_CONV_ALGO", "auto",
    "Convolution algorithm of the nomiopen route: auto (cost model), tune (time the candidates once per "
    "shape), im2col, winograd2 or winograd4 (prefer that one where it applies).",
    _choice("auto", "tune", "im2col", "winograd2", "winograd4"))
CACHE_DIR = _declare("NAVITRAIN_CACHE_DIR", None, "Where probe results, bench results and tuning caches live "
                     "(default: the user cache dir).", _directory)
PROBE_TIMEOUT = _declare("NAVITRAIN_PROBE_TIMEOUT", "60", "Default per-case timeout of navitrain probe, in seconds "
                         "(the case itself; the child's start-up has its own limit).", _positive_seconds)
LOG = _declare("NAVITRAIN_LOG", "info", "Log level of the navitrain logger (debug, info, warning, error).",
               _choice("debug", "info", "warning", "error", "critical"))


def raw(name: str) -> str | None:
    """The variable's value, or its default when unset or empty."""
    if name not in VARIABLES:
        raise KeyError(f"{name} is not a declared NAVITRAIN_* variable (declare it in navitrain/_env.py)")
    value = os.environ.get(name)
    if watch is not None:
        watch.setdefault(name, value)
    return value if value not in (None, "") else VARIABLES[name].default


# While an eager op's plan is recorded (navitrain/wgpu/op_plans.py): {name: raw text} of every variable read,
# which a replay checks are unchanged.
watch: dict[str, str | None] | None = None


def problem(name: str, text: str | None) -> str | None:
    """Why `text` is not a valid value of the variable (None when it is, or when it is unset/empty)."""
    if text in (None, ""):
        return None
    try:
        VARIABLES[name].parse(text)
    except ValueError as exc:
        return f"{name}={text!r} is not valid: {exc}"
    return None


def value(name: str) -> Any:
    """The variable parsed (its default parsed when unset; None without a default). Raises EnvError
    naming the variable, the value and what was expected."""
    text = raw(name)
    if text is None:
        return None
    try:
        return VARIABLES[name].parse(text)
    except ValueError as exc:
        raise EnvError(f"{name}={text!r} is not valid: {exc}") from None


# (name -> (raw text, parsed value)) for value_on_hot_path: parsed again only when the text changed.
_PARSED: dict[str, tuple[str | None, Any]] = {}


def value_on_hot_path(name: str) -> Any:
    """value(name) for readers that ask on every op (the tuning mode, the op plans' switch): the environment is
    read every time (a test or a user may change it at run time), parsed only when its text changed; a malformed
    value is never kept, so it raises every time."""
    text = raw(name)
    known = _PARSED.get(name)
    if known is not None and known[0] == text:
        return known[1]
    parsed = value(name)
    _PARSED[name] = (text, parsed)
    return parsed


def problems(environ=None) -> list[str]:
    """One sentence per declared variable whose value is malformed (the environment, or the given mapping)."""
    environ = os.environ if environ is None else environ
    return [why for name in VARIABLES if (why := problem(name, environ.get(name))) is not None]


def flag(name: str) -> bool:
    return bool(value(name))


def integer(name: str) -> int:
    return int(value(name))


def route() -> str | None:
    return value(ROUTE)


def wgpu_adapter() -> str | None:
    return raw(WGPU_ADAPTER)


def wgpu_strict() -> bool:
    return flag(WGPU_STRICT)


def probe_timeout() -> float:
    return float(value(PROBE_TIMEOUT))


def cache_dir() -> Path:
    """navitrain's cache directory (created on demand)."""
    path = value(CACHE_DIR)
    if path is None:
        import platformdirs

        path = Path(platformdirs.user_cache_dir("navitrain", appauthor=False))
    path.mkdir(parents=True, exist_ok=True)
    return path


def snapshot() -> dict[str, str | None]:
    """Every declared variable with its current raw value (None when unset), for reports."""
    return {name: os.environ.get(name) for name in VARIABLES}
