"""Building blocks for generated WGSL: bindings, the parameter block, launch geometry.

Every kernel has the same shape of interface so that all kernels with N buffers share one pipeline
layout and one set of cached bind groups:
- binding 0: the parameter block, 64 32-bit words read with pu(i) / pi(i) / pf(i);
- bindings 1..N: whole heap buffers, as typed arrays; a tensor is (heap, element offset, strides).
Kernels index work linearly over a 2-D grid of workgroups (65535 per dimension is the portable limit).
"""
from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field

from navitrain.wgpu.runtime import PARAM_WORDS

MAX_GROUPS = 65535

PARAM_DECL = """
@group(0) @binding(0) var<uniform> P: array<vec4<u32>, 16>;
fn pu(i: u32) -> u32 { return P[i >> 2u][i & 3u]; }
fn pi(i: u32) -> i32 { return bitcast<i32>(P[i >> 2u][i & 3u]); }
fn pf(i: u32) -> f32 { return bitcast<f32>(P[i >> 2u][i & 3u]); }
"""


def bindings(types: list[str], names: list[str] | None = None) -> str:
    """Storage declarations for bindings 1..N: `types` are WGSL element types (f32, i64, vec4<f32>, ...)."""
    names = names or [f"b{i}" for i in range(len(types))]
    return "".join(
        f"@group(0) @binding({i + 1}) var<storage, read_write> {n}: array<{t}>;\n"
        for i, (n, t) in enumerate(zip(names, types)))


def entry(workgroup: int, body: str, shared: str = "") -> str:
    """A `main` whose threads see `gi`, their linear index over a 2-D grid of workgroups."""
    return f"""{shared}
@compute @workgroup_size({workgroup})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {{
  let group = wid.y * nwg.x + wid.x;
  let gi = group * {workgroup}u + lid;
{body}
}}
"""


def module(types: list[str], body: str, workgroup: int = 256, helpers: str = "", shared: str = "",
           names: list[str] | None = None) -> str:
    return PARAM_DECL + bindings(types, names) + helpers + entry(workgroup, body, shared)


def grid(n_groups: int) -> tuple[int, int, int]:
    """Spread n workgroups over x and y so neither exceeds the per-dimension limit."""
    if n_groups <= MAX_GROUPS:
        return (max(1, n_groups), 1, 1)
    y = (n_groups + MAX_GROUPS - 1) // MAX_GROUPS
    x = (n_groups + y - 1) // y
    return (x, y, 1)


def groups_for(n_threads: int, workgroup: int = 256) -> tuple[int, int, int]:
    return grid((n_threads + workgroup - 1) // workgroup)


@dataclass
class Params:
    """Words of a parameter block; floats are stored as their bits, read back with pf()."""
    fmt: list[str] = field(default_factory=list)
    values: list = field(default_factory=list)

    def u(self, *vals: int) -> int:
        at = len(self.values)
        self.fmt.extend("I" * len(vals))  # one format letter per word (conv.set_gemm edits by index)
        self.values.extend([int(v) & 0xFFFFFFFF for v in vals])
        return at

    def i(self, *vals: int) -> int:
        at = len(self.values)
        for v in vals:
            v = int(v)
            if not -(2**31) <= v < 2**31:
                raise OverflowError(f"kernel parameter {v} does not fit in 32 bits")
            self.fmt.append("i")
            self.values.append(v)
        return at

    def f(self, *vals: float) -> int:
        at = len(self.values)
        self.fmt.extend("f" * len(vals))
        self.values.extend([float(v) for v in vals])
        return at

    def pack(self) -> bytes:
        if len(self.values) > PARAM_WORDS:
            raise ValueError(f"kernel needs {len(self.values)} parameter words; the block holds {PARAM_WORDS}")
        return struct.pack("<" + "".join(self.fmt), *self.values)


_F16 = re.compile(r"\bf16\b|[0-9]h\b")


def uses_f16(code: str) -> bool:
    return bool(_F16.search(code))
