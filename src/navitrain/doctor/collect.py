"""Gather the full fact set: file facts under a root, probes in child processes, overrides on top.

`collect(root, overrides)` is what `navitrain doctor`, `navitrain run` and the probe fingerprint use.
Each fact is a key of the returned dict; `overrides` replaces facts by key (how the fixture tests give a
fake tree its torch, Vulkan, environment and user, and how a saved report can be replayed).
"""
from __future__ import annotations

from typing import Callable

from navitrain.doctor import facts as F
from navitrain.doctor import gpus as gpu_table
from navitrain.doctor import probes
from navitrain.doctor.situation import dicts, pick
from navitrain.doctor.tree import Tree

FILE_FACTS: tuple[tuple[str, Callable], ...] = (
    ("system", F.get_system),
    ("cpu", F.get_cpu),
    ("gpus", F.gpus),
    ("kfd_nodes", F.get_kfd_nodes),
    ("device_nodes", F.get_device_nodes),
    ("user", F.get_user),
    ("amdgpu", F.get_amdgpu),
    ("rocm", F.get_rocm),
    ("vulkan_icds", F.get_vulkan_icds),
    ("opencl_icds", F.get_opencl_icds),
    ("env", F.get_env),
    ("navitrain", F.get_navitrain),
    ("containers", F.get_containers),
)
PROBE_FACTS = ("torch", "vulkan", "rocminfo")
FACT_NAMES = tuple(name for name, _ in FILE_FACTS) + PROBE_FACTS


def collect(root="/", overrides: dict | None = None, *, probe: bool | None = None,
            timeout: float | None = None, tree: Tree | None = None) -> dict:
    """The full fact set as JSON-ready data. Never raises for anything found on the machine.

    probe: run the torch / Vulkan / rocminfo child processes (default: only when root is this machine's
    `/`, since they describe this machine, not a tree). timeout: per-probe limit in seconds.
    """
    tree = tree or Tree(root)
    overrides = dict(overrides or {})
    out: dict = {"root": str(tree.root), "live": tree.is_live, "problems": []}
    for name, getter in FILE_FACTS:
        if name in overrides:
            out[name] = overrides[name]
            continue
        try:
            out[name] = getter(tree)
        except Exception as exc:  # the getters never raise by design; this keeps a bug a row, not a crash
            out[name] = None
            out["problems"].append({"fact": name, "error": f"{type(exc).__name__}: {exc}"})
    run_probes = tree.is_live if probe is None else probe
    wanted = [name for name in PROBE_FACTS if name not in overrides]
    results = {}
    if run_probes and wanted:
        results = probes.run_all(tree, torch="torch" in wanted, vulkan="vulkan" in wanted,
                                 rocminfo="rocminfo" in wanted, timeout=timeout)
    for name in PROBE_FACTS:
        if name in overrides:
            out[name] = overrides[name]
        else:
            out[name] = results.get(name) or {"status": "skipped",
                                              "error": "not probed: the root is not this machine"}
    for name, value in overrides.items():  # overrides may also add facts this version does not know
        out.setdefault(name, value)
    try:
        link_gpus(out)
    except Exception as exc:
        out["problems"].append({"fact": "gpus", "error": f"linking GPUs failed: {type(exc).__name__}: {exc}"})
    return out


def link_gpus(facts: dict) -> None:
    """Complete the sysfs GPU rows from the other facts: KFD's gfx target (the authority: it comes from
    the hardware IP version), names of non-AMD cards from Vulkan or torch, and rows from Vulkan when sysfs
    has none (WSL, macOS)."""
    rows = facts.get("gpus")
    if not isinstance(rows, list):
        return
    nodes = dicts(facts.get("kfd_nodes"))
    used: set[int] = set()
    for gpu in dicts(rows):
        if gpu.get("vendor_id") != "0x1002":
            continue
        for i, node in enumerate(nodes):
            node_gfx = pick(node, "gfx_target", kind=str)
            if i in used or not node_gfx:
                continue
            if node.get("device_id") in (None, gpu.get("device_id")):
                used.add(i)
                gpu["kfd_node"] = pick(node, "node", kind=str)
                if node_gfx != gpu.get("gfx_target"):
                    if gpu.get("gfx_target") and isinstance(gpu.get("notes"), list):
                        gpu["notes"].append(f"the id table says {gpu['gfx_target']}, KFD says {node_gfx}")
                    gpu["gfx_target"] = node_gfx
                    gpu["family"] = gpu_table.family_of(node_gfx)
                gpu["gfx_source"] = "kfd"
                break
    adapters = dicts(pick(facts, "vulkan", "adapters")) if pick(facts, "vulkan", "status") == "ok" else []
    for gpu in dicts(rows):
        if gpu.get("name"):
            continue
        for a in adapters:
            if (pick(a, "vendor_id", kind=int) is not None
                    and f"0x{a['vendor_id']:04x}" == gpu.get("vendor_id")
                    and f"0x{pick(a, 'device_id', kind=int, default=-1):04x}" == gpu.get("device_id")):
                gpu["name"] = pick(a, "name", kind=str)
                break
    torch_devices = dicts(pick(facts, "torch", "devices"))
    nvidia = [g for g in dicts(rows) if g.get("vendor_id") == "0x10de" and not g.get("name")]
    if pick(facts, "torch", "build") == "cuda":
        for gpu, dev in zip(nvidia, torch_devices):
            gpu["name"] = pick(dev, "name", kind=str)
    if not rows:
        for a in adapters:
            if pick(a, "software", kind=bool) is False:
                vendor_id = pick(a, "vendor_id", kind=int)
                device_id = pick(a, "device_id", kind=int)
                ident = gpu_table.identify(vendor_id, device_id)
                rows.append({
                    "card": None, "pci_slot": None, "source": "vulkan",
                    "vendor_id": f"0x{vendor_id:04x}" if vendor_id is not None else None,
                    "device_id": f"0x{device_id:04x}" if device_id is not None else None,
                    "revision": None, "vendor": ident.vendor, "name": pick(a, "name", kind=str) or ident.name,
                    "chip": ident.chip, "family": ident.family, "gfx_target": ident.gfx_target,
                    "gfx_source": "pci-id table" if ident.gfx_target else None,
                    "integrated": pick(a, "adapter_type", kind=str) == "IntegratedGPU", "known": ident.known,
                    "driver": pick(a, "driver_name", kind=str), "vram_bytes": None, "boot_vga": None,
                    "notes": ["seen through Vulkan only (no sysfs PCI entry)"],
                })
