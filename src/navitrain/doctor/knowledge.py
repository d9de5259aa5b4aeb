"""What the facts mean: rules that turn a fact set into findings.

A finding has a stable id, a severity (error / warning / info / ok), a one-line title, why (the
mechanism), what to do, and sources. The knowledge behind each rule is in the issues and documents
its findings cite (`sources`; docs/doctor.md lists the findings). Each rule is a small function of a
`Situation`; `diagnose` runs them all and then adds the route recommendation (recommend.py).
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Callable

from navitrain._version import MIN_TORCH
from navitrain.doctor import gpus as gpu_table
from navitrain.doctor.situation import Situation, dicts, pick, strings, version_tuple
from navitrain.doctor.sources import links

SEVERITIES = ("error", "warning", "info", "ok")

_VULKAN_INSTALL = (
    "Install a Vulkan driver: Debian/Ubuntu `sudo apt-get install mesa-vulkan-drivers libvulkan1` "
    "(RADV for AMD, ANV for Intel); Fedora `sudo dnf install mesa-vulkan-drivers vulkan-loader`; Arch "
    "`sudo pacman -S vulkan-radeon` (AMD) or `vulkan-intel`; NVIDIA's own driver ships its Vulkan driver."
)
_OVERRIDE_SOURCES = ("AUTOMATIC1111/stable-diffusion-webui#11942", "AUTOMATIC1111/stable-diffusion-webui#9283",
                     "ROCm#2527")
_NO_CODE_SOURCES = ("ROCm/pytorch#882", "ROCm#1623", "pytorch/pytorch#132570")
_ROCBLAS_SOURCES = ("xuhuisheng/rocm-build#35", "ROCm/rocBLAS#1331", "ROCm#2527")
_MIOPEN_SOURCES = ("ROCm/MIOpen#1586", "ROCm/MIOpen#1528", "lamikr/rocm_sdk_builder#98",
                   "comfyanonymous/ComfyUI#15615")
_GROUPS_SOURCE = ("ROCm/ROCT-Thunk-Interface:README.md",)


@dataclass
class Finding:
    id: str
    severity: str
    title: str
    why: str
    fix: str | None = None
    sources: list[str] = field(default_factory=list)
    route: str | None = None  # set on the route recommendation only

    def to_dict(self) -> dict:
        return asdict(self)


def finding(id: str, severity: str, title: str, why: str, fix: str | None = None,
            sources: tuple[str, ...] = (), route: str | None = None) -> Finding:
    assert severity in SEVERITIES, severity
    return Finding(id, severity, title, why, fix, links(*sources), route)


Rule = Callable[[Situation], list[Finding]]
RULES: list[Rule] = []


def rule(fn: Rule) -> Rule:
    RULES.append(fn)
    return fn


# --- GPUs and drivers ----------------------------------------------------------------------------

@rule
def gpu_identity(s: Situation) -> list[Finding]:
    out = []
    if not s.gpus and not s.hardware_adapters:
        # say only what was looked at: Vulkan is not examined with --no-probe or on a --root tree
        vulkan_said = {True: "", False: " and Vulkan offers no hardware adapter"}.get(
            s.vulkan_hardware, " (Vulkan adapters were not examined)")
        out.append(finding(
            "no-gpu", "info", "No GPU found",
            f"sysfs lists no display controller{vulkan_said}.",
            "Training runs on the `cpu` route. On a machine that has a GPU, check that its kernel driver is "
            "loaded (`lspci -k`)."))
    for gpu in s.gpus:
        ids = f"{pick(gpu, 'vendor_id', kind=str) or '?'}:{pick(gpu, 'device_id', kind=str) or '?'}"
        rev = pick(gpu, "revision", kind=str)
        where = f"PCI {ids}{' rev ' + rev if rev else ''} at {pick(gpu, 'pci_slot', kind=str) or '?'}"
        notes = strings(gpu.get("notes"))
        if pick(gpu, "vendor_id", kind=str) == "0x1002" and not pick(gpu, "known", kind=bool):
            gfx = pick(gpu, "gfx_target", kind=str)
            out.append(finding(
                "gpu-unknown", "warning", f"AMD GPU {ids} is not in navitrain's id table",
                f"{where}. " + (f"KFD reports it as {gfx}. " if gfx else "Its gfx target is unknown. ")
                + " ".join(notes),
                "The rules below work from the gfx target where KFD reports one. Please report the id "
                "(`lspci -nn -d 1002:`) so the table can learn it."))
        elif gpu.get("vendor") is None and pick(gpu, "source", kind=str) != "vulkan":
            out.append(finding(
                "gpu-unknown-vendor", "info", f"Display device {ids} from an unknown vendor",
                f"{where}. " + " ".join(notes), None))
        else:
            out.append(finding("gpu-identified", "ok", f"GPU: {s.gpu_label(gpu)}",
                               (f"{where}{'; chip ' + gpu['chip'] if pick(gpu, 'chip', kind=str) else ''}. "
                                + " ".join(notes)).strip()))
    return out


@rule
def amd_driver(s: Situation) -> list[Finding]:
    out = []
    for gpu in s.amd_gpus:
        driver = pick(gpu, "driver", kind=str)
        if pick(gpu, "source", kind=str) == "vulkan" or driver == "amdgpu":
            continue
        out.append(finding(
            "amdgpu-not-bound", "error", f"The amdgpu kernel driver is not driving {s.gpu_label(gpu)}",
            (f"The device's driver is {driver}" if driver else "No kernel driver is bound to the device")
            + "; without amdgpu there is no KFD (ROCm) and no "
            "RADV/AMDVLK Vulkan for it.",
            "Load it (`sudo modprobe amdgpu`), check `sudo dmesg | grep -i amdgpu` for firmware errors "
            "(install linux-firmware), and make sure the `radeon` driver does not claim the card."))
    return out


# --- KFD and permissions -------------------------------------------------------------------------

@rule
def kfd_access(s: Situation) -> list[Finding]:
    if not s.amd_gpus or "device_nodes" not in s.facts:
        return []
    kfd = s.kfd_node
    user = s.user
    user_name = pick(user, "name", kind=str) or "$USER"
    if pick(kfd, "exists", kind=bool) is False:
        return [finding(
            "kfd-missing", "warning", "/dev/kfd does not exist: ROCm cannot see the GPU",
            "ROCm talks to AMD GPUs through the KFD device node. Without it the `native` and `nomiopen` "
            "routes cannot work; the `wgpu` route (Vulkan) does not need it.",
            "Use a kernel whose amdgpu has KFD (CONFIG_HSA_AMD; every distribution kernel does); in a "
            "container pass `--device=/dev/kfd --device=/dev/dri`.")]
    if pick(kfd, "accessible", kind=bool) is False:
        configured = strings(user.get("configured_groups"))
        relogin = any(g in configured for g in ("render", "video"))
        return [finding(
            "kfd-no-access", "error", f"This user cannot open /dev/kfd (group {pick(kfd, 'group', kind=str) or '?'})",
            "ROCm opens /dev/kfd and /dev/dri/renderD* read-write; they belong to the render (or video) "
            "group, and this process is not in it.",
            ("You were added to the group after this session started: log out and in again."
             if relogin else f"`sudo usermod -aG render,video {user_name}`, then log out and in again."),
            _GROUPS_SOURCE)]
    out = [finding("kfd-ok", "ok", "/dev/kfd is present and accessible", "ROCm can open the GPU.")]
    renders = s.render_nodes
    if renders and not any(pick(r, "accessible", kind=bool) for r in renders):
        out.append(finding(
            "render-no-access", "warning", "This user cannot open any /dev/dri/renderD* node",
            "Both ROCm and Vulkan drivers open the render node of the GPU.",
            f"`sudo usermod -aG render,video {user_name}`, then log out and in again.", _GROUPS_SOURCE))
    return out


@rule
def pcie_atomics(s: Situation) -> list[Finding]:
    nodes = s.kfd_nodes or []
    if not any(pick(n, "pcie_atomics", kind=bool) is False for n in nodes):
        return []
    return [finding(
        "pcie-atomics-missing", "warning", "The GPU's PCIe link reports no atomics",
        "KFD marks the link without 32/64-bit PCIe atomics (io_links flags bits 2-3); ROCm on consumer "
        "cards relies on them, and KFD skips a device that needs them ('PCI rejects atomics').",
        "Put the card in a slot wired to the CPU rather than the chipset, without risers or PCIe switches "
        "that drop atomics. The `wgpu` route does not need them. Check with "
        "`grep flags /sys/class/kfd/kfd/topology/nodes/*/io_links/0/properties`.",
        ("ROCm#2527",))]


# --- amdgpu module parameters --------------------------------------------------------------------

@rule
def mtype_local(s: Situation) -> list[Finding]:
    amdgpu = s.amdgpu
    sources = []
    params = pick(amdgpu, "parameters", kind=dict, default={})
    if str(params.get("mtype_local", "0")).strip() not in ("0", "-1", ""):
        sources.append(f"the running module (mtype_local={params.get('mtype_local')})")
    for entry in pick(amdgpu, "modprobe", kind=list, default=[]):
        options = pick(entry, "options", kind=dict, default={})
        if "mtype_local" in options:
            sources.append(f"{pick(entry, 'file', kind=str) or 'modprobe.d'} (mtype_local={options['mtype_local']})")
    cmdline = pick(amdgpu, "cmdline", kind=dict, default={})
    if "mtype_local" in cmdline:
        sources.append(f"the kernel command line (amdgpu.mtype_local={cmdline['mtype_local']})")
    if not sources:
        return []
    if s.gfx and s.gfx.startswith("gfx94"):
        return [finding("mtype-local-set", "info", "amdgpu mtype_local is set",
                        f"Set in {', '.join(sources)}; it selects the memory type of local memory on GFX 9.4.3.")]
    return [finding(
        "mtype-local-no-effect", "warning", "amdgpu mtype_local is set but does nothing"
        + (f" for {s.gpu_label()}" if s.primary else " here"),
        f"Set in {', '.join(sources)}. mtype_local (MTYPE for local memory: 0 = RW, 1 = NC, 2 = CC) belongs to "
        "the GFX 9.4.3 (MI300) memory code; the RDNA memory controller code (gmc_v10 and later) does not read "
        "it, so it cannot fix faults on consumer cards.",
        "Remove it to keep the configuration honest; faults on RDNA1 come from running code built for "
        "another ISA (see HSA_OVERRIDE_GFX_VERSION), not from memory types.",
        ("torvalds/linux:drivers/gpu/drm/amd/amdgpu/amdgpu_drv.c",))]


# --- environment ---------------------------------------------------------------------------------

@rule
def hsa_override(s: Situation) -> list[Finding]:
    value = s.override
    if value is None:
        return _override_suggestion(s)
    target = s.override_gfx
    if target is None:
        return [finding(
            "hsa-override-malformed", "warning", f"HSA_OVERRIDE_GFX_VERSION={value!r} is not a version",
            "The ROCm runtime expects MAJOR.MINOR.STEPPING, e.g. 10.3.0.",
            "Unset it, or give a full version.")]
    if not s.primary_is_amd:
        return [finding("hsa-override-no-amd-gpu", "info", f"HSA_OVERRIDE_GFX_VERSION={value} is set, with no AMD GPU",
                        "The variable only affects the ROCm runtime on AMD GPUs.", "Unset it.")]
    real, fam = s.gfx, s.family
    target_family = gpu_table.family_of(target)
    label = s.gpu_label()
    if real and target == real:
        return [finding(
            "hsa-override-noop", "info", f"HSA_OVERRIDE_GFX_VERSION={value} changes nothing on {label}",
            f"It names the card's own ISA ({real}).", "Unset it to avoid confusion.",
            ("ROCm/rocBLAS#1331", "ROCm/ROCm#887"))]
    if fam == "RDNA1" and target == "gfx1010":
        return [finding(
            "hsa-override-rdna1-sibling", "ok", f"HSA_OVERRIDE_GFX_VERSION={value} lets {real} reuse gfx1010 code",
            "gfx1011 and gfx1012 run gfx1010 code objects; libraries built for gfx1010 then serve the card.",
            None, ("ROCm/rocBLAS#1331", "ROCm/ROCm#887"))]
    if fam == "RDNA1":
        return [finding(
            "hsa-override-rdna1-fault", "error",
            f"HSA_OVERRIDE_GFX_VERSION={value} makes this RDNA1 card run {target_family or target} code",
            f"{label} is {real}; the override makes ROCm load code built for {target}, whose ISA and memory "
            "model differ. Reported results: memory access faults (HSA_STATUS_ERROR_MEMORY_APERTURE_VIOLATION), "
            "segfaults, a GPU stuck at 100%, GPU resets. The advice is right for RDNA2 cards, wrong for RDNA1.",
            "Unset HSA_OVERRIDE_GFX_VERSION. Use the `nomiopen` route with a torch built for gfx1010, or the "
            "`wgpu` route (a CPU build of torch is enough)."
            + (" For gfx1011/gfx1012, 10.1.0 reuses gfx1010 code." if real in ("gfx1011", "gfx1012") else ""),
            _OVERRIDE_SOURCES)]
    if fam == "RDNA2" and target == "gfx1030":
        return [finding(
            "hsa-override-rdna2", "ok", f"HSA_OVERRIDE_GFX_VERSION={value} is the usual fix for {real}",
            "RDNA2 cards without their own code objects run gfx1030 code.", None, ("ROCm/ROCm#2061",))]
    if real in ("gfx1103", "gfx1150", "gfx1151", "gfx1152") and target_family == "RDNA3":
        return [finding(
            "hsa-override-rdna3-apu", "warning", f"HSA_OVERRIDE_GFX_VERSION={value} on {real} is known to fault",
            "Reports on Phoenix/Strix iGPUs: page faults and hard hangs with 11.0.0, system locks with 11.0.2.",
            "Prefer a ROCm/torch build with native code for the APU (TheRock), or the `wgpu` route.",
            ("ROCm/MIOpen#3954", "ROCm/TheRock#1184"))]
    if fam and target_family and fam != target_family:
        return [finding(
            "hsa-override-cross-family", "warning",
            f"HSA_OVERRIDE_GFX_VERSION={value} runs {target_family} code on a {fam} card",
            "Code objects built for another GPU generation use instructions or memory rules the card does "
            "not have; faults and wrong results are likely.", "Unset it, or use the `wgpu` route.",
            _OVERRIDE_SOURCES)]
    return [finding("hsa-override-set", "info", f"HSA_OVERRIDE_GFX_VERSION={value} (ROCm will look for {target} code)",
                    f"The card itself is {real or 'of unknown ISA'}.")]


def _override_suggestion(s: Situation) -> list[Finding]:
    real = s.gfx
    if not s.primary_is_amd or not real or s.torch_has_code_for(real) is not False:
        return []
    if s.family == "RDNA2" and "gfx1030" in s.arch_list:
        return [finding(
            "hsa-override-suggested", "warning",
            f"torch has no {real} code; HSA_OVERRIDE_GFX_VERSION=10.3.0 lets it run gfx1030 code",
            "RDNA2 cards without their own code objects run gfx1030 code correctly.",
            "`export HSA_OVERRIDE_GFX_VERSION=10.3.0` before starting Python.", ("ROCm/ROCm#2061",))]
    if real in ("gfx1011", "gfx1012") and "gfx1010" in s.arch_list:
        return [finding(
            "hsa-override-suggested", "warning",
            f"torch has gfx1010 code but not {real}: HSA_OVERRIDE_GFX_VERSION=10.1.0 reuses it",
            "gfx1011 and gfx1012 run gfx1010 code objects.",
            "`export HSA_OVERRIDE_GFX_VERSION=10.1.0` (never 10.3.0 on RDNA1).",
            ("ROCm/rocBLAS#1331", "ROCm/ROCm#887"))]
    return []


@rule
def visible_devices(s: Situation) -> list[Finding]:
    out = []
    for name in ("HIP_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "CUDA_VISIBLE_DEVICES", "GPU_DEVICE_ORDINAL"):
        value = s.env.get(name)
        if value is not None and value.strip() in ("", "-1", "none", "NoDevFiles"):
            out.append(finding(
                "visible-devices-hide-gpu", "warning", f"{name}={value!r} hides every GPU",
                "The runtime enumerates only the devices listed in this variable.", f"Unset {name}."))
    return out


@rule
def debug_env(s: Situation) -> list[Finding]:
    out = []
    serial = [n for n in ("AMD_SERIALIZE_KERNEL", "AMD_SERIALIZE_COPY", "CUDA_LAUNCH_BLOCKING", "HIP_LAUNCH_BLOCKING")
              if s.env.get(n, "0").strip() not in ("0", "")]
    if serial:
        out.append(finding(
            "debug-serialization-on", "info", f"{', '.join(serial)} set: GPU work is serialised",
            "These debugging switches make every kernel launch or copy synchronous: useful for finding the "
            "failing kernel, slow for training.", "Unset them when not debugging."))
    if "PYTORCH_ROCM_ARCH" in s.env:
        out.append(finding(
            "pytorch-rocm-arch-set", "info", f"PYTORCH_ROCM_ARCH={s.env['PYTORCH_ROCM_ARCH']}",
            "Only a source build of PyTorch reads it (the targets to compile for); it does not change an "
            "installed wheel."))
    return out


@rule
def navitrain_env(s: Situation) -> list[Finding]:
    """Malformed NAVITRAIN_* values, judged by the same parsers the code that reads them uses
    (navitrain/_env.py), so doctor flags exactly what would raise later."""
    from navitrain import _env

    env = pick(s.facts, "navitrain", "env")
    out = []
    for name, value in (env.items() if isinstance(env, dict) else ()):
        why = _env.problem(name, value) if name in _env.VARIABLES and isinstance(value, str) else None
        if why is not None:
            out.append(finding("navitrain-env-malformed", "error", why,
                               f"navitrain refuses to run with it: every command exits with an error and the "
                               f"code that reads it raises. {name}: {_env.VARIABLES[name].help}",
                               f"Fix the value or unset {name}."))
    return out


# --- ROCm ----------------------------------------------------------------------------------------

@rule
def rocm_install(s: Situation) -> list[Finding]:
    if not s.amd_gpus or "rocm" not in s.facts:
        return []
    rocm = s.rocm
    if not pick(rocm, "installed", kind=bool):
        return [finding(
            "rocm-not-installed", "info", "No system ROCm installation found (/opt/rocm)",
            "ROCm builds of PyTorch bundle their own ROCm libraries, and the `wgpu` route needs none, so this "
            "is only a problem for source builds.")]
    version = pick(rocm, "version", kind=str)
    path = pick(rocm, "path", kind=str) or "/opt/rocm"
    return [finding("rocm-installed", "ok", f"ROCm {version} at {path}" if version else f"ROCm at {path}",
                    "The ROCm directory exists; "
                    + ("its version comes from .info/version, rocm_version.h or the directory name." if version
                       else "none of .info/version, rocm_version.h or the directory name gives its version."))]


@rule
def rocblas_arch(s: Situation) -> list[Finding]:
    gfx = s.code_gfx
    if not s.primary_is_amd or not gfx:
        return []
    out = []
    bundled = s.torch.get("bundled_rocblas_arches") if s.torch_build == "rocm" else None
    if isinstance(bundled, list) and bundled and gfx not in strings(bundled):
        out.append(finding(
            "rocblas-missing-arch", "error", f"torch's bundled rocBLAS has no library for {gfx}",
            f"Its Tensile libraries cover {', '.join(strings(bundled)[:12])}. The first matrix multiply "
            "aborts with 'rocBLAS error: Cannot read .../TensileLibrary...: No such file or directory'. This "
            "breaks the `native` and `nomiopen` routes.",
            "Use the `wgpu` route, or a rocBLAS built for the card.", _ROCBLAS_SOURCES))
    system = pick(s.rocm, "rocblas_arches", kind=list)
    if system and gfx not in strings(system):
        out.append(finding(
            "rocblas-missing-arch-system", "warning",
            f"The system rocBLAS ({pick(s.rocm, 'rocblas_library_dir', kind=str)}) has no library for {gfx}",
            f"It covers {', '.join(strings(system)[:12])}. Programs and source builds of PyTorch linked "
            "against this ROCm abort at their first matrix multiply.",
            "Build rocBLAS for the card (e.g. with AMDGPU_TARGETS including it), or use the `wgpu` route.",
            _ROCBLAS_SOURCES))
    return out


@rule
def rocminfo(s: Situation) -> list[Finding]:
    info = s.facts.get("rocminfo")
    if not isinstance(info, dict) or not s.amd_gpus:
        return []
    status = pick(info, "status", kind=str)
    if status in ("crashed", "timeout", "error"):
        return [finding(
            "rocminfo-failed", "warning", f"rocminfo {status}: {pick(info, 'error', kind=str) or ''}".strip(),
            "rocminfo is the ROCm runtime's own view of the GPUs; when it fails, ROCm programs fail the same way. "
            + (pick(info, "stderr_tail", kind=str) or "")[-300:],
            "Check /dev/kfd access and `sudo dmesg | grep -i amdgpu`.")]
    if status != "ok":
        return []
    gpu_agents = [a for a in pick(info, "agents", kind=list, default=[])
                  if isinstance(a, dict) and str(a.get("name", "")).startswith("gfx")]
    if not gpu_agents:
        loaded = pick(info, "kfd_loaded", kind=bool)
        return [finding(
            "rocminfo-no-gpu-agent", "warning", "rocminfo lists no GPU agent",
            "The ROCm runtime sees only the CPU" + (" (ROCk module is NOT loaded)." if loaded is False else "."),
            "Check /dev/kfd access and that amdgpu is loaded.")]
    names = ", ".join(f"{a.get('marketing_name') or '?'} ({a.get('name')})" for a in gpu_agents)
    return [finding("rocminfo-gpu-agents", "ok", f"rocminfo sees {names}", "The ROCm runtime enumerates the GPU.")]


# --- PyTorch -------------------------------------------------------------------------------------

@rule
def torch_import(s: Situation) -> list[Finding]:
    status, torch = s.torch_status, s.torch
    if status == "skipped":
        return []
    if status == "missing":
        return [finding(
            "torch-missing", "warning", "PyTorch is not installed in this Python",
            "Every navitrain route trains PyTorch models.",
            "Install a CPU build for the `wgpu` and `cpu` routes (`pip install torch --index-url "
            "https://download.pytorch.org/whl/cpu`), or a ROCm build for `native`/`nomiopen`.")]
    if status != "ok":
        modes = strings(torch.get("stderr_modes"))
        fault = pick(torch, "gpu_fault", kind=bool)
        where = "while listing GPUs" if pick(torch, "version", kind=str) else "on import"
        return [finding(
            "torch-broken", "error", f"PyTorch {status} {where}",
            f"{(pick(torch, 'error', kind=str) or 'no detail').rstrip('.')}."
            + (f" The output matches: {', '.join(modes)}." if modes else "")
            + (" The GPU itself faulted." if fault else ""),
            "Run `navitrain explain` on the error for the failure mode; the doctor's other findings (override, "
            "arch list, /dev/kfd) usually name the cause. The `wgpu` route with a CPU build of torch avoids ROCm.",
            _NO_CODE_SOURCES if "no-code-object" in modes else ())]
    out = []
    version = s.torch_version
    vt = version_tuple(version)
    if vt is not None and vt[:2] < MIN_TORCH:
        out.append(finding(
            "torch-too-old", "warning", f"PyTorch {version} is older than {'.'.join(map(str, MIN_TORCH))}",
            "navitrain's wgpu device relies on PrivateUse1 Python backend registration as tested from torch 2.11.",
            "Upgrade torch (keep the same build: CPU, CUDA or ROCm)."))
    return out


@rule
def torch_build_vs_gpu(s: Situation) -> list[Finding]:
    build = s.torch_build
    if build is None or s.torch_status != "ok":
        return []
    vendors = {pick(g, "vendor", kind=str) for g in s.gpus} | {
        "AMD" if pick(a, "vendor_id", kind=int) == 0x1002 else
        "NVIDIA" if pick(a, "vendor_id", kind=int) == 0x10DE else
        "Intel" if pick(a, "vendor_id", kind=int) == 0x8086 else None
        for a in s.hardware_adapters}
    vendors.discard(None)
    label = f"PyTorch {s.torch_version}"
    if build == "cpu" and vendors:
        return [finding(
            "torch-cpu-only-with-gpu", "warning", f"{label} is a CPU-only build: the GPU sits idle",
            f"This machine has a {', '.join(sorted(vendors))} GPU ({s.gpu_label()}), but a CPU build of torch "
            "cannot use it.",
            "Use the `wgpu` route: it runs on this very torch through Vulkan (`navitrain.device('wgpu')`). A "
            "ROCm/CUDA build is only worth it when it has code for the card.")]
    if build == "cuda" and "NVIDIA" not in vendors and vendors:
        return [finding("torch-wrong-vendor", "warning", f"{label} is a CUDA build, but the GPU is not NVIDIA",
                        f"Found: {s.gpu_label()}.",
                        "Use the `wgpu` route with this torch, or install the ROCm build for an AMD card.")]
    if build == "rocm" and "AMD" not in vendors and vendors:
        return [finding("torch-wrong-vendor", "warning", f"{label} is a ROCm build, but the GPU is not AMD",
                        f"Found: {s.gpu_label()}.", "Install the CUDA or CPU build instead.")]
    return []


@rule
def torch_arch(s: Situation) -> list[Finding]:
    if s.torch_build != "rocm" or not s.primary_is_amd or not s.gfx:
        return []
    real, effective = s.gfx, s.code_gfx
    arch = s.arch_list
    label = f"PyTorch {s.torch_version}"
    if not arch:
        return [finding("torch-arch-unknown", "info", f"{label} reports no arch list",
                        "torch.cuda.get_arch_list() was empty; it cannot be checked against the card.")]
    shown = ", ".join(arch[:14]) + (" ..." if len(arch) > 14 else "")
    if effective in arch:
        via = f" (through HSA_OVERRIDE_GFX_VERSION, as {effective})" if effective != real else ""
        return [finding("torch-arch-ok", "ok", f"{label} has code for {real}{via}", f"Its arch list: {shown}.")]
    unsafe = "" if s.override_is_safe else (
        f" HSA_OVERRIDE_GFX_VERSION={s.override} makes it load {s.override_gfx} code instead, which does not fit "
        "this card.")
    return [finding(
        "torch-arch-missing", "error", f"{label} has no code for {effective}"
        + (f" (the card is {real}, overridden to {effective})" if effective != real else ""),
        f"It was built for {shown}. The first GPU kernel fails with 'hipErrorNoBinaryForGpu: Unable to find code "
        "object for all current devices' or 'HIP error: invalid device function'." + unsafe,
        "Use the `wgpu` route (any torch build works), or a torch built with PYTORCH_ROCM_ARCH=" + real + ".",
        _NO_CODE_SOURCES)]


@rule
def torch_devices(s: Situation) -> list[Finding]:
    if s.torch_build not in ("rocm", "cuda") or s.torch_status != "ok":
        return []
    count = s.torch_device_count
    if count is None:
        return []
    if count == 0 and s.gpus:
        return [finding(
            "torch-no-device", "error", f"PyTorch {s.torch_version} sees no GPU",
            "torch.cuda.device_count() is 0 although the machine has one: the runtime could not open it or "
            "filtered it out.",
            "See the /dev/kfd, driver and *_VISIBLE_DEVICES findings; `rocminfo` shows what ROCm sees.")]
    if count == 0:
        # a GPU build on a machine without a GPU: nothing is broken, but the build is the wrong size
        kind = "CUDA" if s.torch_build == "cuda" else "ROCm"
        return [finding(
            "torch-gpu-build-without-gpu", "info", f"PyTorch {s.torch_version} is a {kind} build on a machine "
            "without a GPU",
            f"torch.cuda.device_count() is 0 and no GPU was found, so its {kind} libraries go unused; a "
            "CPU-only build does all the `cpu` and `wgpu` routes need, in a fraction of the download.",
            "Keep it, or install the CPU build: `pip install torch --index-url "
            "https://download.pytorch.org/whl/cpu`.")]
    names = ", ".join(f"{pick(d, 'name', kind=str) or '?'}"
                      + (f" [{pick(d, 'arch', kind=str)}]" if pick(d, "arch", kind=str) else "")
                      for d in s.torch_devices)
    return [finding("torch-devices", "ok", f"PyTorch sees {count} GPU(s)" + (f": {names}" if names else ""),
                    f"torch.cuda.device_count() is {count}.")]


@rule
def miopen_gfx10(s: Situation) -> list[Finding]:
    if s.torch_build != "rocm" or not s.primary_is_amd:
        return []
    if s.family == "RDNA1":
        return [finding(
            "miopen-gfx10-training", "warning", "MIOpen is known-bad for training on RDNA1 (gfx10)",
            "Some MIOpen kernels (BatchNorm reductions, some convolutions) use GCN-only DPP row_bcast "
            "instructions that gfx10 does not have; they fail to compile, typically in the backward pass "
            "('error: not a valid operand', miopenStatusUnknownError).",
            "Use the `nomiopen` route (torch.backends.cudnn.enabled = False, navitrain's GEMM convolution) or "
            "the `wgpu` route.", _MIOPEN_SOURCES)]
    if s.family == "RDNA2":
        return [finding(
            "miopen-gfx10-training", "info", "MIOpen on RDNA2: fall back to `nomiopen` if convolutions fail",
            "RDNA2 is gfx10 too; ComfyUI disables MIOpen on RDNA1/2 by default for this reason.",
            "If BatchNorm or convolution errors appear, try the `nomiopen` route.", _MIOPEN_SOURCES)]
    return []


# --- Vulkan --------------------------------------------------------------------------------------

@rule
def vulkan(s: Situation) -> list[Finding]:
    status = s.vulkan_status
    if status == "skipped":
        return []
    has_gpu = bool(s.gpus)
    if status == "missing":
        return [finding("wgpu-missing", "warning", "The wgpu Python package is not installed",
                        "The `wgpu` route runs navitrain's compute shaders through wgpu.",
                        "`pip install 'wgpu>=0.32,<0.33'` (navitrain's own requirement).")]
    if status != "ok":
        fault = pick(s.vulkan, "gpu_fault", kind=bool)
        return [finding(
            "vulkan-probe-failed", "error" if has_gpu else "warning",
            f"Listing Vulkan adapters {status}: {pick(s.vulkan, 'error', kind=str) or ''}".strip(),
            "A child process asked wgpu for adapters and did not come back cleanly"
            + ("; the GPU faulted." if fault else ".") + " The `wgpu` route cannot be used until this works.",
            "Run `vulkaninfo --summary` (package vulkan-tools) to see the driver's own error; reinstall the "
            "Vulkan driver. " + _VULKAN_INSTALL)]
    adapters = s.adapters
    if not adapters:
        return [finding("vulkan-no-adapter", "warning" if has_gpu else "info", "No Vulkan adapter at all",
                        "wgpu found no Vulkan (or Metal/DX12) driver, so the `wgpu` route is unavailable.",
                        _VULKAN_INSTALL)]
    out = []
    hardware = s.hardware_adapters
    if not hardware:
        names = ", ".join(pick(a, "name", kind=str) or "?" for a in adapters)
        if has_gpu:
            out.append(finding(
                "vulkan-software-only", "warning", f"Vulkan offers only a software rasteriser ({names})",
                f"The GPU ({s.gpu_label()}) has no working Vulkan driver, so the `wgpu` route would run on the CPU.",
                _VULKAN_INSTALL))
        else:
            out.append(finding(
                "vulkan-software-only", "info", f"Vulkan runs on the CPU only ({names})",
                "Fine for testing the `wgpu` route; for training, the `cpu` route is faster."))
    else:
        for a in hardware:
            out.append(finding(
                "vulkan-hardware", "ok",
                f"Vulkan: {pick(a, 'name', kind=str) or '?'} ({pick(a, 'driver_name', kind=str) or 'unknown driver'}, "
                f"{pick(a, 'backend', kind=str) or '?'})",
                f"{pick(a, 'adapter_type', kind=str) or 'GPU'} adapter, driver {pick(a, 'driver', kind=str) or '?'}."))
    chosen = s.chosen_adapter
    want = pick(s.facts, "navitrain", "env", "NAVITRAIN_WGPU_ADAPTER", kind=str)
    if chosen is None and pick(s.vulkan, "chosen") is None and want:
        out.append(finding("wgpu-adapter-unmatched", "warning", f"NAVITRAIN_WGPU_ADAPTER={want!r} matches no adapter",
                           "navitrain would find no adapter for the `wgpu` route.", "Unset it or fix the name."))
    return out


@rule
def vulkan_float_modes(s: Situation) -> list[Finding]:
    """Whether the adapter the wgpu route opens keeps float32 subnormals in arithmetic (the Vulkan child
    runs navitrain.float_modes' probe kernel on it); NVIDIA's driver flushes them."""
    if s.vulkan_status != "ok" or pick(s.vulkan, "flushes_subnormals", kind=bool) is not True:
        return []
    name = pick(s.chosen_adapter or {}, "name", kind=str) or "The adapter"
    return [finding(
        "wgpu-flushes-subnormals", "info", f"{name} flushes float32 subnormals to zero",
        "This adapter flushes float32 subnormals to zero, like torch.set_flush_denormal(True): values below "
        "1.2e-38 become 0 in arithmetic on the `wgpu` route (copies keep them), and dividing by one gives inf. "
        "WGSL has no way to ask the driver to keep them. Training rarely notices; a result that needs them "
        "differs from the CPU's unless the CPU runs under torch.set_flush_denormal(True) too.")]


# The oldest Mesa whose RADV navitrain accepts without a warning. Mesa 20.2 (2020) made ACO RADV's
# default shader compiler; navitrain's kernels lean on fp16 and subgroup operations that RADV exposes
# on RDNA1 through ACO. UNVERIFIED: no navitrain kernel has run on RADV yet (CI runs Mesa's lavapipe,
# 22.3 on the CI image), so this is the lower bound of what could work, not a tested release.
RADV_MIN_MESA = (20, 2)
_AMD_VULKAN = {"RADV": "RADV (Mesa)", "AMDVLK": "AMDVLK", "AMD proprietary": "AMD's proprietary Vulkan"}


def _mesa_version(driver: str | None) -> tuple[int, int] | None:
    match = re.search(r"Mesa (\d+)\.(\d+)", driver or "")
    return (int(match.group(1)), int(match.group(2))) if match else None


@rule
def vulkan_amd_driver(s: Situation) -> list[Finding]:
    """On an AMD card: which Vulkan driver the wgpu route will use, and whether its Mesa is old."""
    if not s.amd_gpus or s.vulkan_status != "ok":
        return []
    installed = sorted({d for i in dicts(s.facts.get("vulkan_icds"))
                        if (d := pick(i, "driver", kind=str)) in _AMD_VULKAN})
    amd = [a for a in s.hardware_adapters if pick(a, "vendor_id", kind=int) == 0x1002]
    chosen = s.chosen_adapter
    used = chosen if chosen in amd else (amd[0] if amd else None)
    if used is None:
        which = " and ".join(_AMD_VULKAN[d] for d in installed) or "no AMD Vulkan driver"
        return [finding("vulkan-amd-driver", "warning", "No Vulkan adapter for the AMD GPU",
                        f"Installed: {which}; none of them offered an adapter for {s.gpu_label()}, so the `wgpu` "
                        "route cannot use it.", _VULKAN_INSTALL)]
    name = pick(used, "driver_name", kind=str) or "unknown driver"
    driver = pick(used, "driver", kind=str) or "?"
    both = len(installed) > 1 or len({pick(a, "driver_name", kind=str) for a in amd}) > 1
    detail = (f"Installed: {', '.join(_AMD_VULKAN[d] for d in installed) or 'not seen in the ICD directories'}. "
              + (f"Several AMD drivers offer this GPU; the `wgpu` route takes {name} (the adapter it picks); "
                 "AMD_VULKAN_ICD=RADV or VK_DRIVER_FILES=<its icd.json> chooses, NAVITRAIN_WGPU_ADAPTER=RADV too. "
                 if both else ""))
    out = [finding("vulkan-amd-driver", "ok", f"The wgpu route will use {name} ({driver})", detail.strip())]
    mesa = _mesa_version(driver)
    if "RADV" in name.upper() and mesa is not None and mesa < RADV_MIN_MESA:
        out.append(finding(
            "vulkan-old-mesa", "warning",
            f"Mesa {mesa[0]}.{mesa[1]} is older than {RADV_MIN_MESA[0]}.{RADV_MIN_MESA[1]}",
            f"Before Mesa {RADV_MIN_MESA[0]}.{RADV_MIN_MESA[1]} RADV did not compile with ACO by default, which "
            "the fp16 and subgroup paths of navitrain's kernels rely on for RDNA1 (threshold not yet verified "
            "on a card).", "Update Mesa (Ubuntu: the kisak-mesa PPA; or a newer distribution release)."))
    return out


# --- container runtimes (navitrain probe --image) -------------------------------------------------

@rule
def containers(s: Situation) -> list[Finding]:
    """On an AMD machine, whether `navitrain probe --image` can run ROCm containers here."""
    facts = s.facts.get("containers")
    if not s.amd_gpus or not isinstance(facts, dict):
        return []
    names = {pick(r, "name", kind=str) for r in dicts(facts.get("runtimes"))}
    if not names:
        return [finding("container-runtime-missing", "info", "No docker or podman",
                        "`navitrain probe --image rocm/pytorch:TAG` tries ROCm images side by side in containers; "
                        "it needs one of them.", "Debian/Ubuntu: `sudo apt-get install podman` (rootless).")]
    if names == {"docker"}:
        if facts.get("docker_socket") is None:
            return [finding("docker-daemon-down", "info", "docker is installed but its daemon is not running",
                            "No /var/run/docker.sock: `navitrain probe --image` cannot start containers.",
                            "`sudo systemctl start docker`, or install podman.")]
        if facts.get("docker_socket_accessible") is False:
            return [finding("docker-socket-permission", "warning", "No permission on the Docker socket",
                            f"{facts['docker_socket']} is not readable and writable by this user, so docker (and "
                            "`navitrain probe --image`) fails with 'permission denied'.",
                            "`sudo usermod -aG docker $USER`, then log in again; or use podman (rootless).")]
    return []


# --- CPU -----------------------------------------------------------------------------------------

@rule
def cpu(s: Situation) -> list[Finding]:
    if pick(s.facts, "cpu", "avx2", kind=bool) is False and pick(s.facts, "system", "machine", kind=str) in (
            "x86_64", "AMD64", None):
        return [finding("cpu-no-avx2", "info", "The CPU has no AVX2",
                        "PyTorch's CPU kernels are much slower without AVX2; the `cpu` route will be slow.")]
    return []


_ORDER = {sev: i for i, sev in enumerate(SEVERITIES)}


def run_rules(facts: dict) -> list[Finding]:
    """Every rule's findings, errors first. A rule that raises becomes a `doctor-internal-error` finding."""
    s = Situation(facts if isinstance(facts, dict) else {})
    out: list[Finding] = []
    for fn in RULES:
        try:
            out.extend(fn(s))
        except Exception as exc:  # a bug in one rule must not hide the others
            out.append(internal_error(fn.__name__, exc))
    out.sort(key=lambda f: _ORDER.get(f.severity, 9))
    return out


def internal_error(where: str, exc: BaseException) -> Finding:
    return finding("doctor-internal-error", "warning", f"navitrain doctor failed in {where}",
                   f"{type(exc).__name__}: {exc}", "Please report this with `navitrain doctor --json` output.")

