"""Facts that need code to run, not files to read: PyTorch, wgpu/Vulkan adapters, rocminfo.

Each runs in a child process with a timeout (see child.py) and comes back as a plain dict with a
`status`: "ok", "missing" (not installed), "timeout", "crashed", "error" or "skipped". A crash is
classified with the explain classifier, so "torch import died with a GPU memory fault" is a fact too.
"""
from __future__ import annotations

import os
import re
import shutil
from concurrent.futures import ThreadPoolExecutor

from navitrain.doctor import logs
from navitrain.doctor.child import MARKER, ChildResult, run_command, run_python
from navitrain.doctor.printable import printable_data
from navitrain.doctor.tree import Tree

TORCH_TIMEOUT = 90.0    # a ROCm torch imports slowly the first time (code object loading)
VULKAN_TIMEOUT = 30.0
ROCMINFO_TIMEOUT = 30.0

# Static facts are printed before the device is touched: when device initialisation crashes, the
# report still says which torch it was.
_TORCH_CODE = r"""
import json, os, re, sys
M = %(marker)r
def emit(d):
    sys.stdout.write(M + json.dumps(d) + "\n"); sys.stdout.flush()
try:
    import torch
except ModuleNotFoundError as e:
    if e.name == "torch":
        emit({"status": "missing", "error": str(e)}); sys.exit(0)
    raise
hip = getattr(torch.version, "hip", None)
cuda = getattr(torch.version, "cuda", None)
out = {"status": "ok", "version": torch.__version__, "hip": hip, "cuda": cuda,
       "build": "rocm" if hip else ("cuda" if cuda else "cpu"), "path": os.path.dirname(torch.__file__)}
try:
    out["arch_list"] = list(torch.cuda.get_arch_list())
except Exception as e:
    out["arch_list"] = []
    out["arch_list_error"] = repr(e)
lib = os.path.join(out["path"], "lib")
try:
    names = os.listdir(lib)
except OSError:
    names = []
out["bundled_miopen"] = any(n.startswith("libMIOpen") for n in names)
rb = os.path.join(lib, "rocblas", "library")
if os.path.isdir(rb):
    out["bundled_rocblas_arches"] = sorted({m for f in os.listdir(rb) for m in re.findall(r"gfx[0-9a-f]+", f)})
else:
    out["bundled_rocblas_arches"] = None
try:
    out["cudnn_enabled"] = bool(torch.backends.cudnn.enabled)
    out["cudnn_version"] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
except Exception:
    out["cudnn_version"] = None
out["stage"] = "static"
emit(out)
devices = []
count = torch.cuda.device_count() if out["build"] != "cpu" else 0
for i in range(count):
    p = torch.cuda.get_device_properties(i)
    devices.append({"index": i, "name": p.name, "arch": getattr(p, "gcnArchName", None),
                    "total_memory": int(p.total_memory),
                    "capability": list(torch.cuda.get_device_capability(i))})
out["device_count"] = count
out["devices"] = devices
out["stage"] = "devices"
emit(out)
""" % {"marker": MARKER}

_VULKAN_CODE = r"""
import json, sys
M = %(marker)r
from navitrain import _env, adapters
try:
    import wgpu
except ModuleNotFoundError as e:
    if e.name == "wgpu":
        sys.stdout.write(M + json.dumps({"status": "missing", "error": str(e)}) + "\n"); sys.exit(0)
    raise
pairs = adapters.list_adapters()
infos = [info for _, info in pairs]
chosen = adapters.choose(infos, _env.wgpu_adapter())  # adapters.chosen_adapter_info(), keeping the adapters
out = {"status": "ok", "wgpu_version": getattr(wgpu, "__version__", None),
       "adapters": [i.to_dict() for i in infos], "chosen": chosen}
sys.stdout.write(M + json.dumps(out) + "\n"); sys.stdout.flush()
# The list is out first: opening a device on a broken driver may crash, which must not lose it.
if chosen is not None:
    from navitrain import float_modes
    try:
        out["flushes_subnormals"] = float_modes.probe(pairs[chosen][0].request_device_sync())
    except Exception as e:
        out["flushes_subnormals"] = None
        out["float_probe_error"] = f"{type(e).__name__}: {e}"[:300]
    sys.stdout.write(M + json.dumps(out) + "\n")
""" % {"marker": MARKER}


def _failure(result: ChildResult) -> dict:
    """The fields every failed probe reports: what happened and what the stderr looks like."""
    modes = [m.id for m in logs.classify(result.stderr)] if result.stderr.strip() else []
    return {
        "status": result.status,
        "error": result.error,
        "returncode": result.returncode,
        "stderr_tail": result.stderr[-1500:] or None,
        "stderr_modes": [m for m in modes if m != "unknown"],
        "gpu_fault": logs.is_gpu_fault(result.stderr),
    }


def probe_torch(timeout: float = TORCH_TIMEOUT, env: dict[str, str] | None = None) -> dict:
    """PyTorch's version, build, arch list and devices, from a child process (env: its environment)."""
    result = run_python(_TORCH_CODE, timeout, env)
    if result.status == "ok" and result.data is not None:
        data = dict(result.data)
        if data.get("status") == "ok" and data.get("stage") != "devices":
            return {**data, **_failure(result), "status": "crashed", "error": "stopped before listing devices"}
        return data
    out = dict(result.data or {})
    out.update(_failure(result))
    if "ModuleNotFoundError: No module named 'torch'" in result.stderr:
        out["status"] = "missing"
    return out


def probe_vulkan(timeout: float = VULKAN_TIMEOUT, env: dict[str, str] | None = None) -> dict:
    """wgpu's adapters, the driver of each and the one navitrain would choose, from a child process."""
    result = run_python(_VULKAN_CODE, timeout, env)
    if result.partial and result.data.get("status") == "ok":
        # listed the adapters, then died probing the chosen one's float modes: keep the list
        result = ChildResult("ok", {**result.data, "flushes_subnormals": None,
                                    "float_probe_error": result.error}, result.returncode, result.stderr)
    if result.status == "ok" and result.data is not None:
        data = dict(result.data)
        if data.get("status") == "ok":
            for adapter in data.get("adapters", []):
                adapter["driver_name"] = driver_name(adapter)
            add_wgpu_indices(data.get("adapters", []))
            data["hardware"] = any(not a.get("software") for a in data.get("adapters", []))
        return data
    return _failure(result)


def add_wgpu_indices(adapter_dicts: list[dict]) -> None:
    """Give each adapter its `wgpu_index`: N in torch.device("wgpu", N) and for torchrun's local rank N
    (navitrain.adapters.device_order, the order the runtime uses); None for one no rank gets."""
    from navitrain.adapters import AdapterInfo, device_order

    fields = AdapterInfo.__dataclass_fields__
    infos = [AdapterInfo(**{f: a.get(f, "" if f not in ("vendor_id", "device_id", "software") else 0) for f in fields})
             for a in adapter_dicts]
    for a in adapter_dicts:
        a["wgpu_index"] = None
    for n, i in enumerate(device_order(infos)):
        adapter_dicts[i]["wgpu_index"] = n


def find_rocminfo(tree: Tree) -> str | None:
    for candidate in ("/opt/rocm/bin/rocminfo",):
        if tree.exists(candidate):
            return str(tree.path(candidate))
    return shutil.which("rocminfo") if tree.is_live else None


def probe_rocminfo(tree: Tree, timeout: float = ROCMINFO_TIMEOUT) -> dict:
    exe = find_rocminfo(tree)
    if exe is None:
        return {"status": "missing", "error": "rocminfo is not installed"}
    status, stdout, stderr, returncode, error = run_command([exe], timeout, dict(os.environ))
    parsed = parse_rocminfo(stdout)
    out = {"status": status, "path": exe, "error": error, **parsed}
    if status != "ok":
        out["stderr_tail"] = (stderr or stdout)[-1500:] or None
        out["gpu_fault"] = logs.is_gpu_fault(stderr)
    return out


_AGENT_SPLIT = re.compile(r"^\s*Agent\s+\d+\s*$", re.MULTILINE)


def parse_rocminfo(text: str) -> dict:
    """rocminfo output -> {"kfd_loaded": bool|None, "agents": [{name, marketing_name, chip_id, device_type, isas}]}."""
    text = text or ""
    kfd_loaded = None
    if re.search(r"ROCk module( version \S+)? is loaded", text):
        kfd_loaded = True
    elif re.search(r"ROCk module is NOT loaded", text):
        kfd_loaded = False
    chunks = _AGENT_SPLIT.split(text)
    chunks = chunks[1:] if len(chunks) > 1 else [text]
    agents = []
    for chunk in chunks:
        name = re.search(r"^\s*Name:\s*(\S.*?)\s*$", chunk, re.MULTILINE)
        if not name:
            continue
        marketing = re.search(r"Marketing Name:\s*(.*?)\s*$", chunk, re.MULTILINE)
        chip = re.search(r"Chip ID:\s*(\d+)", chunk)
        dtype = re.search(r"Device Type:\s*(\w+)", chunk)
        isas = sorted(set(re.findall(r"amdgcn-amd-amdhsa--(gfx[0-9a-z-]+)", chunk)))
        agents.append({
            "name": name.group(1),
            "marketing_name": marketing.group(1) if marketing else None,
            "chip_id": int(chip.group(1)) if chip else None,
            "device_type": dtype.group(1) if dtype else None,
            "isas": isas,
        })
    return {"kfd_loaded": kfd_loaded, "agents": agents}


def driver_name(adapter: dict) -> str | None:
    """Which Vulkan driver an adapter comes from: RADV, AMDVLK, NVIDIA, llvmpipe, ANV, ..."""
    hay = f"{adapter.get('name', '')} {adapter.get('vendor', '')} {adapter.get('driver', '')}".lower()
    vendor_id = adapter.get("vendor_id")
    for needle, name in (
        ("radv", "RADV"), ("amdvlk", "AMDVLK"), ("amd open-source driver", "AMDVLK"),
        ("amd proprietary driver", "AMD proprietary"), ("llvmpipe", "llvmpipe"), ("lavapipe", "llvmpipe"),
        ("swiftshader", "SwiftShader"), ("microsoft basic render", "WARP"), ("nvk", "NVK"),
        ("dozen", "Dozen"), ("venus", "Venus"), ("moltenvk", "MoltenVK"),
    ):
        if needle in hay:
            return name
    if vendor_id == 0x10DE or "nvidia" in hay:
        return "NVIDIA"
    if vendor_id == 0x8086 or "intel" in hay:
        return "ANV" if "mesa" in hay else "Intel"
    if adapter.get("backend") == "Metal":
        return "Metal"
    if vendor_id == 0x1002:
        return "AMD"
    return None


def run_all(tree: Tree, torch: bool = True, vulkan: bool = True, rocminfo: bool = True,
            timeout: float | None = None) -> dict[str, dict]:
    """The three probes side by side (they are mostly waiting on imports and drivers)."""
    jobs = {}
    with ThreadPoolExecutor(max_workers=3) as pool:
        if torch:
            jobs["torch"] = pool.submit(probe_torch, timeout or TORCH_TIMEOUT)
        if vulkan:
            jobs["vulkan"] = pool.submit(probe_vulkan, timeout or VULKAN_TIMEOUT)
        if rocminfo:
            jobs["rocminfo"] = pool.submit(probe_rocminfo, tree, timeout or ROCMINFO_TIMEOUT)
        out = {}
        for name, job in jobs.items():
            try:
                # a child reports what drivers and libraries say (adapter names, errors): untrusted text
                out[name] = printable_data(job.result(), limit=None)
            except Exception as exc:  # the doctor reports its own bugs as a row, too
                out[name] = {"status": "error", "error": f"{type(exc).__name__}: {exc}"}
        return out
