"""Assemble a report (schema navitrain.report/1) from what doctor, the probe and the bench found.

Only named fields are copied (a whitelist): a reader needs the card, its PCI id and gfx target, the
kernel, amdgpu, Mesa/RADV, ROCm and torch builds, the Vulkan adapter with its limits and features, the
probe matrix with failure modes and the bench's step times; nothing else from the machine goes in.
Then privacy.scrub removes what might still hide in free text.
"""
from __future__ import annotations

import re
import time
from typing import Any

from navitrain.report import privacy

SCHEMA = "navitrain.report/1"
_BENCH_FIELDS = ("route", "workload", "title", "size", "mode", "status", "batch_size", "median_ms", "iqr_ms",
                 "samples_per_s", "speedup_vs_cpu", "peak_memory_bytes", "memory_kind", "detail")


def _get(d: Any, *keys, default=None):
    for key in keys:
        if not isinstance(d, dict) or key not in d:
            return default
        d = d[key]
    return d


def _hex(value) -> str:
    """'0x1002' -> '1002' (the form lspci prints); '?' when unknown."""
    text = str(value or "")
    return text[2:] if text.startswith("0x") else (text or "?")


def _mesa(adapters: list[dict]) -> str | None:
    for a in adapters:
        match = re.search(r"Mesa [0-9][^ ,)]*", str(a.get("driver") or ""))
        if match and not a.get("software"):
            return match.group(0)
    return None


def machine_part(facts: dict) -> dict:
    adapters = [a for a in _get(facts, "vulkan", "adapters", default=[]) or [] if isinstance(a, dict)]
    return {
        "system": {k: _get(facts, "system", k) for k in ("os", "kernel", "python", "machine")},
        "gpus": [{
            "name": g.get("name"), "pci_id": f"{_hex(g.get('vendor_id'))}:{_hex(g.get('device_id'))}",
            "revision": g.get("revision"), "chip": g.get("chip"), "family": g.get("family"),
            "gfx_target": g.get("gfx_target"), "vram_bytes": g.get("vram_bytes"), "driver": g.get("driver"),
            "integrated": g.get("integrated")} for g in _get(facts, "gpus", default=[]) or [] if isinstance(g, dict)],
        "drivers": {
            "amdgpu_loaded": _get(facts, "amdgpu", "loaded"), "amdgpu_version": _get(facts, "amdgpu", "version"),
            "mesa": _mesa(adapters), "rocm": _get(facts, "rocm", "version"),
            "vulkan_icds": sorted({i.get("driver") or "unknown" for i in _get(facts, "vulkan_icds", default=[]) or []
                                   if isinstance(i, dict)}),
        },
        "torch": {k: _get(facts, "torch", k) for k in ("version", "build", "hip", "cuda", "arch_list")},
        "gpu_env": dict(_get(facts, "env", default={}) or {}),
        "vulkan_adapters": [{k: a.get(k) for k in ("name", "driver_name", "driver", "backend", "adapter_type",
                                                   "software")} for a in adapters],
    }


def doctor_part(doc: dict) -> dict:
    rec = doc.get("recommendation") or {}
    return {"route": rec.get("route"), "recommendation": rec.get("title"),
            "findings": [{k: f.get(k) for k in ("id", "severity", "title")} for f in doc.get("findings", [])]}


def probe_part(results: list[dict], which: str) -> dict:
    summary: dict[str, dict[str, int]] = {}
    for r in results:
        counts = summary.setdefault(r["route"], {})
        counts[r["outcome"]] = counts.get(r["outcome"], 0) + 1
    rows = [{k: r.get(k) for k in ("case", "route", "env", "outcome", "mode", "detail")} for r in results]
    for row in rows:
        row["detail"] = (row["detail"] or "")[:300]  # the first lines say what failed; a reader can rerun
    return {"cases": which, "summary": summary, "results": rows}


def bench_part(bench: dict | None) -> dict | None:
    if bench is None:
        return None
    return {"size": bench.get("size"), "plan": bench.get("plan"),
            "results": [{k: r.get(k) for k in _BENCH_FIELDS} for r in bench.get("results", [])]}


def build(*, facts: dict, doctor_doc: dict, probe_results: list[dict], probe_cases: str, bench: dict | None,
          adapter: dict | None, quick: bool, version: str, secrets: list[str] | None = None) -> dict:
    """The report. `secrets`: strings to scrub besides the ones in facts (host and user names)."""
    secrets = list(secrets or []) + [s for s in (_get(facts, "user", "name"), _get(facts, "system", "hostname"))
                                     if isinstance(s, str)]
    report = {
        "schema": SCHEMA,
        "navitrain_version": version,
        "created": time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime()),
        "quick": quick,
        **machine_part(facts),
        "wgpu_adapter": adapter,
        "doctor": doctor_part(doctor_doc),
        "probe": probe_part(probe_results, probe_cases),
        "bench": bench_part(bench),
    }
    names = sorted({s for s in secrets if len(s) >= privacy.MIN_NAME}, key=len, reverse=True)
    return privacy.scrub(report, names)
