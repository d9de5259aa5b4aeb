"""doctor's findings on docker/podman for `navitrain probe --image` (AMD machines only): none installed,
the Docker daemon down, no permission on its socket; and the facts they come from."""
from __future__ import annotations

import pytest
from doctor_helpers import case_overrides, case_root

from navitrain.doctor import collect, diagnose


@pytest.fixture(scope="module")
def rx5600xt_facts():
    return collect(case_root("rx5600xt-rocm7-cputorch"), case_overrides("rx5600xt-rocm7-cputorch"))


@pytest.mark.parametrize("containers,expected", [
    ({"runtimes": [], "docker_socket": None, "docker_socket_accessible": None}, ("container-runtime-missing", "info")),
    ({"runtimes": [{"name": "docker", "path": "/usr/bin/docker"}], "docker_socket": None,
      "docker_socket_accessible": None}, ("docker-daemon-down", "info")),
    ({"runtimes": [{"name": "docker", "path": "/usr/bin/docker"}], "docker_socket": "/var/run/docker.sock",
      "docker_socket_accessible": False}, ("docker-socket-permission", "warning")),
    ({"runtimes": [{"name": "docker", "path": "/usr/bin/docker"}], "docker_socket": "/var/run/docker.sock",
      "docker_socket_accessible": True}, None),
    ({"runtimes": [{"name": "podman", "path": "/usr/bin/podman"}], "docker_socket": None,
      "docker_socket_accessible": None}, None),
])
def test_container_runtime_findings(rx5600xt_facts, containers, expected):
    facts = {**rx5600xt_facts, "containers": containers}
    found = [(f.id, f.severity) for f in diagnose(facts)
             if f.id.startswith(("container-", "docker-"))]
    assert found == ([expected] if expected else [])


def test_container_facts_come_from_the_tree(tmp_path):
    from navitrain.doctor.facts import get_containers

    (tmp_path / "usr" / "bin").mkdir(parents=True)
    (tmp_path / "usr" / "bin" / "podman").write_text("")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "docker.sock").write_text("")
    facts = get_containers(tmp_path)
    assert facts == {"runtimes": [{"name": "podman", "path": "/usr/bin/podman"}], "docker_socket": "/run/docker.sock",
                     "docker_socket_accessible": None}  # a tree, not this machine: access is not examined
