"""Check a WGSL kernel's workgroup memory and workgroup size against the device's limits before compiling it.

Why our own check: wgpu-native (as of the wgpu-py build navitrain uses) compiles a kernel whose
`var<workgroup>` arrays exceed the device's max-compute-workgroup-storage-size without complaint on
lavapipe, which has more room than it was asked for. A GEMM tile too big for an RX 5600 XT would then pass
in CI under NAVITRAIN_WGPU_LIMITS=rx5600xt and fail only on the card. So every kernel's declared
workgroup memory is summed from its source and refused here with the sizes and the limit.

The sizes follow WGSL's layout rules for the types navitrain's kernels declare: scalars (f32, i32, u32:
4 bytes, f16: 2, i64/u64/f64: 8), vecN<T> (vec3 padded to vec4), atomic<T>, and array<T, N> nested; each variable is
rounded up to 16 bytes, as drivers place them. A declaration it cannot size is an error, not a pass.
"""
from __future__ import annotations

import re

_SCALAR = {"f32": 4, "i32": 4, "u32": 4, "f16": 2, "bool": 4, "i64": 8, "u64": 8, "f64": 8}
_DECL = re.compile(r"var\s*<\s*workgroup\s*>\s*(\w+)\s*:\s*([^;]+);")
_WG_SIZE = re.compile(r"@workgroup_size\s*\(\s*([0-9]+)u?\s*(?:,\s*([0-9]+)u?\s*)?(?:,\s*([0-9]+)u?\s*)?\)")


class KernelLimitError(RuntimeError):
    """A kernel needs more workgroup memory or threads than the device was created with."""


def type_size(text: str) -> tuple[int, int]:
    """(size, alignment) in bytes of a WGSL type; ValueError for a type this checker does not know."""
    text = text.strip()
    if text in _SCALAR:
        return _SCALAR[text], _SCALAR[text]
    match = re.fullmatch(r"vec([234])\s*<\s*(\w+)\s*>", text)
    if match and match.group(2) in _SCALAR:
        n, s = int(match.group(1)), _SCALAR[match.group(2)]
        align = s * (2 if n == 2 else 4)
        return s * n, align
    match = re.fullmatch(r"atomic\s*<\s*(\w+)\s*>", text)
    if match and match.group(1) in ("i32", "u32"):
        return 4, 4
    match = re.fullmatch(r"array\s*<\s*(.+)\s*,\s*([0-9]+)u?\s*>", text)
    if match:
        size, align = type_size(match.group(1))
        stride = -(-size // align) * align
        return stride * int(match.group(2)), align
    raise ValueError(f"cannot size the WGSL type {text!r}")


def workgroup_bytes(code: str) -> int:
    """Bytes of workgroup memory the module's `var<workgroup>` declarations take."""
    total = 0
    for name, typ in _DECL.findall(code):
        try:
            size, _ = type_size(typ)
        except ValueError as exc:
            raise KernelLimitError(f"workgroup variable {name}: {exc} (teach navitrain.wgpu.kernel_limits)") from None
        total += -(-size // 16) * 16
    return total


def invocations(code: str) -> int:
    """Threads per workgroup from `@workgroup_size(x[, y[, z]])` with literal sizes (0 when not literal)."""
    match = _WG_SIZE.search(code)
    if not match:
        return 0
    n = 1
    for part in match.groups():
        n *= int(part) if part else 1
    return n


def check(name: str, code: str, limits: dict, profile: str | None = None) -> None:
    """Raise KernelLimitError when kernel `name` would not fit a device with these limits."""
    where = f" (NAVITRAIN_WGPU_LIMITS profile {profile})" if profile else ""
    need, room = workgroup_bytes(code), int(limits.get("max-compute-workgroup-storage-size", 16384))
    if need > room:
        raise KernelLimitError(f"kernel '{name}' needs {need} bytes of workgroup memory; this device allows "
                               f"{room}{where}: use a smaller tile")
    threads, most = invocations(code), int(limits.get("max-compute-invocations-per-workgroup", 256))
    if threads > most:
        raise KernelLimitError(f"kernel '{name}' runs {threads} threads per workgroup; this device allows "
                               f"{most}{where}")
