"""Limits profiles: make the wgpu device ask for no more than a given card offers (NAVITRAIN_WGPU_LIMITS).

Why: nobody on the project has an RDNA1 card, so a kernel or GEMM tile that needs more workgroup memory,
threads or binding size than an RX 5600 XT gives would only fail on a user's machine. With
NAVITRAIN_WGPU_LIMITS=rx5600xt the device on any adapter (lavapipe in CI) is requested with the
smaller of the adapter's limit and the card's, and without the optional features the card lacks, so
such a kernel fails (or is skipped by `TileConfig.fits`) here first. The value may also be the path
of a JSON file `{"name": ..., "limits": {webgpu-limit-name: number}, "features": [...]}` for other
cards.

The rx5600xt values are what RADV (Mesa's Vulkan driver) reports for Navi 10 (RX 5600 XT / 5700 /
5700 XT share the same limits), translated to the WebGPU names wgpu-native derives from them. They
come from RADV's Vulkan limits as known from driver reports, NOT from a report read for this file:
they MUST be checked against an RX 5600 XT / 5700 XT RADV report on the public database
https://vulkan.gpuinfo.org (device "AMD Radeon RX 5600 XT (RADV NAVI10)"): VkPhysicalDeviceLimits
maxComputeSharedMemorySize, maxComputeWorkGroupInvocations, maxComputeWorkGroupSize[0..2],
maxComputeWorkGroupCount[0], maxStorageBufferRange, maxBoundDescriptorSets,
maxPerStageDescriptorStorageBuffers; VkPhysicalDeviceMaintenance3Properties maxMemoryAllocationSize;
features shaderFloat16 (VkPhysicalDeviceShaderFloat16Int8Features), shaderInt64,
timestampComputeAndGraphics, and the subgroup properties. Where the card offers more than wgpu-native
hands out anyway (binding counts), the profile uses wgpu's number, since that is what the device gets.

Workgroup storage: RADV reports 64 KiB on Navi 10, above WebGPU's default of 16 KiB; navitrain
deliberately requests the adapter's value rather than the default, because its default LARGE GEMM tile
(16.5 KiB) and eight tuner candidates (17-33 KiB) need more than 16 KiB. On lavapipe (32 KiB) the
adapter is the tighter bound, so CI checks the tiles that fit both.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

_KiB, _GiB = 1 << 10, 1 << 30

# RADV on Navi 10 (see the module docstring for what to check on gpuinfo.org before trusting a value).
RX5600XT_LIMITS = {
    "max-compute-workgroup-storage-size": 64 * _KiB,   # maxComputeSharedMemorySize 65536 (GFX7 and later)
    "max-compute-invocations-per-workgroup": 1024,     # maxComputeWorkGroupInvocations
    "max-compute-workgroup-size-x": 1024,              # maxComputeWorkGroupSize = 1024, 1024, 1024
    "max-compute-workgroup-size-y": 1024,
    "max-compute-workgroup-size-z": 1024,
    "max-compute-workgroups-per-dimension": 65535,     # maxComputeWorkGroupCount (wgpu caps at 65535)
    # maxStorageBufferRange is 4294967295 on RADV; wgpu-native caps the binding at the buffer size.
    "max-storage-buffer-binding-size": 4 * _GiB - 4,
    "max-buffer-size": 4 * _GiB - 4,                   # maxMemoryAllocationSize 0xFFFFFFFC
    "max-bind-groups": 8,                              # maxBoundDescriptorSets 32; wgpu hands out 8
    "max-storage-buffers-per-shader-stage": 32,        # maxPerStageDescriptorStorageBuffers is far larger
}
# shaderFloat16 (RDNA1 has packed fp16), shaderInt64, subgroup operations, timestampComputeAndGraphics.
RX5600XT_FEATURES = ("shader-f16", "shader-int64", "subgroup", "timestamp-query")

BUILTIN = {"rx5600xt": ("RX 5600 XT / 5700 XT (RADV, Navi 10)", RX5600XT_LIMITS, RX5600XT_FEATURES)}


class LimitsProfileError(ValueError):
    """NAVITRAIN_WGPU_LIMITS names no built-in profile or a file that is not a valid profile."""


@dataclass(frozen=True)
class LimitsProfile:
    name: str
    limits: dict = field(default_factory=dict)
    features: frozenset | None = None  # None: the file did not restrict features

    def cap(self, adapter_limits: dict) -> dict:
        """The limits to request: the adapter's, lowered to the profile's where the profile is smaller."""
        return {k: min(int(v), int(self.limits[k])) if k in self.limits else v for k, v in adapter_limits.items()}

    def allow(self, features: list[str]) -> list[str]:
        return features if self.features is None else [f for f in features if f in self.features]


def load(text: str) -> LimitsProfile:
    """The profile a NAVITRAIN_WGPU_LIMITS value names: a built-in name or a JSON file's path."""
    key = text.strip().lower()
    if key in BUILTIN:
        name, limits, features = BUILTIN[key]
        return LimitsProfile(name, dict(limits), frozenset(features))
    path = Path(text).expanduser()
    if not path.is_file():
        raise LimitsProfileError(f"expected one of {', '.join(BUILTIN)} or the path of a JSON limits file "
                                 f"(no file at {str(path)!r})")
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise LimitsProfileError(f"{path} is not readable JSON: {exc}") from None
    limits = data.get("limits") if isinstance(data, dict) else None
    if not isinstance(limits, dict) or not all(
            isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in limits.values()):
        raise LimitsProfileError(f"{path}: expected {{\"limits\": {{\"max-...\": positive whole number, ...}}}}")
    features = data.get("features")
    if features is not None and not (isinstance(features, list) and all(isinstance(f, str) for f in features)):
        raise LimitsProfileError(f"{path}: \"features\" must be a list of wgpu feature names")
    return LimitsProfile(str(data.get("name", path.stem)), dict(limits),
                         None if features is None else frozenset(features))


def parse(text: str) -> LimitsProfile:
    """_env parser: ValueError with what was expected."""
    try:
        return load(text)
    except LimitsProfileError as exc:
        raise ValueError(str(exc)) from None
