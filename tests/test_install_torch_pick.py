"""Which torch build scripts/setup.sh installs: scripts/pick_torch.sh on fake machines (a sysfs and
/opt/rocm tree under NAVITRAIN_SYSFS_ROOT), and setup.sh's torch step with a stand-in venv python that
records the pip commands instead of running them."""
import os
import stat
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
WHL = "https://download.pytorch.org/whl"


def _machine(root: Path, vendors=(), gfx_target_versions=(), rocm=None):
    for i, vendor in enumerate(vendors):
        (root / f"sys/class/drm/card{i}/device").mkdir(parents=True)
        (root / f"sys/class/drm/card{i}/device/vendor").write_text(vendor + "\n")
        (root / f"sys/class/drm/card{i}-DP-1").mkdir()  # a connector, not a card
    nodes = root / "sys/class/kfd/kfd/topology/nodes"
    for i, version in enumerate((0, *gfx_target_versions)):  # node 0: the CPU (gfx_target_version 0)
        (nodes / str(i)).mkdir(parents=True)
        (nodes / str(i) / "properties").write_text(f"cpu_cores_count {8 if i == 0 else 0}\n"
                                                   f"gfx_target_version {version}\nsimd_count 40\n")
    if rocm:
        (root / "opt/rocm/.info").mkdir(parents=True)
        (root / "opt/rocm/.info/version").write_text(rocm + "\n")
    return root


def _pick(root: Path) -> tuple[str, str]:
    done = subprocess.run(["bash", str(ROOT / "scripts/pick_torch.sh")], capture_output=True, text=True, timeout=30,
                          env={**os.environ, "NAVITRAIN_SYSFS_ROOT": str(root)})
    assert done.returncode == 0, done.stderr
    index, why = done.stdout.split("\n")[:2]
    return index, why


@pytest.mark.parametrize("machine,index,says", [
    (dict(), f"{WHL}/cpu", "no AMD or NVIDIA card"),
    (dict(vendors=["0x10de"]), "", "NVIDIA"),
    (dict(vendors=["0x1002", "0x10DE"], gfx_target_versions=[100100]), "", "NVIDIA"),
    (dict(vendors=["0x1002"], gfx_target_versions=[90010], rocm="6.4.1-120"), f"{WHL}/rocm6.4", "gfx90a"),
    (dict(vendors=["0x1002"], gfx_target_versions=[110000], rocm="7.0.2"), f"{WHL}/rocm7.0", "gfx1100"),
    (dict(vendors=["0x1002"], gfx_target_versions=[90010]), f"{WHL}/cpu", "no ROCm"),
    (dict(vendors=["0x1002"], gfx_target_versions=[100100], rocm="6.4.1"), f"{WHL}/cpu", "gfx1010"),
    (dict(vendors=["0x1002"], rocm="6.4.1"), f"{WHL}/cpu", "arch unknown"),
    (dict(vendors=["0x8086"]), f"{WHL}/cpu", "no AMD or NVIDIA card"),
])
def test_pick_torch_on_fake_machines(tmp_path, machine, index, says):
    got_index, why = _pick(_machine(tmp_path, **machine))
    assert got_index == index
    assert says in why


STUB = """#!/usr/bin/env bash
# records what setup.sh asks of the venv's python
echo "$*" >> "$STUB_LOG"
if [ "$1" = -c ] && [[ "$2" == "import torch" ]]; then exit 1; fi
if [ "$1" = -c ] && [[ "$2" == *urlopen* ]]; then exit "$STUB_INDEX_RC"; fi
if [ "$1 $2 $3" = "-m pip install" ]; then
  [[ "$*" == *--extra-index-url* ]] && exit "$STUB_EXTRA_PIP_RC"
  exit 0
fi
exit 0
"""


def _setup(tmp_path, index_rc=1, extra_pip_rc=0, **env):
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    python = venv / "bin" / "python"
    python.write_text(STUB)
    python.chmod(python.stat().st_mode | stat.S_IEXEC)
    (venv / ".navitrain-installed").touch()  # step 4 (navitrain itself) is not what is tested
    os.utime(venv / ".navitrain-installed", (4e9, 4e9))
    log = tmp_path / "calls.log"
    done = subprocess.run(["bash", str(ROOT / "scripts/setup.sh")], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "VENV": str(venv), "STUB_LOG": str(log), "STUB_INDEX_RC": str(index_rc),
                               "STUB_EXTRA_PIP_RC": str(extra_pip_rc),
                               "NAVITRAIN_SYSFS_ROOT": str(_machine(tmp_path / "machine")), **env})
    assert done.returncode == 0, done.stdout + done.stderr
    pips = [line for line in log.read_text().splitlines() if line.startswith("-m pip install")]
    return done.stdout, pips


def test_setup_falls_back_quickly_to_the_configured_index_and_says_why(tmp_path):
    out, pips = _setup(tmp_path, index_rc=1)
    assert pips == ["-m pip install -q torch==2.13.0"]
    assert "from the configured index: no AMD or NVIDIA card found" in out
    assert f"{WHL}/cpu does not answer" in out


def test_setup_uses_the_picked_index_where_it_answers(tmp_path):
    out, pips = _setup(tmp_path, index_rc=0)
    assert pips == [f"-m pip install -q --extra-index-url {WHL}/cpu torch==2.13.0"]
    assert f"installing torch==2.13.0 from {WHL}/cpu: no AMD or NVIDIA card found" in out


def test_setup_falls_back_when_the_picked_index_lacks_the_version(tmp_path):
    out, pips = _setup(tmp_path, index_rc=0, extra_pip_rc=1, TORCH_SPEC="torch==2.12.1")
    assert pips == [f"-m pip install -q --extra-index-url {WHL}/cpu torch==2.12.1", "-m pip install -q torch==2.12.1"]
    assert "lacks torch==2.12.1" in out


def test_torch_index_overrides_the_pick(tmp_path):
    out, pips = _setup(tmp_path, index_rc=0, TORCH_INDEX=f"{WHL}/rocm6.4")
    assert pips == [f"-m pip install -q --extra-index-url {WHL}/rocm6.4 torch==2.13.0"]
    assert "TORCH_INDEX" in out
