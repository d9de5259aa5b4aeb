"""Every NAVITRAIN_* environment variable, in one place.

Each variable is declared once here with its default and meaning; code reads it only through the
accessor functions below, so `navitrain doctor` can list them all and the docs stay true.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class EnvVar:
    name: str
    default: str | None
    help: str


VARIABLES: dict[str, EnvVar] = {}


def _declare(name: str, default: str | None, help: str) -> str:
    VARIABLES[name] = EnvVar(name, default, help)
    return name


ROUTE = _declare("NAVITRAIN_ROUTE", None, "Force navitrain.device() to this route (native, nomiopen, wgpu, cpu).")
WGPU_ADAPTER = _declare(
    "NAVITRAIN_WGPU_ADAPTER", None,
    "Pick the wgpu adapter whose name contains this text (case-insensitive); 'llvmpipe' or 'lavapipe' "
    "asks for the software adapter explicitly.")
WGPU_STRICT = _declare("NAVITRAIN_WGPU_STRICT", "0", "1: an op without a wgpu kernel raises instead of running on the CPU.")
WGPU_BATCH = _declare(
    "NAVITRAIN_WGPU_BATCH", "64",
    "Dispatches recorded before the wgpu device submits its command buffer (matrix products and "
    "convolutions are submitted sooner, so the GPU starts while Python records the rest).")
WGPU_TUNE = _declare("NAVITRAIN_WGPU_TUNE", "1", "0: never autotune wgpu GEMM tiles; use the built-in defaults.")
WGPU_CONV = _declare(
    "NAVITRAIN_WGPU_CONV", "auto",
    "wgpu 3x3 stride-1 convolutions: 'auto' (time implicit GEMM against Winograd F(2x2,3x3) once per shape "
    "on hardware adapters), 'gemm' or 'winograd'.")
CONV_WORKSPACE_MB = _declare(
    "NAVITRAIN_CONV_WORKSPACE_MB", "512", "Cap on the im2col workspace of the nomiopen convolution, in MiB.")
CONV_ALGO = _declare(
    "NAVITRAIN_CONV_ALGO", "auto",
    "Convolution algorithm of the nomiopen route: auto (cost model), tune (time the candidates once per "
    "shape), im2col, winograd2 or winograd4 (prefer that one where it applies).")
CACHE_DIR = _declare("NAVITRAIN_CACHE_DIR", None, "Where probe results, bench results and tuning caches live (default: the user cache dir).")
PROBE_TIMEOUT = _declare("NAVITRAIN_PROBE_TIMEOUT", "60", "Default per-case timeout of navitrain probe, in seconds.")
LOG = _declare("NAVITRAIN_LOG", "info", "Log level of the navitrain logger (debug, info, warning).")


def raw(name: str) -> str | None:
    """The variable's value, or its default when unset or empty."""
    if name not in VARIABLES:
        raise KeyError(f"{name} is not a declared NAVITRAIN_* variable (declare it in navitrain/_env.py)")
    value = os.environ.get(name)
    return value if value not in (None, "") else VARIABLES[name].default


def flag(name: str) -> bool:
    value = (raw(name) or "0").strip().lower()
    return value not in ("0", "false", "no", "off", "")


def integer(name: str) -> int:
    value = raw(name)
    try:
        return int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"{name}={value!r} is not an integer") from None


def route() -> str | None:
    value = raw(ROUTE)
    return value.strip().lower() if value else None


def wgpu_adapter() -> str | None:
    return raw(WGPU_ADAPTER)


def wgpu_strict() -> bool:
    return flag(WGPU_STRICT)


def cache_dir() -> Path:
    """navitrain's cache directory (created on demand)."""
    value = raw(CACHE_DIR)
    if value:
        path = Path(value).expanduser()
    else:
        import platformdirs

        path = Path(platformdirs.user_cache_dir("navitrain", appauthor=False))
    path.mkdir(parents=True, exist_ok=True)
    return path


def snapshot() -> dict[str, str | None]:
    """Every declared variable with its current raw value (None when unset), for reports."""
    return {name: os.environ.get(name) for name in VARIABLES}
