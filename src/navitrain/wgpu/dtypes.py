"""How each torch dtype is stored in GPU buffers and computed on in WGSL.

WGSL has f32, i32, u32 and (with the shader-f16 / shader-int64 features) f16 and i64, but no 8- or 16-bit
integers, no bool in storage and no bfloat16. Each torch dtype therefore gets a *storage type*: the WGSL
element type of its buffer, its size there, and how values are converted on the way in and out. Narrow
types are widened on the GPU and rounded back to their own range or precision on every store, so results
match what the CPU computes in that dtype:
- float16 is native f16 where the adapter has shader-f16, else f32 rounded to half precision on store;
- bfloat16 is f32 rounded to bfloat16 (round to nearest even) on store;
- bool, uint8, int8, int16 are i32 holding the value (bool as 0/1), wrapped to their range on store;
- int64 is native i64 where the adapter has shader-int64, else i32 with a loud range check on upload
  (labels and indices must be exact; values beyond int32 are refused rather than wrapped);
- float64 is native f64 where the adapter has shader-f64, but only engines that compute it exactly opt in
  (`native_f64=True` on load/store: copies, conversions and fills); everywhere else it takes the counted
  CPU fallback, never an f32 approximation. Vulkan's transcendentals take 16/32-bit floats only. Without
  shader-f64 its tensors are raw bytes, and the first one on the device warns once (`.float()` is the fix);
- complex types have no kernels: their tensors live as raw bytes and every op on them runs through the
  counted CPU fallback.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch


class NoKernelForDtype(NotImplementedError):
    """Raised while generating a kernel for a dtype the GPU cannot compute in (float64, complex):
    the dispatcher then runs the op through the counted CPU fallback."""


@dataclass(frozen=True)
class StorageType:
    dtype: torch.dtype
    wgsl: str          # element type of the buffer in WGSL (f32, f16, i32, i64, u32)
    itemsize: int      # bytes per element in the buffer
    np_dtype: np.dtype  # numpy dtype with the buffer's byte layout
    compute: str       # WGSL type values are computed in (f32, i32, i64)
    kind: str          # "float", "int", "bool"
    has_kernels: bool = True  # False: raw bytes only, every op falls back to the CPU (f64: see native_f64)

    def _check(self, native_f64: bool) -> None:
        if not self.has_kernels and not (native_f64 and self.wgsl == "f64"):
            raise NoKernelForDtype(f"no wgpu kernels compute in {self.dtype}")

    def store(self, expr: str, native_f64: bool = False) -> str:
        """WGSL that turns a value of the compute type into what is written to the buffer. `native_f64`:
        the caller computes float64 exactly (an f64 buffer is then allowed)."""
        self._check(native_f64)
        return _STORE[(self.dtype, self.wgsl)](expr)

    def load(self, expr: str, to: str, native_f64: bool = False) -> str:
        """WGSL that reads a buffer element `expr` as compute type `to` (f32, f64, i32, i64, bool)."""
        self._check(native_f64)
        if to == "bool":
            zero = {"f32": "0.0", "f16": "0.0h", "f64": "0.0lf", "i32": "0", "i64": "0li", "u32": "0u"}[self.wgsl]
            if self.kind == "float":
                # NaN is true (as on the CPU); `!=` alone is evaluated as ordered by lavapipe (false for NaN).
                return f"(({expr} != {zero}) || is_nan(f32({expr})))"
            return f"({expr} != {zero})"
        if to == self.wgsl:
            return expr
        return f"{to}({expr})"


def _f16_round(e: str) -> str:
    # pack2x16float rounds to the nearest half; unpacking gives it back as an exactly representable f32.
    return f"unpack2x16float(pack2x16float(vec2<f32>({e}, 0.0))).x"


def _bf16_round(e: str) -> str:
    return f"bf16_round({e})"


def _wrap_int(bits: int, signed: bool):
    if signed:
        shift = 32 - bits
        return lambda e: f"((i32({e}) << {shift}u) >> {shift}u)"
    mask = (1 << bits) - 1
    return lambda e: f"(i32({e}) & {mask})"


_STORE = {
    (torch.float32, "f32"): lambda e: f"f32({e})",
    (torch.float16, "f16"): lambda e: f"f16({e})",
    (torch.float64, "f64"): lambda e: f"f64({e})",
    (torch.float16, "f32"): _f16_round,
    (torch.bfloat16, "f32"): _bf16_round,
    (torch.int32, "i32"): lambda e: f"i32({e})",
    (torch.int64, "i64"): lambda e: f"i64({e})",
    (torch.int64, "i32"): lambda e: f"i32({e})",
    (torch.int16, "i32"): _wrap_int(16, True),
    (torch.int8, "i32"): _wrap_int(8, True),
    (torch.uint8, "i32"): _wrap_int(8, False),
    (torch.bool, "i32"): lambda e: f"select(0, 1, bool({e}))",
}

# WGSL helpers that store expressions above may call; codegen includes them in every module.
WGSL_HELPERS = """
// NaN tests on the bits: drivers that assume no NaNs (lavapipe, some fast-math compilers) fold x != x to false.
fn is_nan(x: f32) -> bool { return (bitcast<u32>(x) & 0x7fffffffu) > 0x7f800000u; }
fn is_inf(x: f32) -> bool { return (bitcast<u32>(x) & 0x7fffffffu) == 0x7f800000u; }
// max(NaN, 0) is implementation-defined in WGSL (lavapipe: 0); relu must keep NaN (fused GEMM epilogues too).
fn relu_nan(x: f32) -> f32 { return select(max(x, 0.0), x, is_nan(x)); }
fn bf16_round(x: f32) -> f32 {
  let u = bitcast<u32>(x);
  if ((u & 0x7f800000u) == 0x7f800000u) { return x; }  // inf and nan stay as they are (bit test)
  let r = u + 0x7fffu + ((u >> 16u) & 1u);
  return bitcast<f32>(r & 0xffff0000u);
}
"""

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
INT_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)


def build_table(has_f16: bool, has_i64: bool, has_f64: bool = False) -> dict[torch.dtype, StorageType]:
    """The storage type of every supported dtype, given the adapter's features."""
    t: dict[torch.dtype, StorageType] = {}

    def add(dtype, wgsl, np_dtype, compute, kind, has_kernels=True):
        npd = np.dtype(np_dtype)
        t[dtype] = StorageType(dtype, wgsl, npd.itemsize, npd, compute, kind, has_kernels)

    add(torch.float32, "f32", np.float32, "f32", "float")
    if has_f16:
        add(torch.float16, "f16", np.float16, "f32", "float")
    else:
        add(torch.float16, "f32", np.float32, "f32", "float")
    add(torch.bfloat16, "f32", np.float32, "f32", "float")
    add(torch.int32, "i32", np.int32, "i32", "int")
    if has_i64:
        add(torch.int64, "i64", np.int64, "i64", "int")
    else:
        add(torch.int64, "i32", np.int32, "i32", "int")
    for d in (torch.int16, torch.int8, torch.uint8):
        add(d, "i32", np.int32, "i32", "int")
    add(torch.bool, "i32", np.int32, "i32", "bool")
    # Raw storage only: every op on these runs on the CPU (counted), but for float64's opt-in engines.
    if has_f64:
        add(torch.float64, "f64", np.float64, "f64", "float", has_kernels=False)
    else:
        add(torch.float64, "f64raw", np.float64, "f64raw", "float", has_kernels=False)
    add(torch.complex64, "c64raw", np.complex64, "c64raw", "complex", has_kernels=False)
    return t if has_f64 else _WarnOnFloat64(t)


NO_F64_MESSAGE = (
    "this adapter's shaders have no 64-bit floats (no shader-f64): float64 tensors on the wgpu device are "
    "kept as bytes and every op on them runs on the CPU (counted in torch.wgpu.fallback_report()); "
    "convert them with .float() (numpy arrays become float64 tensors) to compute on the GPU")
_warned_no_f64 = False


class _WarnOnFloat64(dict):
    """The table of an adapter without shader-f64: allocating the first float64 storage (tensor.new_storage
    looks its type up with .get) warns once per process. Only .get is overridden: kernels' [] stays C-fast."""

    def get(self, key, default=None):
        if key is torch.float64:
            warn_no_f64_once()
        return dict.get(self, key, default)


def warn_no_f64_once() -> None:
    global _warned_no_f64
    if not _warned_no_f64:
        _warned_no_f64 = True
        warnings.warn(NO_F64_MESSAGE, RuntimeWarning, stacklevel=4)


def to_storage_bytes(cpu: torch.Tensor, st: StorageType) -> np.ndarray:
    """A contiguous CPU tensor's values in the buffer layout of `st` (raises on int64 that does not fit)."""
    cpu = cpu.detach()
    if cpu.dtype == torch.bfloat16:
        arr = cpu.float().numpy()
    elif cpu.dtype == torch.bool:
        arr = cpu.numpy()
    else:
        arr = cpu.numpy()
    if st.dtype == torch.int64 and st.wgsl == "i32" and arr.size:
        lo, hi = int(arr.min()), int(arr.max())
        if lo < -(2**31) or hi >= 2**31:
            raise OverflowError(
                f"int64 values in [{lo}, {hi}] do not fit the 32-bit integers this adapter computes with "
                "(it lacks shader-int64); labels and indices must be exact, so this tensor is refused")
    return np.ascontiguousarray(arr.astype(st.np_dtype, copy=False))


def from_storage_bytes(data: memoryview | bytes, st: StorageType, count: int) -> torch.Tensor:
    """Elements read back from a buffer, as a 1-D CPU tensor of st.dtype."""
    arr = np.frombuffer(data, dtype=st.np_dtype, count=count)
    if st.dtype == torch.bfloat16:
        return torch.from_numpy(arr.copy()).to(torch.bfloat16)
    if st.dtype == torch.bool:
        return torch.from_numpy(arr != 0)
    t = torch.from_numpy(arr.copy())
    return t if t.dtype == st.dtype else t.to(st.dtype)
