"""The card's limits in CI (issue 20): NAVITRAIN_WGPU_LIMITS makes the device ask for no more than a card
offers, kernels that would not fit are refused with the sizes, the GEMM tiles and core kernels pass under
the RX 5600 XT profile on lavapipe, and NAVITRAIN_WGPU_MEMORY_LIMIT caps the allocator.

The device is a process singleton, so each profile runs in a child process."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from navitrain.wgpu import kernel_limits, limits_profile
from navitrain.wgpu.allocator import CachingAllocator

ROOT = Path(__file__).resolve().parents[2]
_MiB = 1 << 20


def _child(code: str, env: dict, timeout: float = 240) -> subprocess.CompletedProcess:
    full = {**os.environ, **env}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, env=full,
                          capture_output=True, text=True, timeout=timeout)


# --- the profile and the kernel check, without a device ---------------------------------------------

def test_builtin_profile_caps_the_adapter_and_its_features():
    profile = limits_profile.load("RX5600XT")
    adapter = {"max-compute-workgroup-storage-size": 1 << 17, "max-buffer-size": 1 << 30,
               "max-compute-invocations-per-workgroup": 256, "max-texture-dimension-2d": 16384}
    capped = profile.cap(adapter)
    assert capped["max-compute-workgroup-storage-size"] == 65536          # the card is smaller
    assert capped["max-buffer-size"] == 1 << 30                            # the adapter is smaller
    # wgpu gives RADV's 4 GiB - 4 as 2 GiB - 1 (buffers) and 2 GiB - 4 (storage bindings) on Linux
    assert profile.cap({"max-buffer-size": 1 << 32, "max-storage-buffer-binding-size": 1 << 32}) == {
        "max-buffer-size": (1 << 31) - 1, "max-storage-buffer-binding-size": (1 << 31) - 4}
    assert capped["max-compute-invocations-per-workgroup"] == 256
    assert capped["max-texture-dimension-2d"] == 16384                     # not in the profile: untouched
    assert profile.allow(["shader-f16", "shader-f64", "shader-i16", "timestamp-query"]) == [
        "shader-f16", "shader-f64", "timestamp-query"]                       # the card has doubles, not i16


def test_json_profile_and_its_errors(tmp_path):
    good = tmp_path / "card.json"
    good.write_text(json.dumps({"name": "small card", "limits": {"max-buffer-size": 1 << 28}}))
    profile = limits_profile.load(str(good))
    assert profile.name == "small card" and profile.features is None
    assert profile.allow(["shader-f16"]) == ["shader-f16"]                 # no "features": none removed
    for bad in ({"limits": {"max-buffer-size": -1}}, {"limits": {"max-buffer-size": True}}, [1, 2],
                {"limits": {"max-buffer-size": 1}, "features": "shader-f16"}):
        good.write_text(json.dumps(bad))
        with pytest.raises(limits_profile.LimitsProfileError):
            limits_profile.load(str(good))
    good.write_text("{not json")
    with pytest.raises(limits_profile.LimitsProfileError, match="not readable JSON"):
        limits_profile.load(str(good))
    with pytest.raises(limits_profile.LimitsProfileError, match="rx5600xt"):
        limits_profile.load("rx9999")


def test_workgroup_memory_is_summed_from_the_wgsl_as_tiles_count_it():
    from navitrain.wgpu.kernels import gemm, gemm_tuning

    for cfg in gemm_tuning.CANDIDATES:
        words = cfg.shared_bytes // 16 // 2
        code = (f"var<workgroup> As: array<vec4<f32>, {words}>;\nvar<workgroup> Bs: array<vec4<f32>, {words}>;\n"
                f"@compute @workgroup_size({cfg.threads})\nfn main() {{}}")
        assert kernel_limits.workgroup_bytes(code) == cfg.shared_bytes, cfg.name
        assert kernel_limits.invocations(code) == cfg.threads
    # vec3 takes a vec4's room in an array, f16 two bytes, each variable is rounded to 16 bytes
    assert kernel_limits.type_size("array<vec3<f32>, 10>") == (160, 16)
    assert kernel_limits.workgroup_bytes("var<workgroup> h: array<f16, 9>;") == 32
    assert kernel_limits.workgroup_bytes("var<workgroup> a: array<array<u32, 4>, 3>;") == 48
    assert kernel_limits.invocations("@compute @workgroup_size(16, 8, 2) fn main() {}") == 256
    with pytest.raises(kernel_limits.KernelLimitError, match="cannot size"):
        kernel_limits.workgroup_bytes("var<workgroup> m: mat4x4<f32>;")
    limits = {"max-compute-workgroup-storage-size": 16384, "max-compute-invocations-per-workgroup": 256}
    with pytest.raises(kernel_limits.KernelLimitError, match="needs 17408 bytes .* allows 16384 .*rx"):
        kernel_limits.check("gemm", "var<workgroup> As: array<vec4<f32>, 1088>;", limits, "rx")
    with pytest.raises(kernel_limits.KernelLimitError, match="512 threads"):
        kernel_limits.check("sum", "@compute @workgroup_size(512) fn main() {}", limits)
    assert gemm.TileConfig(64, 64, 16, 4, 4).fits(limits) is False   # the tuner skips it under such a device


# --- the memory cap, on a fake GPU ------------------------------------------------------------------

def _capped(cap: int) -> tuple[CachingAllocator, list]:
    made: list = []
    alloc = CachingAllocator(lambda n: made.append(n) or object(), lambda buf: None, heap_size=4 * _MiB,
                             max_binding=64 * _MiB, cap=cap)
    return alloc, made


def test_memory_cap_refuses_past_it_with_what_was_allocated():
    alloc, made = _capped(10 * _MiB)
    blocks = [alloc.malloc(3 * _MiB // 2) for _ in range(5)]              # two a heap; the last heap shrinks
    assert made == [4 * _MiB, 4 * _MiB, 2 * _MiB] and alloc.reserved == 10 * _MiB
    with pytest.raises(torch.OutOfMemoryError) as info:
        alloc.malloc(3 * _MiB // 2)
    message = str(info.value)
    assert "NAVITRAIN_WGPU_MEMORY_LIMIT" in message and "cap of 10 MiB" in message
    assert "7.5 MiB allocated" in message and "10.0 MiB reserved in 3 heap(s)" in message
    for block in blocks:
        alloc.free(block)
    big = alloc.malloc(9 * _MiB)                                          # idle heaps go back first
    assert big.heap.dedicated and alloc.reserved == 9 * _MiB


def test_without_a_cap_nothing_changes():
    alloc, made = _capped(None)
    for _ in range(5):
        alloc.malloc(3 * _MiB // 2)
    assert made == [4 * _MiB] * 3


# --- on the device, in child processes ----------------------------------------------------------

def test_a_tile_bigger_than_the_profile_is_refused_and_the_memory_cap_holds(tmp_path):
    card = tmp_path / "card.json"
    card.write_text(json.dumps({"name": "16k card", "features": ["timestamp-query"],
                                "limits": {"max-compute-workgroup-storage-size": 16384}}))
    result = _child("""
        import json, torch
        from navitrain.wgpu.kernels import gemm
        from navitrain.wgpu.kernel_limits import KernelLimitError
        from navitrain.wgpu.runtime import runtime
        from navitrain.wgpu.tensor import empty
        rt = runtime()
        out = {"storage": rt.limits["max-compute-workgroup-storage-size"], "features": sorted(rt.features),
               "describe": rt.describe()}
        gen = torch.Generator().manual_seed(7)
        a, b = torch.randn(70, 40, generator=gen), torch.randn(40, 50, generator=gen)
        a[3, 5], b[7, 2] = float("nan"), float("inf")
        c = empty([70, 50], torch.float32)
        try:
            gemm.gemm(a.to("wgpu"), b.to("wgpu"), c, config=gemm.TileConfig(64, 64, 16, 4, 4))   # 17408 bytes
            out["big"] = "ran"
        except KernelLimitError as exc:
            out["big"] = str(exc)
        gemm.gemm(a.to("wgpu"), b.to("wgpu"), c, config=gemm.TileConfig(64, 64, 8, 4, 4))        # 8704 bytes
        torch.testing.assert_close(c.cpu(), a @ b, equal_nan=True, rtol=1e-5, atol=1e-5)
        keep = [torch.randn(1 << 20, device="wgpu") for _ in range(5)]            # 20 MiB under a 24 MiB cap
        try:
            torch.empty(3 << 20, device="wgpu")                                   # 12 MiB more
            out["oom"] = "fit"
        except torch.OutOfMemoryError as exc:
            out["oom"] = str(exc)
        print("RESULT" + json.dumps(out))
    """, {"NAVITRAIN_WGPU_LIMITS": str(card), "NAVITRAIN_WGPU_MEMORY_LIMIT": "24MiB"})
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.split("RESULT", 1)[1])
    assert out["storage"] == 16384
    assert "shader-f16" not in out["features"]                                  # the file allows none of it
    assert out["describe"]["limits_profile"] == "16k card" and out["describe"]["memory_limit_bytes"] == 24 * _MiB
    assert "needs 17408 bytes of workgroup memory" in out["big"] and "16k card" in out["big"]
    assert "cap of 24 MiB" in out["oom"] and "MiB allocated by tensors" in out["oom"]


# Every tuner candidate (the GEMM tiles are the kernels with the most workgroup memory), and the kernels
# with workgroup memory besides them: reductions, softmax and losses (OpInfo core), scans and sorts.
# About 105 s on a 2-core lavapipe box; norms, convolutions and pooling (3 more minutes) are left out.
PROFILE_SUITE = ["tests/wgpu/test_gemm_tiles.py", "tests/wgpu/test_ops_scan_sort.py",
                 "tests/wgpu/test_ops_opinfo_core.py"]


def test_gemm_tiles_and_core_kernels_pass_under_the_rx5600xt_profile():
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *PROFILE_SUITE],
                            cwd=ROOT, env={**os.environ, "NAVITRAIN_WGPU_LIMITS": "rx5600xt"},
                            capture_output=True, text=True, timeout=540)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and " failed" not in result.stdout
