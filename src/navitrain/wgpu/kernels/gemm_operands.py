"""The parts a GEMM kernel is generated from (gemm_source.py): the parameter fields every GEMM kernel
starts with, `Operand`s that say how to fetch element (row, k) of A or B, and the `Epilogue` that says
where C[row, col] goes and what is added to it.

Parameters are named (codegen.ParamBlock): a kernel's block is GEMM_FIELDS followed by the fields of
its operands and epilogue, e.g. `operand_fields("a")` for a strided matrix. Operands and epilogues are
given that block and read their fields with `params.ref(name)`.

A `Tail` is a pointwise chain of a compiled graph (fusion_gemm.py) run on each product value before it
is stored: `gelu(x @ w.t() + b)`, `residual + x @ w.t()`, `gelu_backward(dy @ w, h)`. The value then never
goes to memory and back.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from navitrain.wgpu.kernels import codegen, wgsl_math

# Every GEMM kernel's first fields: the product's size, C = alpha * A @ B + beta * Cin, and the length of
# a split-K slice. "reserved" (words 6 and 7, never read) keeps operand fields where the kernels read
# them before the parameters had names, so this refactor leaves the generated WGSL byte for byte as it was.
GEMM_FIELDS = ("M", "N", "K", "alpha: f32", "beta: f32", "kslice", "reserved[2]")
GEMM_DEFAULTS = {"alpha": 1.0, "beta": 0.0, "kslice": 0, "reserved": (0, 0)}


def operand_fields(name: str) -> tuple[str, ...]:
    """A strided operand's fields: element (row, k) of batch b at off + b*sbatch + row*srow + k*sk."""
    return (f"{name}_off", f"{name}_srow", f"{name}_sk", f"{name}_sbatch")


def output_fields(name: str) -> tuple[str, ...]:
    """A strided result's (or added matrix's) fields: element (row, col) of batch b at
    off + b*sbatch + row*srow + col*scol."""
    return (f"{name}_off", f"{name}_srow", f"{name}_scol", f"{name}_sbatch")


class Operand:
    """How to fetch element (row, k) of an operand. `binding` is its buffer's name in WGSL (b1, b2)."""

    fastest = "k"    # "k": consecutive threads walk k; "row": they walk rows
    key: tuple = ()

    def setup(self, p: str) -> list[str]:
        return []

    def hoist(self, p: str, e: int, row: str) -> list[str]:
        return []

    def advance(self, p: str, e: int) -> list[str]:
        """Statements run after each load of slot e: the K index moves on by BK. Operands that keep
        a decomposed K index (c, kh, kw) in variables update it here with adds and carries."""
        return []

    def load(self, p: str, e: int, row: str, k: str) -> tuple:
        """(condition, f32 value expression[, statements computing what both use]) for slot e and the
        K index `k`; the value is only read when the condition holds."""
        raise NotImplementedError


@dataclass(frozen=True)
class Strided(Operand):
    """A plain matrix: element (row, k) at off + batch*sbatch + row*srow + k*sk, read from the fields
    `operand_fields(fields)` of `params`. With `vec_binding` (the same heap bound as array<vec4<f32>>),
    each load slot fetches four consecutive elements along the contiguous dimension in one 16-byte
    load; the caller guarantees the alignment (offsets and strides multiples of 4, no partial tiles)."""
    params: codegen.ParamBlock
    fields: str
    binding: str
    wgsl: str
    fastest: str = "k"
    vec_binding: str | None = None

    @property
    def vec(self) -> int:
        return 4 if self.vec_binding else 1

    @property
    def key(self):
        return ("strided", self.params, self.fields, self.binding, self.wgsl, self.fastest, self.vec_binding)

    def load_vec(self, p, e, row, k):
        if self.fastest == "k":    # four consecutive k of one row
            return f"{self.vec_binding}[({p}_r{e} + {k}) >> 2u]"
        return f"{self.vec_binding}[({p}_r{e} + ({k}) * {p}_sk) >> 2u]"  # four consecutive rows

    def setup(self, p):
        off, srow, sk, sbatch = (self.params.ref(f) for f in operand_fields(self.fields))
        return [f"let {p}_base = {off} + bz * {sbatch}; let {p}_sr = {srow}; let {p}_sk = {sk};"]

    def hoist(self, p, e, row):
        return [f"let {p}_r{e} = {p}_base + ({row}) * {p}_sr;"]

    def load(self, p, e, row, k):
        return f"({row}) < {p}_rows && ({k}) < K", f"f32({self.binding}[{p}_r{e} + ({k}) * {p}_sk])"


# A tail kernel's result may take its batch as two dimensions (heads inside sequences: `attn @ v` stored
# as [batch, tokens, heads, features] for the head merge, not as [batch * heads, tokens, features]):
# batch b is at (b / batch_lo) * sbatch + (b % batch_lo) * sbatch_lo. (batch_lo 1: one batch stride.)
TAIL_BATCH_FIELDS = ("c_batch_lo", "c_sbatch_lo")


def tail_fields(k: int) -> tuple[str, ...]:
    """Fields of a tail's k-th input: element (row, col) of batch b at off + b*sbatch + row*srow + col*scol
    (zero strides broadcast it: a bias over columns, a mask shared by every batch)."""
    return output_fields(f"t{k}")


@dataclass(frozen=True)
class Tail:
    """A pointwise chain applied to each product value before it is stored: WGSL `prelude` (`let`
    lines) and `expr` over `product` (the value alpha * A @ B + beta * Cin + bias, rounded to
    `product_dtype` as the unfused product would be stored) and `inputs` (the names of other tensors
    the chain reads, each at the element being stored, loaded as `load_types`: "f32" or "bool")."""
    product: str
    inputs: tuple[str, ...]
    load_types: tuple[str, ...]
    prelude: str
    expr: str
    product_dtype: torch.dtype = torch.float32
    # The product is stored too (a second output, read through output_fields("kept")): the chain's input
    # is also kept for later (GELU's input, which its backward reads).
    keep_product: bool = False


@dataclass
class Epilogue:
    """Where C[row, col] goes. This base class: a strided matrix, `output_fields(out)` of `params`;
    subclasses write images and weights (the convolution package)."""
    params: codegen.ParamBlock
    out_wgsl: str
    store: object                 # callable: f32 expression -> stored expression
    out: str = "c"                # the result's fields, output_fields(out)
    cin: str | None = None        # WGSL type of a Cin operand (beta * Cin[row, col]) bound as b3,
                                  # read through output_fields("cin")
    bias: str | None = None       # "row" or "col": a 1-D bias added per row / per column, bound as b3;
                                  # the subclass's setup() defines where it starts (bias_base)
    relu: bool = False
    extra_key: tuple = field(default_factory=tuple)
    out_binding: str = "b0"
    bindings: str = ""            # the WGSL binding declarations of the whole kernel
    batch_var: str = "bz"         # "wid.z" for split-K partials: one output slab per (batch, slice)
    # The output heap bound a second time as array<vec4<f32>> under this name: four neighbouring columns
    # are then written with one 16-byte store. The caller guarantees that four columns starting at a
    # multiple of 4 are contiguous and 16-byte aligned, and that N is a multiple of 4.
    vec_out: str | None = None
    # A pointwise chain run on each value before it is stored (plain products only, not split-K partials):
    # `tail_loads` reads each of its inputs, WGSL with "{i}" where the element index goes (their bindings
    # and storage types worked in), `tail_round` rounds the product ("{v}": its value) to its dtype.
    tail: Tail | None = None
    tail_loads: tuple[str, ...] = ()
    tail_round: str = "{v}"
    tail_keep: str = ""           # with keep_product: WGSL storing the rounded product "{v}" at index "{i}"

    @property
    def key(self):
        return ("plain", self.params, self.out, self.out_wgsl, self.cin, self.bias, self.relu, self.extra_key,
                self.batch_var, self.vec_out, self.tail, self.tail_loads, self.tail_round, self.tail_keep)

    def helpers(self) -> str:
        """WGSL functions the stores call: the tail as `gemm_tail(value, row, col, batch)`, with the math
        helpers its templates may use."""
        tail = self.tail
        if tail is None:
            return ""
        def index(fields) -> str:
            off, srow, scol, sbatch = (self.params.ref(f) for f in fields)
            return f"{off} + bz * {sbatch} + gm * {srow} + gn * {scol}"

        lines = [f"  let {tail.product} = {self.tail_round.replace('{v}', 'v')};"]
        if tail.keep_product:
            store = self.tail_keep.replace("{i}", index(output_fields("kept")))
            lines.append("  " + store.replace("{v}", tail.product))
        for k, (name, load) in enumerate(zip(tail.inputs, self.tail_loads)):
            lines.append(f"  let {name} = {load.replace('{i}', index(tail_fields(k)))};")
        if tail.prelude:
            lines.append(tail.prelude)
        body = "\n".join(lines)
        return (wgsl_math.helpers(False) + "fn gemm_tail(v: f32, gm: u32, gn: u32, bz: u32) -> f32 {\n"
                f"{body}\n  return {tail.expr};\n}}\n")

    def setup(self) -> list[str]:
        off, srow, scol, sbatch = (self.params.ref(f) for f in output_fields(self.out))
        batch = f"{self.batch_var} * {sbatch}"
        if self.tail is not None:   # the batch as (outer, inner) pairs, TAIL_BATCH_FIELDS: see Tail
            lo, slo = (self.params.ref(f) for f in TAIL_BATCH_FIELDS)
            batch = f"({self.batch_var} / {lo}) * {sbatch} + ({self.batch_var} % {lo}) * {slo}"
        lines = [f"let c_base = {off} + {batch}; let scm = {srow}; let scn = {scol};"]
        if self.cin is not None:
            off, srow, scol, sbatch = (self.params.ref(f) for f in output_fields("cin"))
            lines.append(f"let i_base = {off} + bz * {sbatch}; let sim = {srow}; let sin = {scol};")
        return lines

    def row_setup(self, gm: str) -> list[str]:
        return [f"let c_row = c_base + ({gm}) * scm;"]

    def col_setup(self, gn: str, tag: str) -> list[str]:
        return []

    def address(self, gm: str, gn: str, tag: str) -> str:
        return f"c_row + ({gn}) * scn"

    def value(self, acc: str, gm: str, gn: str) -> str:
        v = f"{self.params.ref('alpha')} * {acc}"
        if self.cin is not None:
            v = f"{v} + {self.params.ref('beta')} * f32(b3[i_base + ({gm}) * sim + ({gn}) * sin])"
        if self.bias == "row":
            v = f"{v} + f32(b3[bias_base + ({gm})])"
        elif self.bias == "col":
            v = f"{v} + f32(b3[bias_base + ({gn})])"
        if self.relu:
            v = f"relu_nan({v})"  # WGSL's max may turn NaN into 0
        if self.tail is not None:
            v = f"gemm_tail({v}, {gm}, {gn}, {self.batch_var})"
        return v


class Store:
    """Converts the f32 result to C's storage type (callable, with the WGSL element type attached)."""

    def __init__(self, st):
        self.st = st
        self.wgsl = st.wgsl

    def __call__(self, expr: str) -> str:
        return self.st.store(expr)
