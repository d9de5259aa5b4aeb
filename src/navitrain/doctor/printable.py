"""Text from outside (sysfs-like files under `--root`, child processes, overrides, crash logs) made safe to
show on a terminal.

A file under a fake or copied root can hold anything: escape sequences that recolour or clear the
terminal, set its title, or draw links (`ESC ] 8`); bidirectional-override characters that make text
read differently from what it is; bytes that are not UTF-8. The terminal must show such text, not obey
it. `printable` shows every control character as a visible escape (`\\x1b`, `\\u202e`), so nothing is
hidden and nothing is executed; undecodable bytes become U+FFFD. It is applied where the doctor reads
files (tree.py) and child output (probes.py), and again to everything the doctor and explain render.
"""
from __future__ import annotations

import re
from typing import Any

# C0 controls and DEL, C1 controls (0x80-0x9f: 0x9b is a one-byte CSI on some terminals), the
# bidirectional embeddings/overrides/isolates, and the line/paragraph separators.
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069\u2028\u2029]")
_UNSAFE_WITH_LINES = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069\u2028\u2029]")
# The most a single shown value may hold; longer text is cut with a note of how much was left out.
MAX_CHARS = 4096


def _escape(match: re.Match) -> str:
    code = ord(match.group(0))
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str | bytes | None, *, keep_lines: bool = False, limit: int | None = MAX_CHARS) -> str | None:
    """`text` with control characters shown as escapes, undecodable bytes replaced, at most `limit`
    characters (None: no cap). keep_lines keeps newlines and tabs (whole files that are parsed line by
    line); otherwise they are escaped too, so one value is one line."""
    if text is None:
        return None
    if isinstance(text, (bytes, bytearray)):
        text = bytes(text).decode("utf-8", errors="replace")
    elif not isinstance(text, str):
        text = str(text)
    if keep_lines:
        text = text.replace("\r\n", "\n")
    text = (_UNSAFE if keep_lines else _UNSAFE_WITH_LINES).sub(_escape, text)
    if limit is not None and len(text) > limit:
        text = f"{text[:limit]}… ({len(text) - limit} more characters)"
    return text


def printable_data(value: Any, *, limit: int | None = MAX_CHARS) -> Any:
    """The same JSON-like structure with every string (keys included) made printable."""
    if isinstance(value, str):
        return printable(value, keep_lines=True, limit=limit)
    if isinstance(value, dict):
        return {printable(k, limit=limit) if isinstance(k, str) else k: printable_data(v, limit=limit)
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [printable_data(v, limit=limit) for v in value]
    return value
