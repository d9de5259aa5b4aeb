"""The environments `navitrain probe --env-matrix` compares, chosen for the GPU this machine has.

Each entry is (environment, why). The first is always the environment as it is. The others are the
switches that change what ROCm runs on an AMD card, and only where they can matter:
- HSA_OVERRIDE_GFX_VERSION=10.3.0 on RDNA1/RDNA2 cards: the popular trick. Right for RDNA2 cards
  without their own code (gfx1031/1032, ROCm#2061); on RDNA1 it runs RDNA2 code and faults
  (failure mode gfx-override-fault, ROCm#2527) — the matrix shows it instead of freezing the desktop.
- HSA_OVERRIDE_GFX_VERSION=10.1.0 on gfx1011/1012/1013: reuse gfx1010 code (ROCm/rocBLAS#1331, ROCm#887).
- MIOPEN_DEBUG_GCN_ASM_KERNELS=0 on any AMD card: no hand-written assembly kernels in MIOpen (used by
  some direct and Winograd convolutions, fused convolutions and batch normalisation), which is where
  GCN-only DPP instructions break RDNA (failure mode miopen-dpp-unsupported, ROCm/MIOpen#1586).
- MIOPEN_DEBUG_CONV_DIRECT=0 MIOPEN_DEBUG_CONV_WINOGRAD=0 on any AMD card: leave MIOpen only its GEMM
  and implicit-GEMM convolutions (MIOpen docs, "Filtering by algorithm").
- HSA_OVERRIDE_GFX_VERSION unset, when it is set in your environment: what the card does without it.
On NVIDIA cards and machines without a GPU the matrix is the environment as it is: no switch we know
of changes which kernels run there.
"""
from __future__ import annotations

import os

AMD_VENDOR = "0x1002"
_OVERRIDE = "HSA_OVERRIDE_GFX_VERSION"


def _amd_targets(facts: dict) -> tuple[bool, set[str]]:
    amd = False
    targets: set[str] = set()
    for gpu in facts.get("gpus", []):
        if str(gpu.get("pci_id", "")).lower().startswith(AMD_VENDOR):
            amd = True
            if gpu.get("gfx_target"):
                targets.add(gpu["gfx_target"])
    targets.update(t for t in facts.get("kfd_targets", []) if t and t != "?")
    return amd or bool(targets), targets


def env_matrix(facts: dict, environ: dict[str, str] | None = None) -> list[tuple[dict[str, str], str]]:
    """[(environment, why)] for this machine's GPUs (facts as in a Fingerprint)."""
    environ = os.environ if environ is None else environ
    matrix: list[tuple[dict[str, str], str]] = [({}, "the environment as it is")]
    amd, targets = _amd_targets(facts)
    if not amd:
        return matrix
    if environ.get(_OVERRIDE):
        matrix.append(({_OVERRIDE: ""}, f"without your {_OVERRIDE}={environ[_OVERRIDE]}"))
    rdna1 = sorted(t for t in targets if t.startswith("gfx101"))
    rdna2 = sorted(t for t in targets if t.startswith("gfx103"))
    if rdna1 or rdna2:
        why = ("run RDNA2 (gfx1030) code: the usual advice for RDNA2 cards"
               + (f"; expected to fault on {', '.join(rdna1)} (gfx-override-fault)" if rdna1 else ""))
        matrix.append(({_OVERRIDE: "10.3.0"}, why))
    if any(t in ("gfx1011", "gfx1012", "gfx1013") for t in targets):
        matrix.append(({_OVERRIDE: "10.1.0"}, "let gfx1011/1012/1013 reuse gfx1010 code"))
    matrix.append(({"MIOPEN_DEBUG_GCN_ASM_KERNELS": "0"},
                   "MIOpen without hand-written GCN assembly kernels (convolution, batch norm)"))
    matrix.append(({"MIOPEN_DEBUG_CONV_DIRECT": "0", "MIOPEN_DEBUG_CONV_WINOGRAD": "0"},
                   "MIOpen convolution through GEMM/implicit GEMM only"))
    return matrix


def parse_env_options(values: list[str]) -> dict[str, str]:
    """NAME=VALUE strings from --env into a dict; ValueError naming the bad one."""
    env: dict[str, str] = {}
    for value in values:
        name, sep, setting = value.partition("=")
        if not sep or not name or not name.replace("_", "").isalnum() or name[0].isdigit():
            raise ValueError(f"--env {value!r} is not NAME=VALUE (an empty VALUE unsets NAME)")
        env[name] = setting
    return env
