"""`navitrain explain`: classify a crash log into the known failure modes of consumer AMD GPUs.

`classify(text)` returns the modes found, most important first, each with the lines that matched.
When nothing matches it returns a single `unknown` mode (never an empty list), so `modes[0]` is always
the verdict. The probe uses `is_gpu_fault` / `GPU_FAULT_MODES` on a child's stderr to tell "the GPU
faulted" from "Python raised".

Signatures come from the knowledge notes (shared/knowledge/rdna1.md) and the issues they cite; each
mode lists its sources.
"""
from __future__ import annotations

import bisect
import re
from dataclasses import asdict, dataclass, field

from navitrain.doctor.sources import links

MODE_IDS = (
    "no-code-object", "rocblas-missing-arch", "miopen-dpp-unsupported", "gfx-override-fault",
    "fp16-corruption", "gpu-hang", "build-failure", "cpu-fallback-warning", "unknown",
)

# Modes meaning the GPU itself faulted or stopped answering (not a Python-level error).
GPU_FAULT_MODES: frozenset[str] = frozenset({"gfx-override-fault", "gpu-hang"})

# Lines kept per mode, and the length a kept line is cut to: logs can be huge.
MAX_LINES_PER_MODE = 8
MAX_LINE_CHARS = 400
# Lines longer than this are searched only in their first part (a minified blob is not a log line).
_SEARCH_CHARS = 4096

_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")


@dataclass
class ModeMatch:
    id: str
    title: str
    why: str
    fix: str
    sources: list[str]
    lines: list[str] = field(default_factory=list)
    context: list[str] = field(default_factory=list)  # what this machine's facts add (explain --root)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class _Mode:
    id: str
    title: str
    why: str
    fix: str
    sources: tuple[str, ...]
    patterns: tuple[str, ...]
    # Patterns that count only when the log also mentions one of `requires` (a lone segfault or NaN
    # is not evidence of this mode).
    weak_patterns: tuple[str, ...] = ()
    requires: tuple[str, ...] = ()
    rank: int = 0  # lower sorts first; warnings that are not failures sort last


_MODES: tuple[_Mode, ...] = (
    _Mode(
        "no-code-object",
        "The PyTorch/ROCm build has no GPU code for this card's ISA",
        "HIP looks for a code object built for the card's gfx target (e.g. gfx1010) in every library it "
        "loads. Official ROCm wheels are built for a list of targets that leaves out RDNA1 and many other "
        "consumer cards, so the first kernel launch finds nothing to run.",
        "Run `navitrain doctor` to see the card's gfx target and torch's arch list. Use the `wgpu` route "
        "(a CPU build of torch is enough), or a torch built for your target (PYTORCH_ROCM_ARCH=gfx1010). "
        "For RDNA2 cards without their own code HSA_OVERRIDE_GFX_VERSION=10.3.0 works; never on RDNA1.",
        ("ROCm/pytorch#882", "ROCm#1623", "pytorch/pytorch#132570"),
        (
            r"hipErrorNoBinaryForGpu",
            r"Unable to find code object for all current devices",
            r"HIP error: invalid device function",
            r"hipErrorInvalidDeviceFunction",
            r"no kernel image is available for execution on the device",
            r"HSA_STATUS_ERROR_INVALID_ISA",
        ),
    ),
    _Mode(
        "rocblas-missing-arch",
        "rocBLAS has no Tensile library for this GPU",
        "rocBLAS loads per-architecture GEMM kernels (TensileLibrary_*_gfxNNNN) at the first matrix "
        "multiply. Releases ship them only for supported targets; for any other card the load fails and "
        "the process aborts.",
        "Use the `wgpu` route, or a rocBLAS built for your target (several community builds exist for "
        "gfx1010). For gfx1011/gfx1012, HSA_OVERRIDE_GFX_VERSION=10.1.0 reuses gfx1010 libraries if you "
        "have them.",
        ("xuhuisheng/rocm-build#35", "ROCm/rocBLAS#1331", "ROCm#2527"),
        (
            r"(?:rocBLAS|hipBLASLt|Tensile)\s+(?:error|warning)\s*:\s*Cannot read \S*Tensile\S*",
            r"(?:rocBLAS|hipBLASLt)\s+(?:error|warning)\s*:\s*No paths matched \S*Tensile",
            r"TensileLibrary\S*\.(?:dat|co|yaml)\S*:?\s+No such file or directory",
            r"Could not (?:load|find) \S*TensileLibrary",
        ),
    ),
    _Mode(
        "miopen-dpp-unsupported",
        "MIOpen compiled a kernel with GCN-only DPP instructions that gfx10 (RDNA) lacks",
        "Some MIOpen kernels (BatchNorm reductions, some convolutions) use DPP row_bcast modifiers that "
        "exist on GCN but not on RDNA, so compiling them for gfx10 fails and training (the backward pass "
        "above all) errors out with a MIOpen status error.",
        "Switch MIOpen off: the `nomiopen` route (torch.backends.cudnn.enabled = False plus navitrain's GEMM "
        "convolution), or the `wgpu` route.",
        ("ROCm/MIOpen#1586", "ROCm/MIOpen#1528", "lamikr/rocm_sdk_builder#98", "comfyanonymous/ComfyUI#15615"),
        (
            r"error: not a valid operand",
            r"row_bcast:\s*(?:15|31)",
            r"miopenStatus(?:Unknown|Internal)Error",
            r"MIOpen(?:\([^)]*\))?\s+Error:",
        ),
    ),
    _Mode(
        "gfx-override-fault",
        "The GPU faulted on a memory access (typical of a wrong HSA_OVERRIDE_GFX_VERSION)",
        "With HSA_OVERRIDE_GFX_VERSION=10.3.0 an RDNA1 card runs code compiled for RDNA2, whose ISA and "
        "memory model differ; kernels then read or write outside their buffers, the GPU raises a memory "
        "fault, and the process dies (sometimes the GPU resets).",
        "Unset HSA_OVERRIDE_GFX_VERSION on RDNA1 (gfx1010/1011/1012) cards; use 10.1.0 only to let "
        "gfx1011/1012 reuse gfx1010 code. Use the `wgpu` or `nomiopen` route. If no override is set, run "
        "`navitrain probe` to find the operation that faults.",
        ("AUTOMATIC1111/stable-diffusion-webui#11942", "AUTOMATIC1111/stable-diffusion-webui#9283", "ROCm#2527"),
        (
            r"HSA_STATUS_ERROR_MEMORY_APERTURE_VIOLATION",
            r"HSA_STATUS_ERROR_MEMORY_FAULT",
            r"Memory access fault by GPU",
            r"amdgpu[^\n]{0,80}\bpage fault\b",
            r"\[(?:gfxhub|mmhub)\d*\] (?:no-)?retry page fault",
        ),
        weak_patterns=(r"Segmentation fault", r"\bSIGSEGV\b"),
        requires=(r"HSA_OVERRIDE_GFX_VERSION", r"\bROCm\b", r"amdgpu", r"\bgfx10[0-9a-f]{2}\b"),
    ),
    _Mode(
        "fp16-corruption",
        "Half-precision results are garbage (NaN or constant outputs)",
        "On gfx1010 with some ROCm stacks fp16 kernels return NaNs or constant values (gray or black "
        "images) while fp32 works. There is no single error line: the run finishes with wrong numbers.",
        "Train in fp32 (no autocast/--precision full --no-half); check fp16 results against the CPU with "
        "`navitrain probe`.",
        ("ROCm#1857", "AUTOMATIC1111/stable-diffusion-webui#4634"),
        (
            r"NansException",
            r"A tensor with all NaNs was produced",
            r"does not support half type",
        ),
        weak_patterns=(r"\bloss\b[^\n]{0,40}\bnan\b", r"returned nan values"),
        requires=(r"\bfp16\b", r"\bhalf\b", r"float16", r"autocast", r"\bamp\b"),
    ),
    _Mode(
        "gpu-hang",
        "A GPU kernel never finished (hang or GPU reset)",
        "The process waits forever in the KFD event ioctl, or the driver's watchdog times out a ring and "
        "resets the GPU. On unsupported cards this follows kernels built for another ISA or a driver bug.",
        "Kill the process; check `dmesg` for amdgpu ring timeouts. Remove HSA_OVERRIDE_GFX_VERSION if set "
        "on RDNA1. `navitrain probe` runs each operation in a child process with a timeout to find the one "
        "that hangs; the `wgpu` route avoids ROCm entirely.",
        ("ROCm#1385",),
        (
            r"AMDKFD_IOC_WAIT_EVENT",
            r"amdgpu[^\n]{0,80}ring \S+ timeout",
            r"amdgpu[^\n]{0,80}GPU reset",
            r"amdgpu[^\n]{0,80}GPU recovery",
            r"reason\s*:\s*GPU Hang",
        ),
    ),
    _Mode(
        "build-failure",
        "A source build failed",
        "Building ROCm libraries or PyTorch from source for an unsupported target often stops on code that "
        "assumes a supported ISA (e.g. composable_kernel's buffer resource constants for gfx101x).",
        "Exclude the failing component (TheRock builds gfx101x without hipBLASLt, hipSPARSELt, "
        "composable_kernel and rocWMMA), or skip the build: the `wgpu` route needs only a CPU build of torch.",
        ("ROCm/TheRock#4768", "ROCm/TheRock:SUPPORTED_GPUS.md"),
        (
            r"when compiling for gfx\w+",
            r"use of undeclared identifier 'CK_BUFFER_RESOURCE_3RD_DWORD'",
            r"ninja: build stopped: subcommand failed",
            r"^make(?:\[\d+\])?: \*\*\* .*Error \d+",
            r"^CMake Error",
            r"error: command '[^']*(?:hipcc|clang\+*|amdclang\+*|g\+\+|gcc|c\+\+)' failed",
        ),
    ),
    _Mode(
        "cpu-fallback-warning",
        "An operation silently fell back to the CPU",
        "The backend has no kernel for this operator and runs it on the CPU instead, copying tensors back "
        "and forth: correct results, but much slower, and easy to miss.",
        "Make fallbacks visible and count them (navitrain's wgpu route: NAVITRAIN_WGPU_STRICT=1 raises "
        "instead of falling back), or pick a route whose probes cover your model's operators.",
        ("microsoft/DirectML#630", "microsoft/DirectML#251"),
        (
            r"will fall ?back to (?:run on )?the CPU",
            r"is not currently (?:supported|implemented) (?:on|for) the \w+ (?:backend|device)",
            r"falling back to (?:the )?CPU",
        ),
        rank=1,
    ),
)

_UNKNOWN = _Mode(
    "unknown",
    "No known failure signature",
    "None of the known failure modes of consumer AMD GPUs matched this log.",
    "Run `navitrain doctor` for the stack, and `navitrain probe` to find which operation fails; include "
    "the last 50 lines of the log when you ask for help.",
    (),
    (),
)

_BY_ID = {m.id: m for m in _MODES} | {"unknown": _UNKNOWN}
_COMPILED = {
    m.id: (
        re.compile("|".join(f"(?:{p})" for p in m.patterns), re.IGNORECASE | re.MULTILINE),
        re.compile("|".join(f"(?:{p})" for p in m.weak_patterns), re.IGNORECASE | re.MULTILINE)
        if m.weak_patterns else None,
        re.compile("|".join(f"(?:{p})" for p in m.requires), re.IGNORECASE) if m.requires else None,
    )
    for m in _MODES
}
_FAULT_RE = _COMPILED["gfx-override-fault"][0]


def _clean(text: str) -> str:
    text = _ANSI.sub("", text).replace("\x00", "").replace("\r\n", "\n").replace("\r", "\n")
    # Cut over-long lines before regex work so a binary blob cannot make matching slow.
    return "\n".join(line[:_SEARCH_CHARS] for line in text.split("\n"))


def _match(mode: _Mode, text: str, line_starts: list[int], lines: list[str]) -> tuple[int, list[str]] | None:
    strong, weak, requires = _COMPILED[mode.id]
    hits = [m.start() for m in strong.finditer(text)]
    if weak is not None and (hits or (requires is not None and requires.search(text))):
        hits += [m.start() for m in weak.finditer(text)]
    if not hits:
        return None
    indices = sorted({bisect.bisect_right(line_starts, pos) - 1 for pos in hits})
    kept: list[str] = []
    for i in indices:
        line = lines[i].strip()[:MAX_LINE_CHARS]
        if line and line not in kept:
            kept.append(line)
        if len(kept) >= MAX_LINES_PER_MODE:
            break
    return indices[0], kept


def mode(mode_id: str) -> ModeMatch:
    """A fresh ModeMatch for a mode id (no lines), e.g. to describe a probe result."""
    m = _BY_ID[mode_id]
    return ModeMatch(m.id, m.title, m.why, m.fix, links(*m.sources))


def classify(text: str) -> list[ModeMatch]:
    """The failure modes found in `text`, most important first; `[unknown]` when none."""
    if not isinstance(text, str):
        text = str(text, "utf-8", "replace") if isinstance(text, (bytes, bytearray)) else str(text)
    text = _clean(text)
    lines = text.split("\n")
    line_starts, pos = [], 0
    for line in lines:
        line_starts.append(pos)
        pos += len(line) + 1
    found = []
    for m in _MODES:
        result = _match(m, text, line_starts, lines)
        if result is not None:
            first_line, kept = result
            found.append((m.rank, first_line, m, kept))
    if not found:
        return [mode("unknown")]
    found.sort(key=lambda item: (item[0], item[1]))
    out = []
    for _, _, m, kept in found:
        match = mode(m.id)
        match.lines = kept
        out.append(match)
    return out


def is_gpu_fault(text: str) -> bool:
    """True when the text carries a GPU fault signature (memory access/aperture fault, page fault, hang)."""
    if not isinstance(text, str):
        text = str(text, "utf-8", "replace") if isinstance(text, (bytes, bytearray)) else str(text)
    text = _clean(text)
    return bool(_FAULT_RE.search(text) or _COMPILED["gpu-hang"][0].search(text))
