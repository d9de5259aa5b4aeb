"""Child-process probes: a broken torch or Vulkan driver (crash, hang, exception) is a fact, never the
end of the doctor; the real probes agree with what this process sees."""
from __future__ import annotations

import os
import textwrap
import time

import pytest

from navitrain.doctor import probes
from navitrain.doctor.child import MARKER, run_python

# A stand-in torch with just the attributes the probe reads; BEHAVIOUR decides how it breaks.
FAKE_TORCH = """
import os, sys, time, types
BEHAVIOUR = {behaviour!r}
if BEHAVIOUR == "abort-on-import":
    sys.stderr.write("Memory access fault by GPU node-1 (Agent handle: 0x55d1) on address 0x7f00. "
                     "Reason: Page not present\\n")
    sys.stderr.flush()
    os.abort()
if BEHAVIOUR == "raise-on-import":
    raise RuntimeError("hipErrorNoBinaryForGpu: Unable to find code object for all current devices!")
if BEHAVIOUR == "hang-on-import":
    time.sleep(60)
if BEHAVIOUR == "missing":
    raise ModuleNotFoundError("No module named 'torch'", name="torch")
__version__ = "2.11.0+rocm6.4"
__file__ = __file__
version = types.SimpleNamespace(hip="6.4.43482", cuda=None)
def _device_count():
    if BEHAVIOUR == "abort-on-devices":
        sys.stderr.write("HSA_STATUS_ERROR_MEMORY_APERTURE_VIOLATION: The agent attempted to access memory "
                         "beyond the largest legal address. code: 0x29\\n")
        sys.stderr.flush()
        os.abort()
    return 1
class _Props:
    name = "AMD Radeon RX 5700 XT"
    gcnArchName = "gfx1010:xnack-"
    total_memory = 8 << 30
cuda = types.SimpleNamespace(get_arch_list=lambda: ["gfx1010", "gfx1030"], device_count=_device_count,
                             get_device_properties=lambda i: _Props(), get_device_capability=lambda i: (10, 1))
backends = types.SimpleNamespace(
    cudnn=types.SimpleNamespace(enabled=True, is_available=lambda: True, version=lambda: 3004000))
"""


def fake_torch_env(tmp_path, behaviour: str) -> dict[str, str]:
    package = tmp_path / behaviour / "torch"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(FAKE_TORCH.format(behaviour=behaviour))
    env = dict(os.environ)
    env["PYTHONPATH"] = str(tmp_path / behaviour)
    return env


def test_torch_that_works_reports_everything(tmp_path):
    result = probes.probe_torch(timeout=30, env=fake_torch_env(tmp_path, "works"))
    assert result["status"] == "ok" and result["stage"] == "devices"
    assert (result["version"], result["build"], result["hip"]) == ("2.11.0+rocm6.4", "rocm", "6.4.43482")
    assert result["arch_list"] == ["gfx1010", "gfx1030"]
    assert result["devices"] == [{"index": 0, "name": "AMD Radeon RX 5700 XT", "arch": "gfx1010:xnack-",
                                  "total_memory": 8 << 30, "capability": [10, 1]}]


def test_torch_aborting_on_import_is_a_gpu_fault_row(tmp_path):
    result = probes.probe_torch(timeout=30, env=fake_torch_env(tmp_path, "abort-on-import"))
    assert result["status"] == "crashed" and result["returncode"] == -6
    assert "SIGABRT" in result["error"] and result["gpu_fault"] is True
    assert "gfx-override-fault" in result["stderr_modes"]


def test_torch_raising_on_import_is_classified(tmp_path):
    result = probes.probe_torch(timeout=30, env=fake_torch_env(tmp_path, "raise-on-import"))
    assert result["status"] == "crashed" and result["returncode"] == 1
    assert result["stderr_modes"] == ["no-code-object"] and result["gpu_fault"] is False


def test_torch_crashing_while_listing_devices_keeps_the_static_facts(tmp_path):
    result = probes.probe_torch(timeout=30, env=fake_torch_env(tmp_path, "abort-on-devices"))
    assert result["status"] == "crashed"
    assert result["version"] == "2.11.0+rocm6.4" and result["stage"] == "static"
    assert result["gpu_fault"] is True


def test_torch_hanging_on_import_times_out(tmp_path):
    start = time.monotonic()
    result = probes.probe_torch(timeout=2, env=fake_torch_env(tmp_path, "hang-on-import"))
    assert result["status"] == "timeout" and "2 s" in result["error"]
    assert time.monotonic() - start < 15


def test_missing_torch(tmp_path):
    result = probes.probe_torch(timeout=30, env=fake_torch_env(tmp_path, "missing"))
    assert result["status"] == "missing"


def test_timeout_kills_the_whole_process_group():
    code = textwrap.dedent(f"""
        import subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        print({MARKER!r} + '{{"grandchild": %d}}' % child.pid, flush=True)
        time.sleep(60)
    """)
    result = run_python(code, timeout=2)
    assert result.status == "timeout" and result.partial
    pid = result.data["grandchild"]
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as handle:
                state = handle.read().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            break
        if state == "Z":
            break
        time.sleep(0.05)
    else:
        pytest.fail(f"grandchild {pid} survived the timeout")


def test_child_without_result_is_a_crash():
    result = run_python("print('hello')", timeout=30)
    assert result.status == "crashed" and result.data is None and "no result" in result.error


def test_rocminfo_missing_on_a_tree_without_rocm(tmp_path):
    assert probes.probe_rocminfo(probes.Tree(tmp_path))["status"] == "missing"


def test_rocminfo_output_is_parsed_from_the_tree(tmp_path):
    exe = tmp_path / "opt/rocm/bin/rocminfo"
    exe.parent.mkdir(parents=True)
    exe.write_text("#!/bin/sh\necho 'ROCk module is loaded'\necho 'Agent 1'\necho '  Name:   gfx1010'\n"
                   "echo '  Marketing Name:  AMD Radeon RX 5700 XT'\necho '  Device Type: GPU'\n")
    exe.chmod(0o755)
    result = probes.probe_rocminfo(probes.Tree(tmp_path), timeout=10)
    assert result["status"] == "ok" and result["kfd_loaded"] is True
    assert result["agents"][0]["name"] == "gfx1010" and result["agents"][0]["device_type"] == "GPU"
