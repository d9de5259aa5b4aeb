"""Reading a machine's files under a root directory, without ever raising.

Every file the doctor looks at goes through a `Tree`, so that the whole doctor runs on fake trees in
tests (`--root DIR`) and so that the tests can list exactly which files it read and throw garbage at
each of them. A missing, unreadable, binary or enormous file reads as None or as cleaned-up text,
never as an exception.
"""
from __future__ import annotations

import fnmatch
import os
from pathlib import Path

from navitrain.doctor.printable import printable

# sysfs and /proc files are tiny; a bigger file is not what we think it is.
MAX_BYTES = 1 << 20


class Tree:
    def __init__(self, root: str | os.PathLike = "/"):
        self.root = Path(root)
        self.reads: set[str] = set()  # absolute in-tree paths ("/sys/...") the doctor tried to read

    @property
    def is_live(self) -> bool:
        """True when the tree is this machine's real root, so process-level facts belong to it."""
        try:
            return self.root.resolve() == Path("/").resolve()
        except OSError:
            return False

    def path(self, rel: str) -> Path:
        return self.root / rel.lstrip("/")

    def read_bytes(self, rel: str, limit: int = MAX_BYTES) -> bytes | None:
        self.reads.add("/" + rel.lstrip("/"))
        try:
            with open(self.path(rel), "rb") as handle:
                return handle.read(limit)
        except (OSError, ValueError):
            return None

    def read_text(self, rel: str, limit: int = MAX_BYTES) -> str | None:
        """The file as text, or None when unreadable: NULs dropped, undecodable bytes replaced, and control
        characters (escape sequences) shown as escapes, since what a file holds may end up on a terminal."""
        data = self.read_bytes(rel, limit)
        if data is None:
            return None
        return printable(data.replace(b"\x00", b""), keep_lines=True, limit=None)

    def read_line(self, rel: str) -> str | None:
        """The first line of a one-value file (sysfs style), stripped; None when missing or empty."""
        text = self.read_text(rel, limit=4096)
        if text is None:
            return None
        lines = text.strip().splitlines()
        return lines[0].strip() if lines else None

    def listdir(self, rel: str) -> list[str]:
        try:
            return sorted(os.listdir(self.path(rel)))
        except (OSError, ValueError):
            return []

    def glob(self, rel_dir: str, pattern: str) -> list[str]:
        """In-tree paths of the entries of rel_dir whose names match the shell pattern."""
        base = "/" + rel_dir.strip("/")
        return [f"{base}/{name}" for name in self.listdir(rel_dir) if fnmatch.fnmatchcase(name, pattern)]

    def exists(self, rel: str) -> bool:
        try:
            return self.path(rel).exists()
        except (OSError, ValueError):
            return False

    def is_dir(self, rel: str) -> bool:
        try:
            return self.path(rel).is_dir()
        except (OSError, ValueError):
            return False

    def realname(self, rel: str) -> str | None:
        """Last component of the resolved path (sysfs links name the PCI slot), or None."""
        try:
            return self.path(rel).resolve().name or None
        except (OSError, ValueError, RuntimeError):
            return None


def parse_int(text: str | None, base: int = 0) -> int | None:
    """'0x731f', '29471', ' 0xCA\\n' -> int; anything else -> None."""
    if text is None:
        return None
    try:
        return int(text.strip().split()[0], base)
    except (ValueError, IndexError):
        return None


def parse_key_values(text: str | None) -> dict[str, str]:
    """'key value' lines (KFD properties) or 'KEY=value' lines (uevent, os-release) -> dict."""
    out: dict[str, str] = {}
    for line in (text or "").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if "=" in line and (" " not in line.split("=", 1)[0]):
            key, value = line.split("=", 1)
            out[key.strip()] = value.strip().strip('"')
        else:
            parts = line.split(None, 1)
            out[parts[0]] = parts[1].strip() if len(parts) > 1 else ""
    return out
