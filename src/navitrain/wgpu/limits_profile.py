"""Limits profiles: make the wgpu device ask for no more than a given card offers (NAVITRAIN_WGPU_LIMITS).

Why: nobody on the project has an RDNA1 card, so a kernel or GEMM tile that needs more workgroup memory,
threads or binding size than an RX 5600 XT gives would only fail on a user's machine. With
NAVITRAIN_WGPU_LIMITS=rx5600xt the device on any adapter (lavapipe in CI) is requested with the
smaller of the adapter's limit and the card's, and without the optional features the card lacks, so
such a kernel fails (or is skipped by `TileConfig.fits`) here first. The value may also be the path
of a JSON file `{"name": ..., "limits": {webgpu-limit-name: number}, "features": [...]}` for other
cards.

The rx5600xt values are the WebGPU limits that the wgpu-native navitrain ships with gives an RX 5600 XT
/ 5700 / 5700 XT (Navi 10, GFX10) under RADV, Mesa's Vulkan driver (AMDVLK, AMD's own, is not covered).
Each is two steps, both checked (issue 20):

1. RADV's Vulkan value, read in Mesa's source (Navi 10 takes the GFX7+/GFX9+/GFX10 branches; that Navi
   10 is chip_class 12 = GFX10 and PCI id 0x731f is shown by a public `RADV_DEBUG=info vulkaninfo` of
   an RX 5700 XT: https://gist.github.com/gardotd426/88f7195f59eb93853f94af91954738bd):
   [radv] mesa:src/amd/vulkan/radv_physical_device.c at Mesa commit 001fa1cf11092d3d731ae083f430a26d8e88528f,
          https://github.com/bminor/mesa-mesa/blob/001fa1cf11092d3d731ae083f430a26d8e88528f/src/amd/vulkan/
          radv_physical_device.c (a mirror of Mesa's own history), the initialisers in
          radv_get_physical_device_properties and radv_physical_device_get_features, and
          `pdev->max_shared_size = pdev->info.gfx_level >= GFX7 ? 65536 : 32768`;
   [const] mesa:src/amd/vulkan/radv_constants.h at Mesa commit 0ac7f1888f901f69592d176a7b9260d2bd40da90
          (MAX_SETS 32, RADV_MAX_MEMORY_ALLOCATION_SIZE 0xFFFFFFFC, RADV_SUBGROUP_SIZE 64).
2. wgpu's translation to WebGPU names. navitrain runs wgpu-py 0.32.0, which bundles wgpu-native
   29.0.1.1 (wgpu/backends/wgpu_native/__init__.py) built on wgpu-core/wgpu-hal 29.0.3 (the crate names
   in libwgpu_native-release.so); not v25/v27. The rules are in wgpu-hal's vulkan/adapter.rs
   `to_wgpu_limits` and auxil/mod.rs `adjust_raw_limits`: buffers capped at i32::MAX on Linux for
   non-NVIDIA vendors (https://github.com/gfx-rs/wgpu/pull/2796), storage bindings capped at the i32
   range and at the buffer size, then rounded down to a multiple of 4
   (https://github.com/gfx-rs/wgpu/pull/8719), bind groups at 8. Rather than trust a reading of
   source that may not be 29.0.3's, the numbers below were read off that very library: a throwaway
   Vulkan layer patched RADV's Navi 10 properties (the values of step 1) into lavapipe's answers, and
   the adapter wgpu-native 29.0.1.1 built from them reported exactly the numbers of RX5600XT_LIMITS.

Verified so (Mesa source + wgpu's mapping run on the library in use): every value in RX5600XT_LIMITS.
The features are checked against Mesa's source and wgpu-hal's feature conditions as read in its source
(vulkan/adapter.rs `physical_device_features`, gfx-rs/wgpu trunk 64a61ee5c of October 2024; the layer
run does not cover them); see the comment on each.
NOT verified against a vulkan.gpuinfo.org report: none could be read for this change (no network on
the machine it was written on, and no RX 5600 XT / 5700 XT RADV report in the searchable archives);
a report only adds that no Mesa release in users' hands differs. Mesa has changed two inputs over
the years without changing the result: maxComputeWorkGroupCount[0] was 65535 before it became
4294967295 (wgpu takes the smallest of the three anyway), and the descriptor-count formula behind
max-storage-buffers-per-shader-stage (each version read gives millions; the value below comes from
the current formula). Subgroup sizes are not WebGPU limits and not in the profile:
RADV reports subgroupSize 64 and min/max 32/64 on GFX10, and compute shaders run wave64 unless
RADV_PERFTEST=cswave32, so a kernel must not assume a subgroup size.

Corrected in issue 20 (the values first written here were RADV's Vulkan numbers, not what wgpu gives):
max-buffer-size 4 GiB - 4 -> 2 GiB - 1, max-storage-buffer-binding-size 4 GiB - 4 -> 2 GiB - 4,
max-storage-buffers-per-shader-stage 32 -> 2097150 (32 is lavapipe's number, not the card's).

Workgroup storage: RADV reports 64 KiB on Navi 10, above WebGPU's default of 16 KiB; navitrain
deliberately requests the adapter's value rather than the default, because its default LARGE GEMM tile
(16.5 KiB) and eight tuner candidates (17-33 KiB) need more than 16 KiB. On lavapipe (32 KiB) the
adapter is the tighter bound, so CI checks the tiles that fit both.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

_KiB = 1 << 10
_I32_MAX = (1 << 31) - 1

# RADV on Navi 10 as wgpu-native 29 translates it; [radv]/[const] are the Mesa files in the docstring.
RX5600XT_LIMITS = {
    # [radv] maxComputeSharedMemorySize = pdev->max_shared_size = 65536 (gfx_level >= GFX7); wgpu: as is.
    "max-compute-workgroup-storage-size": 64 * _KiB,
    # [radv] maxComputeWorkGroupInvocations = 1024, maxComputeWorkGroupSize = {1024, 1024, 1024}; wgpu: as is.
    "max-compute-invocations-per-workgroup": 1024,
    "max-compute-workgroup-size-x": 1024,
    "max-compute-workgroup-size-y": 1024,
    "max-compute-workgroup-size-z": 1024,
    # [radv] maxComputeWorkGroupCount = {4294967295, 65535, 65535}; wgpu: the smallest of the three.
    "max-compute-workgroups-per-dimension": 65535,
    # [radv] maxStorageBufferRange = UINT32_MAX; wgpu: at most the i32 range and max-buffer-size, rounded
    # down to a multiple of 4, so 2 GiB - 4, not the 4 GiB - 1 that vulkaninfo shows.
    "max-storage-buffer-binding-size": _I32_MAX & ~3,
    # [radv] maxMemoryAllocationSize = maxBufferSize = RADV_MAX_MEMORY_ALLOCATION_SIZE = 0xFFFFFFFC [const];
    # wgpu: capped at i32::MAX on Linux for every vendor but NVIDIA (Mesa drivers mis-handle larger sizes).
    "max-buffer-size": _I32_MAX,
    # [radv] maxBoundDescriptorSets = MAX_SETS = 32 [const]; wgpu hands out at most 8 (MAX_BIND_GROUPS).
    "max-bind-groups": 8,
    # [radv] maxPerStageDescriptorStorageBuffers = maxPerStageResources = radv_max_descriptor_set_size()
    # (8388606 today); wgpu divides maxPerStageResources among the per-stage limits: 2097150 read off.
    "max-storage-buffers-per-shader-stage": 2097150,
}
# navitrain requests only these five (wgpu/device_setup.py); the card has all of them.
#   shader-f16: [radv] shaderFloat16 = has_packed_math_16bit (gfx_level >= GFX9, mesa:src/amd/common/ac_gpu_info.c),
#     storageBuffer16BitAccess and uniformAndStorageBuffer16BitAccess = true: wgpu's three conditions.
#   shader-int64: [radv] shaderInt64 = true.
#   shader-f64: [radv] shaderFloat64 = true (every GCN/RDNA chip has native doubles); wgpu's one condition.
#   subgroup: [radv] subgroupSupportedOperations has basic/vote/arithmetic/ballot/shuffle/shuffle-relative,
#     in all graphics stages and compute, and VK_EXT_subgroup_size_control is advertised: wgpu's conditions.
#   timestamp-query: [radv] timestampComputeAndGraphics = true; wgpu offers it on every Vulkan adapter.
RX5600XT_FEATURES = ("shader-f16", "shader-f64", "shader-int64", "subgroup", "timestamp-query")

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
