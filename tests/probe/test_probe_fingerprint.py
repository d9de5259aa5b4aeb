"""The stack fingerprint: fast, stable, facts from children, and a crashing child is a fact, not a crash."""
import json
import subprocess
import sys
import time

import torch

import navitrain
from navitrain.probe import fingerprint


def test_fingerprint_is_fast_stable_and_has_the_facts():
    started = time.monotonic()
    first = fingerprint.compute()
    elapsed = time.monotonic() - started
    second = fingerprint.compute()
    assert first.id == second.id and len(first.id) == 16
    facts = first.facts
    assert facts["torch"]["version"] == torch.__version__  # asked in a child, same interpreter
    assert facts["torch"]["cuda"] == torch.version.cuda
    assert facts["navitrain"] == navitrain.__version__
    for key in ("gpus", "kernel", "amdgpu", "nvidia", "rocm", "wgpu"):
        assert key in facts
    assert "adapter" in facts["wgpu"] or "error" in facts["wgpu"]
    assert str(first) == first.id and "torch" in first.summary()
    assert elapsed < 15  # ~2.5 s here; generous for a loaded CI machine


def test_parent_does_not_import_torch_to_fingerprint():
    code = ("import sys; from navitrain.probe import fingerprint; fp = fingerprint.compute();"
            "print('torch' in sys.modules, fp.facts['torch'].get('version'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120).stdout.split()
    assert out == ["False", torch.__version__]


def test_a_crashing_torch_child_becomes_a_fact(monkeypatch):
    real_start = fingerprint._start_child

    def start(what, out):
        if what != "torch":
            return real_start(what, out)
        return subprocess.Popen([sys.executable, "-c", "import ctypes, sys; print('loading libamdhip64', "
                                 "file=sys.stderr); ctypes.string_at(0)"], stderr=subprocess.PIPE,
                                stdout=subprocess.DEVNULL, start_new_session=True)

    monkeypatch.setattr(fingerprint, "_start_child", start)
    fp = fingerprint.compute()
    assert fp.facts["torch"]["error"].startswith("crashed (killed by SIGSEGV)")
    assert json.dumps(fp.facts)  # still plain data


def test_a_hanging_child_is_cut_off(monkeypatch):
    real_start = fingerprint._start_child

    def start(what, out):
        if what != "wgpu":
            return real_start(what, out)
        return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], stderr=subprocess.PIPE,
                                stdout=subprocess.DEVNULL, start_new_session=True)

    monkeypatch.setattr(fingerprint, "_start_child", start)
    started = time.monotonic()
    fp = fingerprint.compute(timeout=5)
    assert time.monotonic() - started < 20
    assert fp.facts["wgpu"] == {"error": "hung for 5 s"}
