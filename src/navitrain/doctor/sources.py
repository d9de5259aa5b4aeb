"""Turning the short source references of the knowledge notes into links people can open.

'ROCm#2527' -> ROCm/ROCm issue 2527; 'owner/repo#N' -> that issue or pull request;
'owner/repo:path' -> the file on the default branch. Anything else (a URL, a document name) is kept.
"""
from __future__ import annotations

import re

_ISSUE = re.compile(r"^([\w.-]+)/([\w.-]+)#(\d+)$")
_FILE = re.compile(r"^([\w.-]+)/([\w.-]+):(.+)$")


def link(ref: str) -> str:
    ref = ref.strip()
    if ref.startswith(("http://", "https://")):
        return ref
    if re.fullmatch(r"ROCm#\d+", ref):
        return f"https://github.com/ROCm/ROCm/issues/{ref.split('#')[1]}"
    m = _ISSUE.match(ref)
    if m:
        # GitHub redirects /issues/N to /pull/N for pull requests.
        return f"https://github.com/{m.group(1)}/{m.group(2)}/issues/{m.group(3)}"
    m = _FILE.match(ref)
    if m:
        return f"https://github.com/{m.group(1)}/{m.group(2)}/blob/HEAD/{m.group(3)}"
    return ref


def links(*refs: str) -> list[str]:
    return [link(r) for r in refs]
