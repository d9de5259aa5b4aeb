"""navitrain.wgpu must import on PyTorch releases older than the one CI runs (the device machine has 2.11):
handlers for ops that a release lacks are skipped, not fatal. Each check blocks the newer module in a fresh
interpreter, as an older PyTorch would lack it, and imports the whole device."""
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
