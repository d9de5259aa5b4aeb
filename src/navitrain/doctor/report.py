"""The doctor's output: one JSON document (the stable `--json` schema, data/doctor.schema.json) and a
rich rendering of the same document. Data collection never happens here."""
from __future__ import annotations

from datetime import datetime, timezone

from rich.console import Console, Group
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from navitrain.doctor.knowledge import SEVERITIES, Finding
from navitrain.doctor.printable import printable_data
from navitrain.doctor.situation import dicts, pick, strings

SCHEMA_ID = "navitrain.doctor/1"

_STYLE = {"error": "bold red", "warning": "yellow", "info": "cyan", "ok": "green"}
_MARK = {"error": "✗", "warning": "!", "info": "i", "ok": "✓"}


def document(facts: dict, findings: list[Finding]) -> dict:
    """The JSON report: schema id, recommendation, findings (most important first), facts."""
    from navitrain._version import __version__

    route = next((f for f in findings if f.route), None)
    counts = {sev: sum(1 for f in findings if f.severity == sev and not f.route) for sev in SEVERITIES}
    return {
        "schema": SCHEMA_ID,
        "navitrain_version": __version__,
        "generated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "root": str(facts.get("root", "/")),
        "recommendation": ({"route": route.route, "title": route.title, "why": route.why, "how": route.fix}
                           if route else None),
        "summary": counts,
        "findings": [f.to_dict() for f in findings],
        "facts": facts,
    }


def render(doc: dict, console: Console) -> None:
    # the safety net: whatever a fact, an override file or a finding holds is shown, never obeyed
    doc = printable_data(doc)
    facts = doc.get("facts", {})
    console.rule(f"[bold]navitrain doctor[/] {escape(doc.get('navitrain_version', ''))}"
                 + (f" — root {escape(doc['root'])}" if doc.get("root") not in (None, "/") else ""))
    console.print(_machine_table(facts))
    if dicts(facts.get("gpus")):
        console.print(_gpu_table(facts))
    adapters = dicts(pick(facts, "vulkan", "adapters"))
    if adapters:
        console.print(_adapter_table(facts, adapters))
    env = facts.get("env") if isinstance(facts.get("env"), dict) else {}
    if env:
        console.print(_env_table(env))
    console.print(_findings_table(doc.get("findings", [])))
    rec = doc.get("recommendation")
    if rec:
        console.print(Text.assemble(("Recommended route: ", "bold"), (f"{rec['route']}", "bold magenta"),
                                    f" — {rec['why']}"))
        console.print(Text(f"How: {rec['how']}", style="dim"))
    summary = doc.get("summary", {})
    console.print(Text(f"{summary.get('error', 0)} error(s), {summary.get('warning', 0)} warning(s). "
                       "`navitrain doctor --json` gives all facts; `navitrain explain LOG` classifies a crash log.",
                       style="dim"))


def _kv_table(title: str) -> Table:
    table = Table(title=title, title_justify="left", show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold", no_wrap=True)
    table.add_column()
    return table


def _status_text(fact: dict | None, ok_text: str) -> str:
    if not isinstance(fact, dict):
        return "not examined"
    status = fact.get("status", "?")
    if status == "ok":
        return ok_text
    detail = fact.get("error") or ""
    return f"{status}{': ' + str(detail) if detail else ''}"


def _machine_table(facts: dict) -> Table:
    t = _kv_table("Machine")
    system, cpu = facts.get("system") or {}, facts.get("cpu") or {}
    if isinstance(system, dict):
        t.add_row("system", escape(" · ".join(str(x) for x in (system.get("os"), "kernel " + str(system.get("kernel")),
                                                               "Python " + str(system.get("python"))) if x)))
    if isinstance(cpu, dict) and cpu:
        ram = cpu.get("ram_bytes")
        flags = [name for name in ("avx2", "avx512") if cpu.get(name)]
        t.add_row("cpu", escape(f"{cpu.get('model') or '?'} · "
                                f"{cpu.get('usable_cores') or cpu.get('logical_cores') or '?'} cores"
                                f"{' · ' + '/'.join(flags).upper() if flags else ''}"
                                f"{f' · {ram / 2**30:.1f} GiB RAM' if isinstance(ram, int) else ''}"))
    amdgpu = facts.get("amdgpu") if isinstance(facts.get("amdgpu"), dict) else {}
    if amdgpu:
        params = amdgpu.get("parameters") if isinstance(amdgpu.get("parameters"), dict) else {}
        from navitrain.doctor.facts import AMDGPU_PARAMS_OF_INTEREST

        shown = {k: params[k] for k in AMDGPU_PARAMS_OF_INTEREST if k in params}
        for entry in dicts(amdgpu.get("modprobe")):
            options = entry.get("options") if isinstance(entry.get("options"), dict) else {}
            shown.update({k: f"{v} ({entry.get('file')})" for k, v in options.items()})
        text = "loaded" if amdgpu.get("loaded") else "not loaded"
        if shown:
            text += " · " + ", ".join(f"{k}={v}" for k, v in shown.items())
        t.add_row("amdgpu", escape(text))
    nodes = facts.get("device_nodes") if isinstance(facts.get("device_nodes"), dict) else {}
    kfd = nodes.get("kfd") if isinstance(nodes.get("kfd"), dict) else {}
    if kfd:
        renders = dicts(nodes.get("render_nodes"))
        t.add_row("/dev/kfd", escape(("accessible" if kfd.get("accessible") else "present, NOT accessible")
                                     if kfd.get("exists") else "missing")
                  + escape(f" · {len(renders)} render node(s)"))
    kfd_nodes = dicts(facts.get("kfd_nodes"))
    if kfd_nodes:
        t.add_row("KFD nodes", escape(", ".join(
            f"node {n.get('node')}: {n.get('gfx_target')} (gfx_target_version {n.get('gfx_target_version')}"
            f"{', no PCIe atomics' if n.get('pcie_atomics') is False else ''})" for n in kfd_nodes)))
    rocm = facts.get("rocm") if isinstance(facts.get("rocm"), dict) else {}
    if rocm:
        text = (f"{rocm.get('version') or 'unknown version'} at {rocm.get('path')}" if rocm.get("installed")
                else "not installed")
        if rocm.get("rocblas_arches"):
            text += f" · rocBLAS for {', '.join(strings(rocm['rocblas_arches'])[:10])}"
        t.add_row("ROCm", escape(text))
    rocminfo = facts.get("rocminfo")
    if isinstance(rocminfo, dict) and rocminfo.get("status") != "missing":
        agents = [a.get("name") for a in dicts(rocminfo.get("agents"))]
        t.add_row("rocminfo", escape(_status_text(rocminfo, "agents: " + (", ".join(map(str, agents)) or "none"))))
    torch = facts.get("torch") if isinstance(facts.get("torch"), dict) else {}
    if torch:
        ok = f"{torch.get('version')} ({torch.get('build')}"
        ok += (f", HIP {torch.get('hip')}" if torch.get("hip")
               else (f", CUDA {torch.get('cuda')}" if torch.get("cuda") else ""))
        ok += ")"
        if strings(torch.get("arch_list")):
            ok += " · built for " + " ".join(strings(torch["arch_list"])[:12])
        if isinstance(torch.get("device_count"), int) and torch.get("build") != "cpu":
            ok += f" · {torch['device_count']} device(s)"
        t.add_row("PyTorch", escape(_status_text(torch, ok)))
    vulkan = facts.get("vulkan") if isinstance(facts.get("vulkan"), dict) else {}
    if vulkan:
        n = len(dicts(vulkan.get("adapters")))
        hardware = ", hardware" if vulkan.get("hardware") else ", no hardware adapter"
        t.add_row("Vulkan", escape(_status_text(vulkan, f"{n} adapter(s)" + hardware)))
    return t


def _gpu_table(facts: dict) -> Table:
    t = Table(title="GPUs", title_justify="left")
    for col in ("name", "PCI id", "rev", "family", "gfx", "driver", "slot"):
        t.add_column(col)
    for g in dicts(facts.get("gpus")):
        gfx = str(g.get("gfx_target") or "?") + (" (KFD)" if g.get("gfx_source") == "kfd" else "")
        t.add_row(*(escape(str(x)) for x in (
            g.get("name") or g.get("vendor") or "unknown", f"{g.get('vendor_id') or '?'}:{g.get('device_id') or '?'}",
            g.get("revision") or "", g.get("family") or "", gfx, g.get("driver") or "none", g.get("pci_slot") or "")))
    return t


def _adapter_table(facts: dict, adapters: list[dict]) -> Table:
    t = Table(title="Vulkan adapters (wgpu)", title_justify="left")
    for col in ("", "device", "name", "driver", "type", "backend", "version"):
        t.add_column(col)
    chosen = pick(facts, "vulkan", "chosen", kind=int)
    for i, a in enumerate(adapters):
        # "device": torch.device("wgpu", N) and torchrun's local rank N (docs/wgpu.md, Several GPUs)
        index = a.get("wgpu_index")
        t.add_row("→" if i == chosen else "", f"wgpu:{index}" if isinstance(index, int) else "",
                  *(escape(str(x or "")) for x in (a.get("name"), a.get("driver_name"), a.get("adapter_type"),
                                                   a.get("backend"), a.get("driver"))))
    return t


def _env_table(env: dict) -> Table:
    t = _kv_table("Environment")
    for k, v in env.items():
        t.add_row(escape(str(k)), escape(str(v)))
    return t


def _findings_table(findings: list[dict]) -> Table:
    t = Table(title="Findings", title_justify="left", show_lines=False)
    t.add_column("", no_wrap=True)
    t.add_column("finding")
    for f in findings:
        if f.get("route"):
            continue
        sev = f.get("severity", "info")
        body = [Text(f.get("title", ""), style="bold" if sev in ("error", "warning") else "")]
        if sev in ("error", "warning"):
            body.append(Text(f.get("why", ""), style="dim"))
            if f.get("fix"):
                body.append(Text("→ " + f["fix"]))
            for src in f.get("sources", [])[:3]:
                body.append(Text(src, style="dim blue"))
        t.add_row(Text(_MARK.get(sev, "?"), style=_STYLE.get(sev, "")), Group(*body))
    return t
