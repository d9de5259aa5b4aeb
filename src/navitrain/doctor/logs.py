"""`navitrain explain`: classify a crash log into the known failure modes of consumer AMD GPUs.

`classify(text)` returns the modes found, most important first, each with the lines that matched.
When nothing matches it returns a single `unknown` mode (never an empty list), so `modes[0]` is always
the verdict. The probe uses `is_gpu_fault` / `GPU_FAULT_MODES` on a child's stderr to tell "the GPU
faulted" from "Python raised".

Signatures come from the error messages of the issues each mode lists in its sources;
tests/fixtures/explain/failure_modes.md holds key lines for every mode.
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
class _Pattern:
    """A signature: `regex` (case-insensitive) is tried only on lines containing `keyword` (lower case).
    Scanning a 10 MB log for a plain keyword is fast; running dozens of case-insensitive regexes over all
    of it is not."""
    keyword: str
    regex: re.Pattern


def _p(keyword: str, regex: str | None = None) -> _Pattern:
    assert keyword == keyword.lower(), keyword
    return _Pattern(keyword, re.compile(regex if regex is not None else re.escape(keyword), re.IGNORECASE))


@dataclass(frozen=True)
class _Mode:
    id: str
    title: str
    why: str
    fix: str
    sources: tuple[str, ...]
    patterns: tuple[_Pattern, ...]
    # Patterns that count only when the log also mentions one of `requires` (a lone segfault or NaN
    # is not evidence of this mode).
    weak_patterns: tuple[_Pattern, ...] = ()
    requires: tuple[_Pattern, ...] = ()
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
            _p("hiperrornobinaryforgpu"),
            _p("unable to find code object for all current devices"),
            _p("invalid device function", r"HIP error: invalid device function"),
            _p("hiperrorinvaliddevicefunction"),
            _p("no kernel image is available for execution on the device"),
            _p("hsa_status_error_invalid_isa"),
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
            _p("cannot read", r"(?:rocBLAS|hipBLASLt|Tensile)\s+(?:error|warning)\s*:\s*Cannot read \S*Tensile\S*"),
            _p("no paths matched", r"(?:rocBLAS|hipBLASLt)\s+(?:error|warning)\s*:\s*No paths matched \S*Tensile"),
            _p("no such file or directory", r"TensileLibrary\S*\.(?:dat|co|yaml)\S*:?\s+No such file or directory"),
            _p("tensilelibrary", r"Could not (?:load|find) \S*TensileLibrary"),
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
            _p("error: not a valid operand"),
            _p("row_bcast:", r"row_bcast:\s*(?:15|31)"),
            _p("miopenstatus", r"miopenStatus(?:Unknown|Internal)Error"),
            _p("miopen", r"MIOpen(?:\([^)]*\))?\s+Error:"),
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
            _p("hsa_status_error_memory_aperture_violation"),
            _p("hsa_status_error_memory_fault"),
            _p("memory access fault by gpu"),
            _p("page fault", r"amdgpu[^\n]{0,80}\bpage fault\b"),
            _p("retry page fault", r"\[(?:gfxhub|mmhub)\d*\] (?:no-)?retry page fault"),
        ),
        weak_patterns=(_p("segmentation fault"), _p("sigsegv", r"\bSIGSEGV\b")),
        requires=(_p("hsa_override_gfx_version"), _p("rocm", r"\bROCm\b"), _p("amdgpu"),
                  _p("gfx10", r"\bgfx10[0-9a-f]{2}\b")),
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
            _p("nansexception"),
            _p("a tensor with all nans was produced"),
            _p("does not support half type"),
        ),
        weak_patterns=(_p("nan", r"\bloss\b[^\n]{0,40}\bnan\b"), _p("returned nan values")),
        requires=(_p("fp16", r"\bfp16\b"), _p("half", r"\bhalf\b"), _p("float16"), _p("autocast"),
                  _p("amp", r"\bamp\b")),
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
            _p("amdkfd_ioc_wait_event"),
            _p("timeout", r"amdgpu[^\n]{0,80}ring \S+ timeout"),
            _p("gpu reset", r"amdgpu[^\n]{0,80}GPU reset"),
            _p("gpu recovery", r"amdgpu[^\n]{0,80}GPU recovery"),
            _p("gpu hang", r"reason\s*:\s*GPU Hang"),
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
            _p("when compiling for gfx", r"when compiling for gfx\w+"),
            _p("use of undeclared identifier 'ck_buffer_resource_3rd_dword'"),
            _p("ninja: build stopped: subcommand failed"),
            _p("***", r"^make(?:\[\d+\])?: \*\*\* .*Error \d+"),
            _p("cmake error", r"^CMake Error"),
            _p("error: command", r"error: command '[^']*(?:hipcc|clang\+*|amdclang\+*|g\+\+|gcc|c\+\+)' failed"),
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
            _p("back to", r"will fall ?back to (?:run on )?the CPU"),
            _p("is not currently", r"is not currently (?:supported|implemented) (?:on|for) the \w+ (?:backend|device)"),
            _p("falling back to", r"falling back to (?:the )?CPU"),
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
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


class _Log:
    """A cleaned log, split into lines once, with a lower-case copy of the same length for keyword search."""

    def __init__(self, text: str):
        if not isinstance(text, str):
            text = str(text, "utf-8", "replace") if isinstance(text, (bytes, bytearray)) else str(text)
        text = _ANSI.sub("", text).replace("\x00", "").replace("\r\n", "\n").replace("\r", "\n")
        # Cut over-long lines before any regex work so that a binary blob cannot make matching slow.
        self.lines = [line[:_SEARCH_CHARS] for line in text.split("\n")]
        self.text = "\n".join(self.lines)
        self.lower = self.text.translate(_ASCII_LOWER)  # same length: positions map back to lines
        self.starts, pos = [], 0
        for line in self.lines:
            self.starts.append(pos)
            pos += len(line) + 1

    def hits(self, pattern: _Pattern) -> list[int]:
        """Indices of the lines where the pattern matches."""
        out, pos = [], 0
        while True:
            pos = self.lower.find(pattern.keyword, pos)
            if pos < 0:
                return out
            index = bisect.bisect_right(self.starts, pos) - 1
            if pattern.regex.search(self.lines[index]):
                out.append(index)
            pos = self.starts[index] + len(self.lines[index]) + 1  # on to the next line

    def any(self, patterns: tuple[_Pattern, ...]) -> bool:
        return any(self.hits(p) for p in patterns)


def _match(m: _Mode, log: _Log) -> tuple[int, list[str]] | None:
    indices = {i for p in m.patterns for i in log.hits(p)}
    if m.weak_patterns and (indices or log.any(m.requires)):
        indices |= {i for p in m.weak_patterns for i in log.hits(p)}
    if not indices:
        return None
    kept: list[str] = []
    for i in sorted(indices):
        line = log.lines[i].strip()[:MAX_LINE_CHARS]
        if line and line not in kept:
            kept.append(line)
        if len(kept) >= MAX_LINES_PER_MODE:
            break
    return min(indices), kept


def mode(mode_id: str) -> ModeMatch:
    """A fresh ModeMatch for a mode id (no lines), e.g. to describe a probe result."""
    m = _BY_ID[mode_id]
    return ModeMatch(m.id, m.title, m.why, m.fix, links(*m.sources))


def classify(text: str) -> list[ModeMatch]:
    """The failure modes found in `text`, most important first; `[unknown]` when none."""
    log = _Log(text)
    found = []
    for m in _MODES:
        result = _match(m, log)
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
    log = _Log(text)
    return any(log.any(_BY_ID[mode_id].patterns) for mode_id in sorted(GPU_FAULT_MODES))
