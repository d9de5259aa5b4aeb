"""One function per fact about the machine, each reading files under a root directory.

Every `get_x(root)` returns plain JSON-ready data (or None) and never raises: a missing file is an
absent value, a malformed one is a note in the row it belongs to. `root` is a directory path or a
`Tree`. Facts about the running process (environment, user, groups) come from the process only when
the root is this machine's real `/`; for any other tree they are None unless given as overrides.
"""
from __future__ import annotations

import os
import platform
import re
import sys

from navitrain.doctor import gpus as gpu_table
from navitrain.doctor.tree import Tree, parse_int, parse_key_values

# amdgpu module parameters worth showing in the table (all of them are in the JSON).
AMDGPU_PARAMS_OF_INTEREST = (
    "mtype_local", "noretry", "gpu_recovery", "lockup_timeout", "exp_hw_support", "cwsr_enable",
    "sched_policy", "hws_max_conc_proc", "vm_update_mode", "ppfeaturemask", "runpm", "sg_display",
)

# Environment variables that change how ROCm, CUDA, MIOpen, PyTorch or Vulkan drivers behave.
ENV_PREFIXES = (
    "HSA_", "HIP_", "ROCR_", "ROCM_", "ROCBLAS_", "MIOPEN_", "HIPBLASLT_", "TENSILE_", "PYTORCH_", "TORCH_",
    "AMD_", "GPU_", "HCC_", "CUDA_", "VK_", "MESA_", "RADV_", "WGPU_",
)
ENV_NAMES = ("LD_LIBRARY_PATH", "LD_PRELOAD", "DISABLE_LAYER_AMD_SWITCHABLE_GRAPHICS_1", "COMFYUI_ENABLE_MIOPEN")
_MAX_ENV_VALUE = 500

_MODPROBE_DIRS = ("/etc/modprobe.d", "/run/modprobe.d", "/usr/lib/modprobe.d", "/lib/modprobe.d")
_ROCBLAS_DIRS = (
    "/opt/rocm/lib/rocblas/library", "/opt/rocm/lib64/rocblas/library", "/usr/lib64/rocblas/library",
    "/usr/lib/rocblas/library",
)
_GFX_TOKEN = re.compile(r"gfx[0-9a-f]{3,4}")
_KFD_NODES = "/sys/class/kfd/kfd/topology/nodes"
# KFD io_link flags (linux amdkfd/kfd_crat.h): bit 2 = no 32-bit atomics, bit 3 = no 64-bit atomics.
_IOLINK_NO_ATOMICS = (1 << 2) | (1 << 3)


def _tree(root) -> Tree:
    return root if isinstance(root, Tree) else Tree(root)


# --- system --------------------------------------------------------------------------------------

def get_system(root) -> dict:
    tree = _tree(root)
    os_release = parse_key_values(tree.read_text("/etc/os-release", limit=64 * 1024))
    kernel = tree.read_line("/proc/sys/kernel/osrelease")
    if kernel is None and tree.is_live:
        kernel = platform.release() or None
    return {
        "kernel": kernel,
        "os": os_release.get("PRETTY_NAME") or os_release.get("NAME"),
        "python": platform.python_version(),
        "machine": platform.machine() or None,
        # 'Linux' / 'Windows' / 'Darwin' on this machine; a tree with an os-release is a Linux machine.
        "platform": (platform.system() or None) if tree.is_live else ("Linux" if os_release else None),
    }


def get_cpu(root) -> dict | None:
    tree = _tree(root)
    text = tree.read_text("/proc/cpuinfo")
    meminfo = parse_key_values(tree.read_text("/proc/meminfo", limit=64 * 1024))
    model, flags, processors = None, set(), 0
    for line in (text or "").splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip().lower(), value.strip()
        if key == "processor":
            processors += 1
        elif key in ("model name", "hardware", "cpu model") and model is None and value:
            model = value
        elif key in ("flags", "features") and not flags:
            flags = set(value.split())
    mem_kb = parse_int((meminfo.get("MemTotal:") or meminfo.get("MemTotal") or "").replace("kB", ""), 10)
    usable = None
    if tree.is_live:
        try:
            usable = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            usable = os.cpu_count()
    if text is None and mem_kb is None and usable is None:
        return None
    return {
        "model": model,
        "logical_cores": processors or None,
        "usable_cores": usable,
        "avx2": "avx2" in flags if flags else None,
        "avx512": any(f.startswith("avx512") for f in flags) if flags else None,
        "fma": "fma" in flags if flags else None,
        "ram_bytes": mem_kb * 1024 if mem_kb else None,
    }


# --- GPUs ----------------------------------------------------------------------------------------

def _pci_device(tree: Tree, rel: str, card: str | None) -> dict:
    """One GPU row from a PCI device directory (sysfs)."""
    notes: list[str] = []

    def hex_file(name: str, limit: int = 0xFFFF) -> int | None:
        raw = tree.read_line(f"{rel}/{name}")
        value = parse_int(raw, 16)
        if value is not None and not 0 <= value <= limit:
            value = None
        if raw is not None and value is None:
            notes.append(f"{rel}/{name} is malformed: {raw[:40]!r}")
        return value

    vendor_id, device_id, revision = hex_file("vendor"), hex_file("device"), hex_file("revision", 0xFF)
    uevent = parse_key_values(tree.read_text(f"{rel}/uevent", limit=64 * 1024))
    slot = uevent.get("PCI_SLOT_NAME") or tree.realname(rel)
    if vendor_id is None or device_id is None:
        # uevent's PCI_ID=1002:731F is a second source for the ids.
        m = re.fullmatch(r"([0-9A-Fa-f]{4}):([0-9A-Fa-f]{4})", uevent.get("PCI_ID", ""))
        if m:
            vendor_id = vendor_id if vendor_id is not None else int(m.group(1), 16)
            device_id = device_id if device_id is not None else int(m.group(2), 16)
    ident = gpu_table.identify(vendor_id, device_id, revision)
    if vendor_id is None:
        notes.append(f"{rel}/vendor is missing or unreadable")
    vram = parse_int(tree.read_line(f"{rel}/mem_info_vram_total"), 10)
    boot_vga = tree.read_line(f"{rel}/boot_vga")
    return {
        "source": "sysfs",
        "card": card,
        "pci_slot": slot,
        "vendor_id": f"0x{vendor_id:04x}" if vendor_id is not None else None,
        "device_id": f"0x{device_id:04x}" if device_id is not None else None,
        "revision": f"0x{revision:02x}" if revision is not None else None,
        "vendor": ident.vendor,
        "name": ident.name,
        "chip": ident.chip,
        "family": ident.family,
        "gfx_target": ident.gfx_target,
        "gfx_source": "pci-id table" if ident.gfx_target else None,
        "integrated": ident.integrated,
        "known": ident.known,
        "driver": uevent.get("DRIVER"),
        "vram_bytes": vram,
        "boot_vga": boot_vga == "1" if boot_vga in ("0", "1") else None,
        "notes": notes,
    }


def gpus(root) -> list[dict]:
    """Display devices from sysfs: DRM cards first, then PCI display controllers with no DRM card
    (a GPU whose driver did not load is still a GPU)."""
    tree = _tree(root)
    rows: list[dict] = []
    seen: set[str] = set()
    for card_path in tree.glob("/sys/class/drm", "card*"):
        card = card_path.rsplit("/", 1)[1]
        if not re.fullmatch(r"card\d+", card) or not tree.is_dir(f"{card_path}/device"):
            continue
        row = _pci_device(tree, f"{card_path}/device", card)
        key = row["pci_slot"] or card
        if key in seen:
            continue
        seen.add(key)
        rows.append(row)
    for dev_path in tree.glob("/sys/bus/pci/devices", "*"):
        slot = dev_path.rsplit("/", 1)[1]
        pci_class = parse_int(tree.read_line(f"{dev_path}/class"), 16)
        if slot in seen or pci_class is None or (pci_class >> 16) != 0x03:
            continue
        seen.add(slot)
        row = _pci_device(tree, dev_path, None)
        row["pci_slot"] = row["pci_slot"] or slot
        rows.append(row)
    return rows


# --- KFD and device nodes ------------------------------------------------------------------------

def get_kfd_nodes(root) -> list[dict] | None:
    """KFD topology nodes (GPU nodes only), or None when there is no KFD topology at all."""
    tree = _tree(root)
    if not tree.is_dir(_KFD_NODES):
        return None
    nodes = []
    for node_path in tree.glob(_KFD_NODES, "*"):
        props_text = tree.read_text(f"{node_path}/properties", limit=64 * 1024)
        props = {k: parse_int(v, 10) for k, v in parse_key_values(props_text).items()}
        target = props.get("gfx_target_version")
        if not target:  # CPU nodes have gfx_target_version 0
            if props_text is not None and "gfx_target_version" not in props_text:
                nodes.append({"node": node_path.rsplit("/", 1)[1], "notes": ["properties file is malformed"]})
            continue
        flags = []
        for link in tree.glob(f"{node_path}/io_links", "*"):
            link_props = parse_key_values(tree.read_text(f"{link}/properties", limit=64 * 1024))
            value = parse_int(link_props.get("flags"), 10)
            if value is not None:
                flags.append(value)
        nodes.append({
            "node": node_path.rsplit("/", 1)[1],
            "name": tree.read_line(f"{node_path}/name"),
            "gfx_target_version": target,
            "gfx_target": gpu_table.gfx_from_target_version(target),
            "vendor_id": _hex16(props.get("vendor_id")),
            "device_id": _hex16(props.get("device_id")),
            "simd_count": props.get("simd_count"),
            "io_link_flags": flags,
            "pcie_atomics": (all(not (f & _IOLINK_NO_ATOMICS) for f in flags) if flags else None),
        })
    return nodes


def _hex16(value: int | None) -> str | None:
    return f"0x{value:04x}" if isinstance(value, int) and 0 <= value <= 0xFFFF else None


def _device_node(tree: Tree, rel: str) -> dict:
    path = tree.path(rel)
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return {"path": rel, "exists": False, "accessible": False, "group": None, "mode": None}
    group = None
    if tree.is_live:
        try:
            import grp

            group = grp.getgrgid(st.st_gid).gr_name
        except (ImportError, KeyError, OSError):
            group = str(st.st_gid)
    return {
        "path": rel,
        "exists": True,
        "accessible": os.access(path, os.R_OK | os.W_OK),
        "group": group,
        "mode": oct(st.st_mode & 0o777),
    }


def get_device_nodes(root) -> dict:
    tree = _tree(root)
    return {
        "kfd": _device_node(tree, "/dev/kfd"),
        "render_nodes": [_device_node(tree, p) for p in tree.glob("/dev/dri", "renderD*")],
    }


def get_user(root) -> dict | None:
    tree = _tree(root)
    if not tree.is_live:
        return None
    try:
        import grp
        import pwd

        uid = os.getuid()
        name = pwd.getpwuid(uid).pw_name
        active = set()
        for gid in set(os.getgroups()) | {os.getegid()}:
            try:
                active.add(grp.getgrgid(gid).gr_name)
            except KeyError:
                active.add(str(gid))
        configured = {g.gr_name for g in grp.getgrall() if name in g.gr_mem}
        try:
            configured.add(grp.getgrgid(pwd.getpwuid(uid).pw_gid).gr_name)
        except KeyError:
            pass
    except (ImportError, KeyError, OSError):
        return None
    return {
        "name": name,
        "uid": uid,
        "groups": sorted(active),
        "configured_groups": sorted(configured),
        "in_render": "render" in active,
        "in_video": "video" in active,
    }


# --- amdgpu kernel module ------------------------------------------------------------------------

def _parse_options(text: str | None, module: str) -> dict[str, str]:
    """'options amdgpu a=1 b=2' lines of a modprobe.d file -> {a: 1, b: 2} (later lines win)."""
    out: dict[str, str] = {}
    joined = re.sub(r"\\\n", " ", text or "")
    for line in joined.splitlines():
        words = line.split("#", 1)[0].split()
        if len(words) >= 2 and words[0] == "options" and words[1].replace("-", "_") == module:
            for word in words[2:]:
                key, sep, value = word.partition("=")
                if key:
                    out[key.replace("-", "_")] = value if sep else "1"
    return out


def get_amdgpu(root) -> dict:
    tree = _tree(root)
    params = {}
    for path in tree.glob("/sys/module/amdgpu/parameters", "*"):
        value = tree.read_line(path)
        if value is not None:
            params[path.rsplit("/", 1)[1]] = value[:200]
    modprobe = []
    for directory in _MODPROBE_DIRS:
        for path in tree.glob(directory, "*.conf"):
            options = _parse_options(tree.read_text(path, limit=256 * 1024), "amdgpu")
            if options:
                modprobe.append({"file": path, "options": options})
    cmdline = {}
    for word in (tree.read_text("/proc/cmdline", limit=64 * 1024) or "").split():
        if word.startswith("amdgpu."):
            key, sep, value = word[len("amdgpu."):].partition("=")
            cmdline[key.replace("-", "_")] = value if sep else "1"
    return {
        "loaded": tree.is_dir("/sys/module/amdgpu"),
        "version": tree.read_line("/sys/module/amdgpu/version"),
        "parameters": params,
        "modprobe": modprobe,
        "cmdline": cmdline,
    }


# --- ROCm ----------------------------------------------------------------------------------------

def _rocm_version(tree: Tree, base: str) -> str | None:
    for rel in (f"{base}/.info/version", f"{base}/.info/version-dev", f"{base}/.info/version-utils"):
        line = tree.read_line(rel)
        if line and re.match(r"\d+\.\d+", line):
            return line[:64]
    header = tree.read_text(f"{base}/include/rocm-core/rocm_version.h", limit=64 * 1024)
    if header:
        parts = [re.search(rf"#define\s+ROCM_VERSION_{p}\s+(\d+)", header) for p in ("MAJOR", "MINOR", "PATCH")]
        if all(parts):
            return ".".join(m.group(1) for m in parts)  # type: ignore[union-attr]
    m = re.search(r"rocm-(\d+\.\d+(?:\.\d+)?)", base)
    return m.group(1) if m else None


def _arches_in(tree: Tree, directory: str) -> list[str]:
    found = {t for name in tree.listdir(directory) for t in _GFX_TOKEN.findall(name)}
    return sorted(found, key=lambda g: (gpu_table.target_version_of(g) or 0, g))  # gfx900 before gfx1030


def get_rocm(root) -> dict:
    tree = _tree(root)
    installs = []
    for base in ["/opt/rocm"] + [p for p in tree.glob("/opt", "rocm-*")]:
        if tree.is_dir(base):
            installs.append({"path": base, "version": _rocm_version(tree, base)})
    main = installs[0] if installs else None
    rocblas_dir = next((d for d in _ROCBLAS_DIRS if tree.is_dir(d)), None)
    if rocblas_dir is None:
        for lib in tree.glob("/usr/lib", "*-linux-gnu"):  # Debian/Ubuntu packages: rocblas/<version>/library
            for versioned in tree.glob(f"{lib}/rocblas", "*"):
                if tree.is_dir(f"{versioned}/library"):
                    rocblas_dir = f"{versioned}/library"
    miopen_db = next((d for d in ("/opt/rocm/share/miopen/db", "/usr/share/miopen/db") if tree.is_dir(d)), None)
    miopen_libs = [p for d in ("/opt/rocm/lib", "/opt/rocm/lib64") for p in tree.glob(d, "libMIOpen.so*")]
    return {
        "installed": bool(installs),
        "path": main["path"] if main else None,
        "version": main["version"] if main else None,
        "installs": installs,
        "rocblas_library_dir": rocblas_dir,
        "rocblas_arches": _arches_in(tree, rocblas_dir) if rocblas_dir else None,
        "miopen": bool(miopen_libs) or miopen_db is not None,
        "miopen_db_arches": _arches_in(tree, miopen_db) if miopen_db else None,
    }


# --- Vulkan driver files -------------------------------------------------------------------------

def get_vulkan_icds(root) -> list[dict]:
    """Installed Vulkan drivers (ICD manifests), whether or not they work."""
    import json

    tree = _tree(root)
    out = []
    for directory in ("/usr/share/vulkan/icd.d", "/etc/vulkan/icd.d", "/usr/local/share/vulkan/icd.d"):
        for path in tree.glob(directory, "*.json"):
            library = None
            try:
                data = json.loads(tree.read_text(path, limit=64 * 1024) or "")
                library = data.get("ICD", {}).get("library_path") if isinstance(data, dict) else None
            except (ValueError, AttributeError):
                pass
            out.append({"file": path, "library_path": library if isinstance(library, str) else None,
                        "driver": _icd_driver(path)})
    return out


def get_opencl_icds(root) -> list[dict]:
    """Installed OpenCL drivers (ICD files name a library), for roads such as OpenCL backends of PyTorch."""
    tree = _tree(root)
    out = []
    for path in tree.glob("/etc/OpenCL/vendors", "*.icd"):
        library = (tree.read_line(path) or "").strip() or None
        out.append({"file": path, "library": library})
    return out


def _icd_driver(path: str) -> str | None:
    name = path.rsplit("/", 1)[1].lower()
    for needle, driver in (("radeon", "RADV"), ("amd_icd", "AMDVLK"), ("amd_pro", "AMD proprietary"),
                           ("lvp", "llvmpipe"), ("nvidia", "NVIDIA"), ("intel_hasvk", "ANV (hasvk)"),
                           ("intel", "ANV"), ("nouveau", "NVK"), ("virtio", "Venus"), ("dzn", "Dozen")):
        if needle in name:
            return driver
    return None


# --- container runtimes (navitrain probe --image) -------------------------------------------------

def get_containers(root) -> dict:
    """docker / podman executables, and whether the Docker socket exists and this user may use it."""
    tree = _tree(root)
    runtimes = []
    for name in ("docker", "podman"):
        for directory in ("/usr/bin", "/usr/local/bin", "/bin"):
            if tree.exists(f"{directory}/{name}"):
                runtimes.append({"name": name, "path": f"{directory}/{name}"})
                break
    socket = next((p for p in ("/var/run/docker.sock", "/run/docker.sock") if tree.exists(p)), None)
    accessible = None
    if socket is not None and tree.is_live:
        accessible = os.access(socket, os.R_OK | os.W_OK)
    return {"runtimes": runtimes, "docker_socket": socket, "docker_socket_accessible": accessible}


# --- environment ---------------------------------------------------------------------------------

def get_env(root) -> dict | None:
    """GPU-relevant environment variables of this process (None for a tree that is not this machine)."""
    if not _tree(root).is_live:
        return None
    return select_env(os.environ)


def select_env(environ) -> dict[str, str]:
    out = {}
    for key, value in environ.items():
        if key.startswith(ENV_PREFIXES) or key in ENV_NAMES:
            out[key] = str(value)[:_MAX_ENV_VALUE]
    return dict(sorted(out.items()))


def get_navitrain(root) -> dict:
    from navitrain import _env
    from navitrain._version import __version__

    live = _tree(root).is_live
    return {
        "version": __version__,
        "python_executable": sys.executable,
        "env": {k: v for k, v in _env.snapshot().items() if v is not None} if live else {},
    }
