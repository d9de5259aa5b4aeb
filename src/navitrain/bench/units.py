"""The one way bench numbers are written for people: step times in µs/ms/s, rates and ratios with a few
significant digits, never in scientific notation ("4.26 s ±1.4", not "4.26e+03 ±1.4e+03"). Used by the
table, the summary lines, the chart and `navitrain run`'s demo line."""
from __future__ import annotations

import math


def plain(value: float, significant: int = 3) -> str:
    """`value` with about `significant` significant digits and no exponent (large values keep all their
    integer digits: 29921 stays 29921, it is not rounded to 29900)."""
    if not math.isfinite(value):
        return str(value)
    if value == 0:
        return "0"
    magnitude = math.floor(math.log10(abs(value)))
    if abs(float(f"{value:.{max(0, significant - 1 - magnitude)}f}")) >= 10 ** (magnitude + 1):
        magnitude += 1  # rounding carried into the next digit (0.9997 -> 1.00, not 1.000)
    decimals = max(0, significant - 1 - magnitude)
    return f"{value:.{decimals}f}"


def duration(ms: float | None, spread_ms: float | None = None) -> str:
    """A time given in milliseconds, in the unit that keeps it between 1 and 1000, with its spread in
    the same unit: "850 µs", "216 ms ±14", "4.26 s ±1.4"."""
    if ms is None:
        return "-"
    if not math.isfinite(ms):
        return f"{ms} ms"
    # thresholds just under 1000 and 1, so 999.7 ms is written "1.00 s", never "1000 ms"
    scale, unit = (1e-3, "s") if abs(ms) >= 999.5 else (1.0, "ms") if abs(ms) >= 0.9995 else (1e3, "µs")
    text = f"{plain(ms * scale)} {unit}"
    if spread_ms is not None:
        text += f" ±{plain(spread_ms * scale, 2)}"
    return text


def rate(value: float | None) -> str:
    """Samples per second: whole numbers with thousands separators from 100 up, else 3 digits."""
    if value is None:
        return "-"
    if math.isfinite(value) and abs(value) >= 100:
        return f"{value:,.0f}"
    return plain(value)


def ratio(value: float | None) -> str:
    """A speed-up such as "1.00x", "12.3x" or "0.0042x" (two decimals below 10, but never rounded to 0)."""
    if value is None:
        return "-"
    if math.isfinite(value) and 0 < abs(value) < 0.1:
        return f"{plain(value, 2)}x"
    if math.isfinite(value) and abs(value) >= 10:
        return f"{plain(value)}x"
    return f"{value:.2f}x"
