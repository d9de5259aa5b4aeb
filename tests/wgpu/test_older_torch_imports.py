"""navitrain.wgpu must import on PyTorch releases older than the one CI runs (the device machine has 2.11):
handlers for ops that a release lacks are skipped, not fatal. The checks block a newer module or a handler family
in a fresh interpreter, as an older PyTorch would lack it, and import the whole device; on CI's PyTorch no family
may be skipped."""
from __future__ import annotations

import subprocess
import sys

import pytest

# modules that some supported PyTorch releases do not have, and what navitrain imports from them
NEWER_MODULES = ["torch.nn.modules.linear_cross_entropy"]


@pytest.mark.parametrize("module", NEWER_MODULES)
def test_device_imports_without(module):
    code = (f"import sys; sys.modules[{module!r}] = None\n"
            "import navitrain.wgpu, torch\n"
            "x = torch.arange(6.0).to('wgpu')\n"
            "print((x * 2).sum().item())\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().endswith("30.0")


def test_every_handler_family_imports_on_this_pytorch():
    """On CI's PyTorch nothing may be left out: a family skipped here is a bug, not an older release."""
    from navitrain.wgpu import ops

    assert ops.SKIPPED == {}
    assert len(ops.FAMILIES) == len(set(ops.FAMILIES)) > 50


def test_a_family_this_pytorch_cannot_load_is_left_out_with_a_warning_not_a_failed_import():
    code = ("import sys, warnings, importlib.abc\n"
            "class Refuse(importlib.abc.MetaPathFinder):\n"
            "    def find_spec(self, name, path, target=None):\n"
            "        if name == 'navitrain.wgpu.ops.grouped_mm':\n"
            "            raise AttributeError(\"'_OpNamespace' 'aten' object has no attribute '_grouped_mm'\")\n"
            "sys.meta_path.insert(0, Refuse())\n"
            "with warnings.catch_warnings(record=True) as seen:\n"
            "    warnings.simplefilter('always')\n"
            "    import navitrain.wgpu, torch\n"
            "from navitrain.wgpu import ops\n"
            "print(sorted(ops.SKIPPED))\n"
            "print(any('grouped_mm handlers are off' in str(w.message) for w in seen))\n"
            "print((torch.arange(6.0).to('wgpu') * 2).sum().item())\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split("\n")[:3] == ["['grouped_mm']", "True", "30.0"]
