"""The fingerprint of this machine's stack: probe and bench results are stored under it.

Two machines (or one machine before and after a driver, ROCm or torch upgrade) share results only
when every fact here is the same: GPU PCI ids, kernel, amdgpu/NVIDIA driver versions, ROCm version,
torch version and build, the wgpu adapter navitrain would use, and navitrain's version.

Files are read here (reading sysfs cannot crash); torch and wgpu are asked in two child processes,
run side by side, because importing a broken ROCm torch or enumerating a broken Vulkan driver can
crash or hang. A child that fails contributes its failure ("torch: crashed") instead of facts.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

_CHILD_TIMEOUT_S = 30.0
_cached: "Fingerprint | None" = None


@dataclass(frozen=True)
class Fingerprint:
    id: str
    facts: dict = field(compare=False)

    def __str__(self) -> str:
        return self.id

    def summary(self) -> str:
        f = self.facts
        gpus = ", ".join(g.get("name") or g.get("pci_id", "?") for g in f.get("gpus", [])) or "no GPU"
        torch = f.get("torch", {})
        build = torch.get("version") or torch.get("error", "no torch")
        adapter = (f.get("wgpu") or {}).get("adapter") or (f.get("wgpu") or {}).get("error") or "no wgpu adapter"
        return f"{gpus}; torch {build}; wgpu: {adapter}; kernel {f.get('kernel')}"


def _read_line(path: str) -> str | None:
    try:
        with open(path, errors="replace") as f:
            line = f.readline().strip()
        return line[:200] or None
    except OSError:
        return None


def _gpus() -> list[dict]:
    """PCI ids (and the doctor's name for them) of every display device in sysfs."""
    try:
        from navitrain.doctor import facts

        rows = facts.gpus("/")
    except Exception:  # the doctor is optional here; the ids alone still make a fingerprint
        rows = []
    out = []
    for row in rows:
        pci_id = f"{row.get('vendor_id')}:{row.get('device_id')} rev {row.get('revision')}"
        out.append({"pci_id": pci_id, "name": row.get("name"), "gfx_target": row.get("gfx_target"),
                    "driver": row.get("driver")})
    return sorted(out, key=lambda g: g["pci_id"])


def _kfd_targets() -> list[str]:
    try:
        from navitrain.doctor import facts

        return sorted(n.get("gfx_target") or "?" for n in (facts.get_kfd_nodes("/") or []))
    except Exception:
        return []


def file_facts() -> dict:
    """Facts read from files (no child needed)."""
    from navitrain._version import __version__

    return {
        "gpus": _gpus(),
        "kfd_targets": _kfd_targets(),
        "kernel": platform.release(),
        "amdgpu": _read_line("/sys/module/amdgpu/version"),
        "nvidia": _read_line("/sys/module/nvidia/version") or _read_line("/proc/driver/nvidia/version"),
        "rocm": _read_line("/opt/rocm/.info/version"),
        "python": ".".join(platform.python_version_tuple()[:2]),
        "navitrain": __version__,
    }


def _torch_facts() -> dict:
    import torch

    try:
        # The compiled-in list, read without initialising the GPU runtime (some torch versions'
        # get_arch_list() asks is_available() first, which can hang on a broken driver).
        flags = getattr(torch._C, "_cuda_getArchFlags", None)
        arch_list = sorted((flags() or "").split()) if flags is not None else sorted(torch.cuda.get_arch_list())
    except Exception as exc:
        arch_list = [f"error: {exc}"]
    return {"version": torch.__version__, "hip": getattr(torch.version, "hip", None),
            "cuda": getattr(torch.version, "cuda", None), "git": getattr(torch.version, "git_version", None),
            "arch_list": arch_list}


def _wgpu_facts() -> dict:
    from navitrain import adapters

    infos, chosen = adapters.chosen_adapter_info()
    if chosen is None:
        return {"adapter": None, "adapters": [i.name for i in infos]}
    info = infos[chosen]
    return {"adapter": info.name, "backend": info.backend, "driver": info.driver,
            "pci_id": f"0x{info.vendor_id:04x}:0x{info.device_id:04x}", "software": info.software}


def _start_child(what: str, out: Path) -> subprocess.Popen:
    from navitrain.probe.runner import child_environment

    return subprocess.Popen([sys.executable, "-m", "navitrain.probe.fingerprint", what, str(out)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env=child_environment({}), start_new_session=os.name == "posix")


def _collect(children: dict[str, tuple[subprocess.Popen, Path]], timeout: float) -> dict:
    from navitrain._child import how_it_ended, kill_group, last_line
    from navitrain.probe.runner import reap

    deadline = time.monotonic() + timeout
    facts = {}
    for what, (proc, out) in children.items():
        try:
            _, stderr = proc.communicate(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            kill_group(proc)
            reap(proc)
            facts[what] = {"error": f"hung for {timeout:g} s"}
            continue
        try:
            facts[what] = json.loads(out.read_text())
        except (OSError, ValueError):
            code = proc.returncode
            how = how_it_ended(code, "exit code {code}")
            last = last_line(stderr.decode("utf-8", "replace"))
            facts[what] = {"error": f"crashed ({how})" + (f": {last}" if last else "")}
    return facts


def compute(timeout: float = _CHILD_TIMEOUT_S) -> Fingerprint:
    """Collect the facts now (two short child processes) and hash them."""
    with tempfile.TemporaryDirectory(prefix="navitrain-fp-") as tmp:
        children = {what: (_start_child(what, Path(tmp) / f"{what}.json"), Path(tmp) / f"{what}.json")
                    for what in ("torch", "wgpu")}
        facts = file_facts()
        facts.update(_collect(children, timeout))
    digest = hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:16]
    return Fingerprint(digest, facts)


def current() -> Fingerprint:
    """This process's fingerprint (computed once per process)."""
    global _cached
    if _cached is None:
        _cached = compute()
    return _cached


def _child_main(what: str, out: str) -> int:
    facts = _torch_facts() if what == "torch" else _wgpu_facts()
    Path(out).write_text(json.dumps(facts))
    return 0


if __name__ == "__main__":
    code = _child_main(sys.argv[1], sys.argv[2])
    sys.stderr.flush()
    os._exit(code)  # skip torch's and the Vulkan driver's teardown: the answer is written
