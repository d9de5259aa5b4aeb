"""What this machine's facts add to an explained log: the card, the override, the arch list.

`navitrain explain` on the affected machine turns "the GPU faulted" into "the GPU faulted, and this RX
5700 XT runs with HSA_OVERRIDE_GFX_VERSION=10.3.0: unset it".
"""
from __future__ import annotations

from navitrain.doctor.logs import ModeMatch
from navitrain.doctor.situation import Situation, pick, strings


def add_context(modes: list[ModeMatch], facts: dict) -> list[ModeMatch]:
    s = Situation(facts if isinstance(facts, dict) else {})
    for m in modes:
        try:
            m.context.extend(_notes(m.id, s))
        except Exception:  # context is a bonus; the classification stands without it
            pass
    return modes


def _notes(mode_id: str, s: Situation) -> list[str]:
    notes: list[str] = []
    gpu = s.gpu_label() if s.primary else None
    if mode_id in ("gfx-override-fault", "gpu-hang", "no-code-object") and s.override:
        if s.family == "RDNA1" and s.override_gfx not in (None, "gfx1010", s.gfx):
            notes.append(f"{gpu} runs with HSA_OVERRIDE_GFX_VERSION={s.override}: code for {s.override_gfx} on an "
                         "RDNA1 card. Unset it; this is the likely cause.")
        else:
            notes.append(f"HSA_OVERRIDE_GFX_VERSION={s.override} is set (ROCm looks for {s.override_gfx or '?'} code).")
    if mode_id == "no-code-object" and s.gfx:
        arch = s.arch_list
        if arch and s.effective_gfx not in arch:
            notes.append(f"The card is {s.gfx}; the installed torch was built for {', '.join(arch)}.")
        elif s.torch_build is None:
            notes.append(f"The card is {s.gfx} ({gpu}).")
    if mode_id == "rocblas-missing-arch" and s.gfx:
        system = strings(pick(s.rocm, "rocblas_arches"))
        if system:
            where = pick(s.rocm, "rocblas_library_dir", kind=str)
            have = "has" if s.effective_gfx in system else "has no"
            notes.append(f"The system rocBLAS in {where} {have} a library for {s.effective_gfx} "
                         f"(it covers {', '.join(system[:10])}).")
        else:
            notes.append(f"The card is {s.effective_gfx}; rocBLAS needs a TensileLibrary built for it.")
    if mode_id == "miopen-dpp-unsupported" and s.family in ("RDNA1", "RDNA2"):
        notes.append(f"{gpu} is gfx10 ({s.family}): MIOpen's DPP kernels cannot run on it; use the `nomiopen` route.")
    if mode_id in ("gfx-override-fault", "gpu-hang") and not s.override and gpu:
        notes.append(f"No HSA_OVERRIDE_GFX_VERSION is set on this machine ({gpu}); "
                     "`navitrain probe` can find the operation that faults.")
    return notes
