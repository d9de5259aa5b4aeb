"""Two reports side by side (before/after a driver update, two machines): the facts that identify the
stack, the probe cells and the bench's step times, each row marked when the two differ."""
from __future__ import annotations


def _facts(report: dict) -> dict[str, object]:
    out: dict[str, object] = {}
    for i, g in enumerate(report.get("gpus", [])):
        for k in ("name", "pci_id", "gfx_target"):
            out[f"gpu{i}.{k}"] = g.get(k)
    for section in ("system", "drivers", "torch"):
        for k, v in (report.get(section) or {}).items():
            out[f"{section}.{k}"] = ", ".join(map(str, v)) if isinstance(v, list) else v
    adapter = report.get("wgpu_adapter") or {}
    out["wgpu.adapter"] = adapter.get("name") or adapter.get("error")
    for k, v in (adapter.get("limits") or {}).items():
        out[f"wgpu.{k}"] = v
    out["doctor.route"] = (report.get("doctor") or {}).get("route")
    for r in (report.get("probe") or {}).get("results", []):
        env = ",".join(f"{k}={v}" for k, v in sorted((r.get("env") or {}).items()))
        out[f"probe {r['case']} @ {r['route']}{' ' + env if env else ''}"] = r["outcome"] + (
            f" ({r['mode']})" if r.get("mode") else "")
    for r in ((report.get("bench") or {}).get("results") or []):
        key = f"bench {r['workload']} @ {r['route']}" + ("" if r.get("mode") in (None, "eager") else f" ({r['mode']})")
        out[key + " step ms"] = round(r["median_ms"], 2) if r.get("median_ms") is not None else r.get("status")
    return out


def compare(a: dict, b: dict) -> list[dict]:
    """Rows {"field", "a", "b", "same"} over every field either report has, in a's order then b's."""
    fa, fb = _facts(a), _facts(b)
    return [{"field": k, "a": fa.get(k), "b": fb.get(k), "same": fa.get(k) == fb.get(k)}
            for k in dict.fromkeys([*fa, *fb])]


def render_markdown(rows: list[dict], name_a: str, name_b: str, differences_only: bool = False) -> str:
    lines = [f"| field | {name_a} | {name_b} | |", "|---|---|---|---|"]
    for row in rows:
        if differences_only and row["same"]:
            continue
        cells = ["" if v is None else str(v).replace("|", "\\|") for v in (row["a"], row["b"])]
        lines.append(f"| {row['field']} | {cells[0]} | {cells[1]} | {'' if row['same'] else 'differs'} |")
    return "\n".join(lines) + "\n"
