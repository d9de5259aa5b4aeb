"""Keep private data out of a shared report: host name, user name, home paths, serial numbers, MACs.

A report is built from a whitelist of fields (build.py), so most private facts never enter it; this is
the second line: every string that does enter (error messages, paths in details, environment values)
is scrubbed, and any key that names a private thing is dropped, wherever it sits.
"""
from __future__ import annotations

import getpass
import os
import re
import socket
from pathlib import Path
from typing import Any

_PRIVATE_KEY = re.compile(r"serial|uuid|unique_id|machine_id|hostname|host_name|mac_address|^mac$|^user$|username",
                          re.IGNORECASE)
_MAC = re.compile(r"\b[0-9a-fA-F]{2}(?:[:-][0-9a-fA-F]{2}){5}\b")
_HOME = re.compile(r"(?:/home|/Users|/var/home)/[^/\s'\"]+|/root(?=/|\b)")
# Names shorter than this are not replaced inside text: a user called "ai" would blank out every "ai".
MIN_NAME = 3


def local_secrets(extra: list[str] | tuple[str, ...] = ()) -> list[str]:
    """This machine's host name and user name (and any given), the strings a report must not contain."""
    found = list(extra)
    for get in (socket.gethostname, getpass.getuser, lambda: Path.home().name):
        try:
            found.append(get())
        except Exception:  # no user database entry, no home: nothing to hide
            pass
    for name in ("USER", "LOGNAME", "HOSTNAME"):
        found.append(os.environ.get(name, ""))
    names = {s.split(".")[0] for s in found if s} | {s for s in found if s}
    return sorted((s for s in names if len(s) >= MIN_NAME and s not in ("root", "localhost")), key=len, reverse=True)


def scrub_text(text: str, secrets: list[str]) -> str:
    text = _HOME.sub("~", text)
    text = _MAC.sub("<mac>", text)
    for secret in secrets:
        text = re.sub(rf"(?<![\w-]){re.escape(secret)}(?![\w-])", "<private>", text)
    return text


def scrub(value: Any, secrets: list[str]) -> Any:
    """A copy of `value` (JSON-like) with private keys dropped and every string scrubbed."""
    if isinstance(value, dict):
        return {scrub_text(str(k), secrets): scrub(v, secrets) for k, v in value.items()
                if not _PRIVATE_KEY.search(str(k))}
    if isinstance(value, (list, tuple)):
        return [scrub(v, secrets) for v in value]
    if isinstance(value, str):
        return scrub_text(value, secrets)
    return value
