"""Building blocks for generated WGSL: bindings, the parameter block, launch geometry.

Every kernel has the same shape of interface so that all kernels with N buffers share one pipeline
layout and one set of cached bind groups:
- binding 0: the parameter block, 64 32-bit words, declared by name with `ParamBlock` (which reads
  them with pu(i) / pi(i) / pf(i));
- bindings 1..N: whole heap buffers, as typed arrays; a tensor is (heap, element offset, strides).
Kernels index work linearly over a 2-D grid of workgroups (65535 per dimension is the portable limit).
"""
from __future__ import annotations

import keyword
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


_READ = {"u32": "pu", "i32": "pi", "f32": "pf"}
_CONVERT = {"u32": lambda x: int(x) & 0xFFFFFFFF, "i32": int, "f32": float}
_MISSING = object()
_FIELD = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)(?:\[([0-9]+)\])?(?:\s*:\s*(u32|i32|f32))?$")


class _SlowPack(Exception):
    """A generated pack's way to the checked one (see ParamBlock._compiled_pack)."""


class ParamBlock:
    """A kernel's parameters, declared once by name. `wgsl()` gives the `let` lines that read them
    (placed at the top of the kernel body), `pack(**values)` the bytes the host uploads; both come from
    the same field list, so the shader and the launch cannot disagree about which word holds what.

    A field is "name" (u32), "name: i32" or "name: f32"; "name[k]" is k words of that type (sizes or
    strides per dimension), read in WGSL as name_0 .. name_{k-1} and packed from a sequence of k values.
    `defaults` gives values a launch may leave out; any other missing or unknown name is an error.
    """

    def __init__(self, *fields: str, defaults: dict | None = None):
        self.fields: list[tuple[str, str, int | None, int]] = []  # (name, WGSL type, count or None, first word)
        fmt, word = ["<"], 0
        for field_ in fields:
            m = _FIELD.match(field_.strip())
            if m is None:
                raise ValueError(f"kernel parameter {field_!r}: expected 'name', 'name: i32|f32' or 'name[k]'")
            name, count, wgsl_type = m.group(1), m.group(2), m.group(3) or "u32"
            count = int(count) if count is not None else None
            self.fields.append((name, wgsl_type, count, word))
            n = 1 if count is None else count
            fmt.append({"u32": "I", "i32": "i", "f32": "f"}[wgsl_type] * n)
            word += n
        names = [f[0] for f in self.fields]
        if len(set(names)) != len(names):
            raise ValueError(f"kernel parameters named twice: {sorted(n for n in names if names.count(n) > 1)}")
        if word > PARAM_WORDS:
            raise ValueError(f"kernel needs {word} parameter words; the block holds {PARAM_WORDS}")
        self.words = word
        self.defaults = dict(defaults or {})
        unknown = set(self.defaults) - set(names)
        if unknown:
            raise ValueError(f"defaults for parameters that do not exist: {sorted(unknown)}")
        self._names = frozenset(names)
        self._struct = struct.Struct("".join(fmt))
        # For the hottest launch paths (every elementwise op, every matrix product): the same bytes as
        # pack() from each word's value in declaration order, array fields flattened, without pack()'s
        # name checks and u32 wrapping, which cost microseconds a launch. tests/wgpu/test_param_block.py
        # checks the two agree.
        self.pack_words = self._struct.pack
        # pack()'s walk over the fields, precomputed: (name, count or None, default or _MISSING)
        self._plan = tuple((name, count, self.defaults.get(name, _MISSING)) for name, _, count, _ in self.fields)
        self._kinds = tuple(t for _, t, count, _ in self.fields for _ in range(1 if count is None else count))
        self.pack = self._compiled_pack() or self.pack

    def _compiled_pack(self):
        """pack(**values) as a function generated for this block: Python binds the keywords and one C call
        packs them, instead of a loop over the fields (~3x less host time a launch; norm, reduction and
        convolution launches pack by name). Anything unusual (a missing or unknown name, an array of the
        wrong length or given as an iterator, a value struct refuses) goes to the checked pack() below,
        which raises or converts exactly as before. None where a field name cannot be a Python parameter."""
        names = [name for name, _, _ in self._plan]
        if any(keyword.iskeyword(n) or n.startswith("_nt_") for n in names):
            return None
        params = ", ".join(f"{n}=_nt_missing" for n in names)
        required = [f"{n} is _nt_missing" for n, _, default in self._plan if default is _MISSING]
        lengths = [f"len({n}) != {count}" for n, count, _ in self._plan if count is not None]
        flat = ", ".join(n if count is None else f"*{n}" for n, count, _ in self._plan)
        given = ", ".join(f"({n!r}, {n})" for n in names)
        source = (f"def pack(*, {params}, **_nt_extra):\n"
                  f"    try:\n"
                  f"        if {' or '.join(['_nt_extra'] + required + lengths)}:\n"
                  f"            raise _nt_slow\n"
                  f"        return _nt_struct({flat})\n"
                  f"    except (_nt_slow, _nt_error, TypeError):\n"
                  f"        values = {{k: v for k, v in ({given},) if v is not _nt_missing}}\n"
                  f"        return _nt_checked(**values, **_nt_extra)\n")
        defaults = {n: d for n, _, d in self._plan if d is not _MISSING}
        scope = {"_nt_missing": _MISSING, "_nt_slow": _SlowPack, "_nt_error": struct.error,
                 "_nt_struct": self._struct.pack, "_nt_checked": self._checked_pack}
        try:
            exec(compile(source, f"<ParamBlock pack {names[:3]}>", "exec"), scope)
        except SyntaxError:
            return None
        fn = scope["pack"]
        # defaults: given ones replace the sentinel of their parameter
        fn.__kwdefaults__ = {**fn.__kwdefaults__, **defaults}
        return fn

    def ref(self, name: str, k: int | None = None) -> str:
        """The WGSL expression reading one parameter (word k of an array field), for code outside the
        kernel body, such as a helper function, where the `let`s of `wgsl()` are not in scope."""
        for n, wgsl_type, count, word in self.fields:
            if n == name:
                if (count is None) != (k is None) or (k is not None and not 0 <= k < count):
                    raise IndexError(f"kernel parameter {name}: index {k} for a field of {count or 1} word(s)")
                return f"{_READ[wgsl_type]}({word + (k or 0)}u)"
        raise KeyError(f"no kernel parameter named {name!r}")

    def wgsl(self, indent: str = "  ") -> str:
        lines = []
        for name, wgsl_type, count, word in self.fields:
            read = _READ[wgsl_type]
            if count is None:
                lines.append(f"{indent}let {name} = {read}({word}u);")
            else:
                lines.extend(f"{indent}let {name}_{k} = {read}({word + k}u);" for k in range(count))
        return "\n".join(lines) + "\n"

    def pack(self, **values) -> bytes:
        return self._checked_pack(**values)

    def _checked_pack(self, **values) -> bytes:
        if not self._names.issuperset(values):
            raise TypeError(f"unknown kernel parameters: {sorted(set(values) - self._names)}")
        flat = []
        for name, count, default in self._plan:
            v = values.get(name, default)
            if v is _MISSING:
                raise TypeError(f"kernel parameter {name!r} not given")
            if count is None:
                flat.append(v)
            else:
                v = tuple(v)
                if len(v) != count:
                    raise ValueError(f"kernel parameter {name}: {len(v)} values for {count} words")
                flat += v
        try:  # values as given (the common case: no conversion needed, one C call)
            return self._struct.pack(*flat)
        except (struct.error, TypeError):
            pass
        # Refused: normalize as Params did (u32 wrapped, int(), float()), then range errors are real.
        flat = [_CONVERT[kind](x) for kind, x in zip(self._kinds, flat)]
        try:
            return self._struct.pack(*flat)
        except struct.error as e:
            raise OverflowError(f"a kernel parameter does not fit in 32 bits: {e}") from None
