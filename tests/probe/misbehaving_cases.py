"""Deliberately misbehaving probe cases (a user case file, not a test module): each must be classified
correctly by the runner, in bounded time, without harming the parent."""
import ctypes
import os
import subprocess
import sys
import time

import navitrain.probe

_calls = [0]


@navitrain.probe.case("good")
def good(device):
    import torch

    x = torch.randn(16, 16)
    return x.to(device) @ x.to(device)


@navitrain.probe.case("segfault")
def segfault(device):
    ctypes.string_at(0)  # reads address 0: SIGSEGV


@navitrain.probe.case("aperture-violation")
def aperture_violation(device):
    print("HSA_STATUS_ERROR_MEMORY_APERTURE_VIOLATION: The agent attempted to access memory beyond the "
          "largest legal address. code: 0x29", file=sys.stderr, flush=True)
    os.abort()


@navitrain.probe.case("sleeps-forever")
def sleeps_forever(device):
    # A grandchild too: the runner must kill the whole process group, not only the child.
    grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1000)"])
    pidfile = os.environ.get("PROBE_TEST_PIDFILE")
    if pidfile:
        with open(pidfile, "w") as f:
            f.write(str(grandchild.pid))
    while True:
        time.sleep(1)


@navitrain.probe.case("invalid-device-function")
def invalid_device_function(device):
    raise RuntimeError("HIP error: invalid device function")


@navitrain.probe.case("nondeterministic")
def nondeterministic(device):
    import torch

    _calls[0] += 1  # the reference run sees 1, the device run 2
    return torch.full((4,), float(_calls[0]))


@navitrain.probe.case("exits-without-result")
def exits_without_result(device):
    os._exit(3)


@navitrain.probe.case("unsupported")
def unsupported(device):
    raise navitrain.probe.Unsupported("this device type has no such feature")
