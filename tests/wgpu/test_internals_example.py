"""docs/wgpu-internals.md holds: its custom-kernel example runs on the adapter and agrees with the CPU,
every module path it names exists, and the layer picture it draws is the one the imports make.

The example is not copied here: it is read out of the document (the ```python block after the
`tested by tests/wgpu/test_internals_example.py` marker) and executed, so the two cannot drift apart."""
from __future__ import annotations

import ast
import pathlib
import re

import pytest
import torch

ROOT = pathlib.Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "wgpu-internals.md"
PACKAGE = ROOT / "src" / "navitrain"
MARKER = "tested by tests/wgpu/test_internals_example.py"


def _example_namespace() -> dict:
    text = DOC.read_text()
    assert MARKER in text, f"{DOC.name} lost the marker of its tested example"
    block = re.search(r"```python\n(.*?)```", text[text.index(MARKER):], re.S)
    assert block, "no ```python block after the marker"
    namespace: dict = {}
    exec(compile(block.group(1), f"{DOC.name} (custom kernel example)", "exec"), namespace)
    return namespace


def _special_and_random(n: int, dtype: torch.dtype) -> torch.Tensor:
    """n fresh random values of every sign and magnitude, with NaN, +-inf, +-0 and the dtype's extremes."""
    info = torch.finfo(dtype)
    edges = torch.tensor([float("nan"), float("inf"), -float("inf"), 0.0, -0.0, info.max, -info.max, info.tiny,
                          -info.tiny, 1.0, -1.0], dtype=torch.float64)
    scale = torch.exp(torch.empty(n, dtype=torch.float64).uniform_(-8, 8))
    values = torch.randn(n, dtype=torch.float64) * scale
    values[torch.randperm(n)[: len(edges)]] = edges
    return values.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_custom_kernel_example_matches_the_cpu(dtype):
    scaled = _example_namespace()["scaled"]
    base = _special_and_random(3001, dtype)
    factor = float(torch.empty(()).uniform_(-3, 3))
    # A view with a storage offset and a stride of 2: the kernel must read through both.
    x = base.to("wgpu")[5::2]
    got = scaled(x, factor)
    assert got.device.type == "wgpu" and got.dtype == dtype and got.is_contiguous()
    # The CPU computes a float16/bfloat16 product with a Python float in float32 and rounds once, as the
    # kernel does; so every dtype is compared exactly, NaN in the same places.
    torch.testing.assert_close(got.cpu(), base[5::2] * factor, rtol=0, atol=0, equal_nan=True)
    # Overflow to inf and inf * 0 = NaN come out as on the CPU.
    big = torch.tensor([float(torch.finfo(dtype).max), float("inf"), -float("inf"), 1.0], dtype=dtype)
    torch.testing.assert_close(scaled(big.to("wgpu"), 0.0).cpu(), big * 0.0, rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(scaled(big.to("wgpu"), 4.0).cpu(), big * 4.0, rtol=0, atol=0, equal_nan=True)


def test_custom_kernel_example_on_empty_and_broadcast_inputs():
    scaled = _example_namespace()["scaled"]
    assert scaled(torch.empty(0).to("wgpu"), 2.0).cpu().shape == (0,)
    # A stride-0 view (expand) reads one element for every output.
    one = torch.tensor([-1.5]).to("wgpu").expand(7)
    torch.testing.assert_close(scaled(one, 3.0).cpu(), torch.full((7,), -4.5), rtol=0, atol=0)


# `kernels/rows.py`, `ops/`, `src/navitrain/select.py`: module paths in backticks. Paths are written
# relative to the repository, to src/navitrain/wgpu/ (the tables) or to src/navitrain/ (routes/, ...).
_PATH = re.compile(r"`([\w./-]+(?:\.py|/))`")
_BASES = (ROOT, PACKAGE / "wgpu", PACKAGE)


def test_every_module_path_the_doc_names_exists():
    named = set(_PATH.findall(DOC.read_text()))
    assert len(named) > 100, "the module table went missing"
    missing = sorted(p for p in named if not any((base / p).exists() for base in _BASES))
    assert not missing, f"{DOC.name} names paths that do not exist: {missing}"


def _navitrain_imports(path: pathlib.Path) -> set[str]:
    """Modules of navitrain that `path` imports anywhere (inside functions too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
    return {m for m in found if m.startswith("navitrain.")}


# The plumbing the doc's layer picture draws below the engines (compile.py, an entry point beside the
# facade, is not among them: it runs whole graphs).
PLUMBING = ("dispatch", "factories", "serialization", "distributed", "tensor", "dims", "device", "graphs",
            "profiling", "runtime", "allocator", "dtypes", "process_device", "rng", "promotion", "kernel_limits",
            "limits_profile", "autocast", "compile_compat", "traffic", "device_setup", "kernel_cache",
            "param_arena", "graph_replay", "transfers", "gpu_timer", "errors", "op_plans")


def test_plumbing_sits_below_engines_and_handlers():
    """The plumbing modules import neither engines (kernels/) nor handlers (ops/). tests/test_architecture.py
    checks the layers above them; a plumbing module reaching up would not always close a cycle."""
    text = DOC.read_text()
    upward = {}
    for name in PLUMBING:
        assert f"`{name}.py`" in text, f"{DOC.name} does not describe {name}.py"
        reached = sorted(m for m in _navitrain_imports(PACKAGE / "wgpu" / f"{name}.py")
                         if m.startswith(("navitrain.wgpu.kernels", "navitrain.wgpu.ops")))
        if reached:
            upward[name] = reached
    assert not upward, f"plumbing modules importing engines or handlers: {upward}"
