"""Property-based: whatever is in the files the doctor reads, and whatever shape an injected fact has,
the doctor reports and never raises. Its JSON still validates when the facts come from files."""
from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from doctor_helpers import CASES, case_overrides, case_root, validate_doctor
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rich.console import Console

from navitrain.doctor import collect, diagnose
from navitrain.doctor.collect import FACT_NAMES
from navitrain.doctor.report import document, render
from navitrain.doctor.tree import MAX_BYTES, Tree


def files_read(name: str) -> list[str]:
    """Every path the doctor tries to read for this fixture tree, traced through its Tree."""
    tree = Tree(case_root(name))
    collect(tree=tree, overrides=case_overrides(name), probe=False)
    return sorted(tree.reads)


READS = {name: files_read(name) for name in CASES}


def test_the_doctor_reads_the_files_that_matter():
    reads = READS["rx5700xt-override-mtype"]
    for path in ("/sys/class/drm/card0/device/vendor", "/sys/class/drm/card0/device/revision",
                 "/sys/class/kfd/kfd/topology/nodes/1/properties",
                 "/sys/class/kfd/kfd/topology/nodes/1/io_links/0/properties",
                 "/sys/module/amdgpu/parameters/mtype_local", "/etc/modprobe.d/amdgpu.conf", "/opt/rocm/.info/version",
                 "/proc/cpuinfo", "/proc/meminfo", "/etc/os-release", "/proc/sys/kernel/osrelease", "/proc/cmdline",
                 "/usr/share/vulkan/icd.d/radeon_icd.x86_64.json"):
        assert path in reads, path
    assert len(reads) >= 30


# The disk here is slow to create files on; a copy of a fixture tree in memory takes a tenth of the time.
SCRATCH = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None


def check_report(facts: dict, schema: bool, text: bool) -> None:
    findings = diagnose(facts)
    assert not [f for f in findings if f.id == "doctor-internal-error"], [f.why for f in findings]
    assert facts["problems"] == []
    doc = document(facts, findings)
    json.dumps(doc)
    if schema:
        validate_doctor(doc)
    if text:  # rich takes ~0.1 s a report: render a sample of the examples
        render(doc, Console(file=io.StringIO(), width=100, color_system=None))


CONTENT = st.one_of(
    st.binary(max_size=3000),
    st.text(max_size=400).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.sampled_from([b"", b"\x00" * 64, b"0x", b"-1\n", b"9" * 400 + b"\n", b"\xff\xfe\xfd", b"0x1002\n0x10de\n",
                     b"gfx_target_version\n", b"gfx_target_version -5\nflags x\n", b"flags 99999999999999999999\n",
                     b"options amdgpu\n", b"options amdgpu =1 mtype_local\n", b"{\"ICD\": 5}", b"[]", b"null",
                     b"PCI_ID=zz:zz\nPCI_SLOT_NAME=\n", b"MemTotal: lots kB\n", b"#define ROCM_VERSION_MAJOR\n"]),
)


def mutate(tree: Path, rel: str, data) -> None:
    path = tree / rel.lstrip("/")
    kind = data.draw(st.sampled_from(["content", "content", "content", "truncate", "delete", "dir", "loop", "huge"]))
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        original = path.read_bytes() if path.is_file() else b""
        path.unlink()
        if kind == "truncate":
            path.write_bytes(original[: data.draw(st.integers(0, max(0, len(original) - 1)))])
            return
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind in ("content", "truncate"):
        path.write_bytes(data.draw(CONTENT))
    elif kind == "dir":
        path.mkdir()
    elif kind == "loop":
        os.symlink(path.name, path)  # a link to itself: reading it fails with ELOOP
    elif kind == "huge":
        path.write_bytes(b"0x731f " * (MAX_BYTES // 7 + 10))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_any_file_content_never_breaks_the_doctor(data):
    name = data.draw(st.sampled_from(CASES))
    paths = data.draw(st.lists(st.sampled_from(READS[name]), min_size=1, max_size=4, unique=True))
    with tempfile.TemporaryDirectory(dir=SCRATCH) as tmp:
        tree = Path(tmp) / "root"
        shutil.copytree(case_root(name), tree, symlinks=True)
        for rel in paths:
            mutate(tree, rel, data)
        facts = collect(tree, case_overrides(name), probe=False)
        check_report(facts, schema=True, text=data.draw(st.integers(0, 3)) == 0)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=16,
)


def shaped_like(value) -> st.SearchStrategy:
    """Junk with the right outline: the real keys (and list shape) with values of any type."""
    if isinstance(value, dict) and value:
        return st.fixed_dictionaries({}, optional={k: st.one_of(JSON, shaped_like(v)) for k, v in value.items()})
    if isinstance(value, list) and value:
        return st.lists(st.one_of(JSON, shaped_like(value[0])), max_size=3)
    return JSON


REFERENCE = {name: collect(case_root(name), case_overrides(name)) for name in CASES}


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_any_injected_fact_never_breaks_the_doctor(data):
    name = data.draw(st.sampled_from(CASES))
    fact = data.draw(st.sampled_from(FACT_NAMES))
    junk = data.draw(st.one_of(JSON, shaped_like(REFERENCE[name].get(fact))))
    facts = collect(case_root(name), case_overrides(name) | {fact: junk})
    check_report(facts, schema=False, text=data.draw(st.integers(0, 2)) == 0)


@pytest.mark.parametrize("name", CASES)
def test_diagnose_survives_a_fact_set_that_is_not_a_dict(name):
    for junk in (None, [], "facts", 3):
        findings = diagnose(junk)
        assert findings and findings[0].route == "cpu"
        assert not [f for f in findings if f.id == "doctor-internal-error"]
