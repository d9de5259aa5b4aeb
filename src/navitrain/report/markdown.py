"""A report as Markdown, for a forum post or an issue: the machine, doctor's verdict, the probe matrix
with the failure mode of every failed cell, and the bench's step times."""
from __future__ import annotations

_MiB = 1 << 20
_MARK = {"pass": "pass", "unavailable": "n/a"}


def _cell(text) -> str:
    return str("" if text is None else text).replace("|", "\\|").replace("\n", " ")


def _column(result: dict) -> str:
    env = " ".join(f"{k}={v}" for k, v in sorted((result.get("env") or {}).items()))
    return result["route"] + (f" {env}" if env else "")


def _table(headers: list[str], rows: list[list]) -> list[str]:
    return (["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
            + ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows])


def _num(value, fmt: str) -> str:
    return "" if value is None else format(value, fmt)


def render(report: dict) -> str:
    out = [f"# navitrain report ({report['created']}, navitrain {report['navitrain_version']}"
           f"{', quick' if report.get('quick') else ''})", ""]
    system, drivers, torch = report["system"], report["drivers"], report["torch"]
    out += ["## Machine", ""]
    rows = [[g["name"], g["pci_id"], g.get("gfx_target"), g.get("family"),
             _num(g["vram_bytes"] / 2**30 if g.get("vram_bytes") else None, ".1f"), g.get("driver")]
            for g in report["gpus"]]
    out += _table(["GPU", "PCI id", "gfx target", "family", "VRAM GiB", "kernel driver"],
                  rows or [["none", "", "", "", "", ""]])
    out += ["",
            f"- OS: {system.get('os')}, kernel {system.get('kernel')}, {system.get('machine')}, "
            f"Python {system.get('python')}",
            f"- amdgpu: {'loaded' if drivers.get('amdgpu_loaded') else 'not loaded'}"
            + (f" (version {drivers['amdgpu_version']})" if drivers.get("amdgpu_version") else ""),
            f"- Mesa: {drivers.get('mesa') or 'no hardware Mesa Vulkan driver'}; Vulkan drivers installed: "
            f"{', '.join(drivers.get('vulkan_icds') or []) or 'none'}",
            f"- ROCm: {drivers.get('rocm') or 'not installed'}",
            f"- torch: {torch.get('version')} ({torch.get('build')}"
            + (f", HIP {torch['hip']}" if torch.get("hip") else "")
            + (f", CUDA {torch['cuda']}" if torch.get("cuda") else "") + ")"]
    if report.get("gpu_env"):
        out.append("- GPU environment: " + ", ".join(f"`{k}={v}`" for k, v in report["gpu_env"].items()))
    out += ["", "### Vulkan adapters", ""]
    out += _table(["adapter", "driver", "version", "type"],
                  [[a["name"], a.get("driver_name"), a.get("driver"), a.get("adapter_type")]
                   for a in report["vulkan_adapters"]] or [["none", "", "", ""]])
    adapter = report.get("wgpu_adapter")
    if adapter and not adapter.get("error"):
        out += ["", f"wgpu uses **{adapter['name']}**; limits: "
                + ", ".join(f"{k} {v}" for k, v in adapter.get("limits", {}).items()),
                "", "features: " + ", ".join(adapter.get("features", []))]
    elif adapter:
        out += ["", f"wgpu adapter: {adapter['error']}"]
    doctor = report["doctor"]
    out += ["", "## doctor", "", f"**{doctor.get('recommendation') or 'no recommendation'}**", ""]
    for f in doctor["findings"]:
        if f["severity"] != "ok":
            out.append(f"- {f['severity']}: {f['title']} (`{f['id']}`)")
    probe = report["probe"]
    out += ["", f"## probe ({probe['cases']} cases)", ""]
    routes = list(dict.fromkeys(_column(r) for r in probe["results"]))  # a route under each environment
    cases = list(dict.fromkeys(r["case"] for r in probe["results"]))
    cells = {(r["case"], _column(r)): r for r in probe["results"]}
    out += _table(["case"] + routes, [[c] + [_MARK.get(cells[(c, r)]["outcome"], cells[(c, r)]["outcome"]
                                              + (f" ({cells[(c, r)]['mode']})" if cells[(c, r)].get("mode") else ""))
                                             if (c, r) in cells else "" for r in routes] for c in cases])
    failed = [r for r in probe["results"] if r["outcome"] not in ("pass", "unavailable")]
    if failed:
        out += ["", "Failures:", ""] + [f"- {r['case']} on {r['route']}: {r['outcome']}"
                                        + (f" [{r['mode']}]" if r.get("mode") else "") + f": {_cell(r['detail'])[:200]}"
                                        for r in failed]
    bench = report.get("bench")
    out += ["", "## bench", ""]
    if bench is None:
        out.append("not run")
    else:
        out += [f"{bench.get('size')} workloads, {bench.get('plan')} plan", ""]
        out += _table(["workload", "route", "status", "batch", "step ms", "samples/s", "x CPU", "peak MiB"],
                      [[r.get("title") or r["workload"],
                        r["route"] + ("" if r.get("mode") in (None, "eager") else f" ({r['mode']})"),
                        r["status"] if r["status"] == "ok" else f"{r['status']}: {(r.get('detail') or '')[:80]}",
                        r.get("batch_size"), _num(r.get("median_ms"), ".1f"), _num(r.get("samples_per_s"), ".0f"),
                        _num(r.get("speedup_vs_cpu"), ".2f"),
                        _num(r["peak_memory_bytes"] / _MiB if r.get("peak_memory_bytes") else None, ".0f")]
                       for r in bench["results"]])
    out += ["", f"(schema {report['schema']}; the JSON file beside this one holds the same data)", ""]
    return "\n".join(out)
