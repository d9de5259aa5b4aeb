"""`navitrain probe --image IMAGE ...`: the probe catalogue inside ROCm containers, side by side.

Users try rocm/pytorch images one by one by hand; this runs the same cases in each image (and under
each --env / --env-matrix environment) with docker or podman, and reports images x routes x env with
the failure mode of every failed cell. The image brings Python and torch; navitrain's source is mounted
read-only and nothing is downloaded inside. Pulling an image is the user's business.

The container gets the GPU the way ROCm containers need it: /dev/kfd and /dev/dri, the video and render
groups, seccomp unconfined (ROCm's runtime uses syscalls the default profile blocks) and the host IPC
namespace (PyTorch's shared-memory tensors). This file only builds that command line and reads the
runtime's answers; the runtime itself is tested through a stand-in (tests/probe/fake_container_runtime.py),
as CI has no container daemon.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from navitrain._child import package_parent
from navitrain.probe.results import CRASH, HANG, ProbeResult

RUNTIMES = ("docker", "podman")
MOUNT = "/opt/navitrain-src"  # where navitrain's source appears inside the container (read-only)
GPU_ARGS = ("--device=/dev/kfd", "--device=/dev/dri", "--group-add", "video", "--group-add", "render",
            "--security-opt", "seccomp=unconfined", "--ipc=host")


class ContainerError(RuntimeError):
    """The runtime cannot run the image at all; `kind` says which of the known cases it is."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


# What docker and podman print, and what to tell the user (kind, pattern, message).
_RUNTIME_FAILURES = (
    ("socket-permission", re.compile(r"permission denied.*docker\.sock|docker\.sock.*permission denied", re.I | re.S),
     "{runtime} cannot reach its daemon: permission denied on the Docker socket. Add yourself to the docker "
     "group (`sudo usermod -aG docker $USER`, then log in again) or use `--runtime podman` (rootless)."),
    ("daemon-down", re.compile(r"cannot connect to the docker daemon|is the docker daemon running", re.I),
     "The Docker daemon is not running: `sudo systemctl start docker` (or use `--runtime podman`)."),
    ("image-missing", re.compile(r"no such image|unable to find image|image not known|manifest unknown", re.I),
     "The image {image} is not on this machine. navitrain does not pull images: `{runtime} pull {image}`, "
     "then run the probe again."),
)


def classify_runtime_failure(text: str, runtime: str, image: str) -> ContainerError | None:
    for kind, pattern, message in _RUNTIME_FAILURES:
        if pattern.search(text):
            return ContainerError(kind, message.format(runtime=Path(runtime).name, image=image))
    return None


def find_runtime(choice: str | None = None, which=shutil.which) -> str:
    """The runtime's executable: --runtime's (a name or a path), else docker, else podman."""
    names = [choice] if choice else list(RUNTIMES)
    for name in names:
        path = which(name)
        if path:
            return path
    if choice:
        raise ContainerError("runtime-missing", f"--runtime {choice}: no such executable on PATH")
    raise ContainerError("runtime-missing", "Neither docker nor podman is installed: install one "
                         "(Debian/Ubuntu: `sudo apt-get install podman`) to probe ROCm images.")


def image_digest(runtime: str, image: str, timeout: float = 60) -> str:
    """The image's id (sha256:...), or ContainerError naming why the runtime cannot give it."""
    proc = subprocess.run([runtime, "image", "inspect", "--format", "{{.Id}}", image],
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode == 0 and proc.stdout.strip():
        return proc.stdout.strip().splitlines()[0]
    text = proc.stderr + proc.stdout
    raise classify_runtime_failure(text, runtime, image) or ContainerError(
        "runtime-error",
        f"`{Path(runtime).name} image inspect {image}` failed ({proc.returncode}): {text.strip()[-300:]}")


def run_command(runtime: str, image: str, spec: dict, env: dict[str, str]) -> list[str]:
    """The full `docker run ...` command line for one image and environment."""
    args = [runtime, "run", "--rm", *GPU_ARGS, "-v", f"{package_parent()}:{MOUNT}:ro", "-e", f"PYTHONPATH={MOUNT}"]
    for key, value in sorted(env.items()):
        args += ["-e", f"{key}={value}"]
    return args + [image, "python3", "-m", "navitrain.probe.container_child", json.dumps(spec)]


@dataclass
class ImageRun:
    image: str
    digest: str | None
    env: dict[str, str]
    results: list[ProbeResult] = field(default_factory=list)
    problem: str | None = None      # a ContainerError's message, or the container not seeing the GPU
    problem_kind: str | None = None


def _failure_mode(text: str) -> str | None:
    from navitrain.doctor.logs import classify

    mode = classify(text)[0].id
    return None if mode == "unknown" else mode


def run_image(runtime: str, image: str, digest: str, cases: list[str], routes: list[str], env: dict[str, str],
              *, timeout: float, seed: int | None = None, host_has_gpu: bool | None = None,
              startup_s: float = 120) -> ImageRun:
    """The cases on the routes in one container; a crash or hang of the container is a result per cell
    it left without one, classified by the explain classifier like a crash on the host."""
    spec = {"cases": cases, "routes": routes, "env": env, "timeout": timeout, "seed": seed}
    run = ImageRun(image, digest, env)
    budget = startup_s + timeout * len(cases) * len(routes)  # start-up, then every case's own limit
    started = time.monotonic()
    try:
        proc = subprocess.run(run_command(runtime, image, spec, env), capture_output=True, text=True, timeout=budget)
        out, err, code, hung = proc.stdout, proc.stderr, proc.returncode, False
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        err = exc.stderr.decode() if isinstance(exc.stderr, bytes) else (exc.stderr or "")
        code, hung = None, True
    seen_gpu = None
    for line in out.splitlines():
        if line.startswith("NAVITRAIN-GPU "):
            seen_gpu = json.loads(line[len("NAVITRAIN-GPU "):])
        elif line.startswith("NAVITRAIN-RESULT "):
            data = json.loads(line[len("NAVITRAIN-RESULT "):])
            data["extra"] = {**(data.get("extra") or {}), "image": image, "digest": digest}
            run.results.append(ProbeResult(**data))
    if seen_gpu is None and not hung:
        failure = classify_runtime_failure(err + out, runtime, image)
        if failure is not None:
            run.problem, run.problem_kind = str(failure), failure.kind
            return run
    host_has_gpu = os.path.exists("/dev/kfd") if host_has_gpu is None else host_has_gpu
    if seen_gpu is not None and host_has_gpu and not seen_gpu.get("kfd"):
        run.problem_kind = "gpu-not-visible"
        run.problem = (f"The container of {image} cannot see the GPU (/dev/kfd is missing inside): the runtime "
                       "dropped --device=/dev/kfd (rootless podman needs `--group-add keep-groups` and access to "
                       "/dev/kfd), or the image's user is not in the render group.")
    done = {(r.case, r.route) for r in run.results}
    seconds = time.monotonic() - started
    for route in routes:
        for case in cases:
            if (case, route) in done:
                continue
            text = (err or out).strip()
            detail = (f"the container ran past {budget:.0f} s" if hung
                      else f"the container exited with {code} before this case reported") + (
                f": {text[-300:]}" if text else "")
            run.results.append(ProbeResult(case, route, dict(env), HANG if hung else CRASH, detail,
                                           mode=None if hung else _failure_mode(text), seconds=seconds,
                                           extra={"image": image, "digest": digest}))
    return run


def container_fingerprint(image: str, digest: str):
    """The store's fingerprint of this host's GPUs and kernel with this image (name and digest): the
    image's torch and ROCm replace the host's, so its results must not mix with the host's."""
    import hashlib

    from navitrain.probe.fingerprint import Fingerprint, file_facts

    facts = {**file_facts(), "container": {"image": image, "digest": digest},
             "torch": {"version": f"from the image {image}"}}
    return Fingerprint(hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:16], facts)


def _store(run: ImageRun) -> None:
    from navitrain.probe import store

    fingerprint = container_fingerprint(run.image, run.digest or "")
    store.save_fingerprint(fingerprint)
    for result in run.results:
        store.save_result(fingerprint, result)


def probe_images(images: list[str], cases: list[str], routes: list[str], envs: list[dict[str, str]], *,
                 runtime: str | None = None, timeout: float = 60, seed: int | None = None,
                 host_has_gpu: bool | None = None, startup_s: float = 120, on_run=None,
                 save: bool = False) -> list[ImageRun]:
    """Every image under every environment. A missing image is that image's problem, not the whole
    matrix's; a missing runtime or a daemon that cannot be reached ends the run (ContainerError).
    save: keep the results in the probe store under container_fingerprint(image, digest)."""
    executable = find_runtime(runtime)
    runs = []
    for image in images:
        try:
            digest = image_digest(executable, image)
        except ContainerError as exc:
            if exc.kind != "image-missing":
                raise
            runs.append(ImageRun(image, None, {}, problem=str(exc), problem_kind=exc.kind))
            continue
        for env in envs:
            run = run_image(executable, image, digest, cases, routes, env, timeout=timeout, seed=seed,
                            host_has_gpu=host_has_gpu, startup_s=startup_s)
            if run.problem_kind in ("socket-permission", "daemon-down"):
                raise ContainerError(run.problem_kind, run.problem)
            runs.append(run)
            if save and run.results:
                _store(run)
            if on_run is not None:
                on_run(run)
    return runs


def matrix_json(runs: list[ImageRun]) -> list[dict]:
    """One record per cell: image, digest, case, route, env, outcome, mode, detail; plus one per image
    problem (`"outcome": null`)."""
    out = []
    for run in runs:
        if run.problem:
            out.append({"image": run.image, "digest": run.digest, "env": run.env, "problem": run.problem_kind,
                        "detail": run.problem, "outcome": None})
        out += [{"image": run.image, "digest": run.digest, **r.public()} for r in run.results]
    return out
