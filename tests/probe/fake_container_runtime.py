"""A stand-in for docker/podman in the container-matrix tests (CI has no container daemon).

`image inspect --format ... IMAGE` prints a digest, or fails as docker does for an image whose name has
"missing". `run ... IMAGE python3 -m MODULE ARGS` checks that the GPU arguments ROCm containers need are
all there, then runs the command here with the -e variables and the -v mount's source in place of its
target; images named "crash" die like a GPU fault, "hang" never finish, "nogpu" print that /dev/kfd is
missing. FAKE_RUNTIME_MODE=permission / daemon makes every call fail as docker does in those cases.
"""
import hashlib
import os
import subprocess
import sys
import time

NEEDED = ["--device=/dev/kfd", "--device=/dev/dri", "--group-add video", "--group-add render",
          "--security-opt seccomp=unconfined", "--ipc=host"]


def fail(text: str, code: int = 1):
    sys.stderr.write(text + "\n")
    sys.exit(code)


def main(args):
    mode = os.environ.get("FAKE_RUNTIME_MODE", "")
    if mode == "permission":
        fail("permission denied while trying to connect to the Docker daemon socket at unix:///var/run/docker.sock: "
             "Get \"http://%2Fvar%2Frun%2Fdocker.sock/v1.24/images/json\": dial unix /var/run/docker.sock: "
             "connect: permission denied")
    if mode == "daemon":
        fail("Cannot connect to the Docker daemon at unix:///var/run/docker.sock. Is the docker daemon running?")
    if args[:2] == ["image", "inspect"]:
        image = args[-1]
        if "missing" in image:
            fail(f"Error: No such image: {image}")
        print("sha256:" + hashlib.sha256(image.encode()).hexdigest())
        return 0
    if args[0] != "run":
        fail(f"fake runtime: unsupported command {args[0]}", 125)
    joined = " ".join(args)
    for needed in NEEDED:
        if needed not in joined:
            fail(f"fake runtime: {needed} missing from: {joined}", 125)
    env, mounts, i = dict(os.environ), {}, 1
    while args[i].startswith("-"):
        flag = args[i]
        if flag in ("-e", "-v", "--group-add", "--security-opt"):
            value = args[i + 1]
            if flag == "-e":
                key, _, val = value.partition("=")
                env[key] = val
            elif flag == "-v":
                source, target, mode_ = value.split(":")
                assert mode_ == "ro", "navitrain must be mounted read-only"
                mounts[target] = source
            i += 2
        else:
            i += 1
    image, command = args[i], args[i + 1:]
    for target, source in mounts.items():
        env = {k: v.replace(target, source) for k, v in env.items()}
    if "crash" in image:
        print('NAVITRAIN-GPU {"kfd": true, "dri": true}', flush=True)
        fail("Memory access fault by GPU node-1 (Agent handle: 0x55d0c8a0) on address 0x7f0000000000. "
             "Reason: Page not present or supervisor privilege.", 134)
    if "hang" in image:
        time.sleep(600)
    if command[0] == "python3":
        command[0] = sys.executable
    if "nogpu" in image:
        print('NAVITRAIN-GPU {"kfd": false, "dri": false}', flush=True)
        return 0
    return subprocess.run(command, env=env).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
