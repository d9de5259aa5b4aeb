"""`navitrain probe --image`: the catalogue inside containers, tested against a stand-in runtime
(fake_container_runtime.py: CI has no container daemon) for the command line, a real case run through
it, and every failure: missing runtime, socket permission, daemon down, missing image, a container that
cannot see the GPU, a crash (classified like one on the host) and a hang."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from navitrain.cli import app
from navitrain.probe import containers

FAKE = Path(__file__).with_name("fake_container_runtime.py")
runner = CliRunner()


@pytest.fixture
def fake_runtime(tmp_path) -> str:
    path = tmp_path / "docker"
    path.write_text(f"#!/bin/sh\nexec {sys.executable} {FAKE} \"$@\"\n")
    path.chmod(0o755)
    return str(path)


def test_command_line_passes_the_gpu_and_mounts_navitrain_read_only():
    args = containers.run_command("docker", "rocm/pytorch:tag", {"cases": ["x"]},
                                  {"HSA_OVERRIDE_GFX_VERSION": "10.3.0"})
    line = " ".join(args)
    for needed in ("--device=/dev/kfd", "--device=/dev/dri", "--group-add video", "--group-add render",
                   "--security-opt seccomp=unconfined", "--ipc=host", f"{containers.MOUNT}:ro",
                   "-e HSA_OVERRIDE_GFX_VERSION=10.3.0", "rocm/pytorch:tag python3 -m navitrain.probe.container_child"):
        assert needed in line, needed
    assert args.index("rocm/pytorch:tag") > args.index("--ipc=host")


def test_runtime_choice_and_a_missing_runtime():
    assert containers.find_runtime(which={"podman": "/usr/bin/podman"}.get) == "/usr/bin/podman"
    assert containers.find_runtime(which={"podman": "/p", "docker": "/d"}.get) == "/d"
    with pytest.raises(containers.ContainerError, match="Neither docker nor podman") as info:
        containers.find_runtime(which=lambda name: None)
    assert info.value.kind == "runtime-missing"
    with pytest.raises(containers.ContainerError, match="--runtime podman: no such executable"):
        containers.find_runtime("podman", which=lambda name: None)


def test_a_case_runs_inside_the_stand_in_with_the_image_in_each_result(fake_runtime):
    runs = containers.probe_images(["rocm/pytorch:6.2", "rocm/pytorch:missing"], ["copy-roundtrip"], ["cpu"],
                                   [{"NAVITRAIN_LOG": "warning"}], runtime=fake_runtime, timeout=60, host_has_gpu=False)
    ok, missing = runs
    assert [(r.case, r.route, r.outcome) for r in ok.results] == [("copy-roundtrip", "cpu", "pass")]
    assert ok.digest.startswith("sha256:") and ok.results[0].extra["image"] == "rocm/pytorch:6.2"
    assert ok.results[0].env == {"NAVITRAIN_LOG": "warning"} and ok.problem is None
    assert missing.problem_kind == "image-missing" and "docker pull rocm/pytorch:missing" in missing.problem
    records = containers.matrix_json(runs)
    assert {r["image"] for r in records} == {"rocm/pytorch:6.2", "rocm/pytorch:missing"}
    assert next(r for r in records if r["outcome"] == "pass")["digest"] == ok.digest


def test_a_crash_a_hang_and_a_blind_container_are_results(fake_runtime):
    crash, hang, blind = containers.probe_images(
        ["rocm/crash:1", "rocm/hang:1", "rocm/nogpu:1"], ["copy-roundtrip", "matmul-fp32"], ["native"], [{}],
        runtime=fake_runtime, timeout=0.5, startup_s=1.5, host_has_gpu=True)
    assert {r.outcome for r in crash.results} == {"crash"} and len(crash.results) == 2
    assert crash.results[0].mode == "gfx-override-fault" and "Memory access fault" in crash.results[0].detail
    assert {r.outcome for r in hang.results} == {"hang"} and "ran past" in hang.results[0].detail
    assert blind.problem_kind == "gpu-not-visible" and "cannot see the GPU" in blind.problem


@pytest.mark.parametrize("mode,kind,message", [
    ("permission", "socket-permission", "sudo usermod -aG docker"),
    ("daemon", "daemon-down", "Docker daemon is not running"),
])
def test_runtime_that_cannot_reach_its_daemon_stops_with_its_own_message(fake_runtime, monkeypatch, mode, kind,
                                                                         message):
    monkeypatch.setenv("FAKE_RUNTIME_MODE", mode)
    with pytest.raises(containers.ContainerError, match=message) as info:
        containers.probe_images(["rocm/pytorch:6.2"], ["copy-roundtrip"], ["cpu"], [{}], runtime=fake_runtime)
    assert info.value.kind == kind


def test_cli_json_matrix_and_clear_errors(fake_runtime, monkeypatch):
    result = runner.invoke(app, ["probe", "--image", "rocm/pytorch:missing", "--runtime", fake_runtime,
                                 "-k", "copy-roundtrip", "-r", "cpu", "--json"])
    assert result.exit_code == 1, result.output
    records = json.loads(result.stdout)
    assert records[0]["problem"] == "image-missing"
    result = runner.invoke(app, ["probe", "--image", "x", "--runtime", "/no/such/docker", "-r", "cpu"])
    assert result.exit_code == 2 and "no such executable" in result.output
    cases = Path(__file__).with_name("misbehaving_cases.py")
    result = runner.invoke(app, ["probe", "--image", "x", "--cases", str(cases), "-r", "cpu"])
    assert result.exit_code == 2 and "cannot be combined" in result.output
    monkeypatch.setenv("FAKE_RUNTIME_MODE", "daemon")
    result = runner.invoke(app, ["probe", "--image", "x", "--runtime", fake_runtime, "-r", "cpu",
                                 "-k", "copy-roundtrip"])
    assert result.exit_code == 1 and "daemon is not running" in result.output


def test_cli_stores_each_image_under_its_own_fingerprint(fake_runtime, monkeypatch, tmp_path):
    from navitrain.probe import store

    monkeypatch.setenv("NAVITRAIN_CACHE_DIR", str(tmp_path / "cache"))
    result = runner.invoke(app, ["probe", "--image", "rocm/pytorch:6.2", "--runtime", fake_runtime,
                                 "-k", "copy-roundtrip", "-r", "cpu", "--json"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)[0]
    assert (record["image"], record["outcome"]) == ("rocm/pytorch:6.2", "pass")
    fingerprint = containers.container_fingerprint("rocm/pytorch:6.2", record["digest"])
    assert store.fingerprint_facts(fingerprint)["container"] == \
        {"image": "rocm/pytorch:6.2", "digest": record["digest"]}
    assert [(r.case, r.outcome) for r in store.latest_results(fingerprint)] == [("copy-roundtrip", "pass")]
    other = containers.container_fingerprint("rocm/pytorch:5.7", record["digest"])
    assert other.id != fingerprint.id and store.latest_results(other) == []
