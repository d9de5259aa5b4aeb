"""Probe cases for the fault tests of the probe's children (a user case file, not a test module)."""
import os
import subprocess
import sys
import time

import navitrain.probe

# Start-up that takes a while (a loaded machine): only in the probe children, where the test sets it.
time.sleep(float(os.environ.get("LINGERING_SLOW_IMPORT", "0")))


@navitrain.probe.case("quick")
def quick(device):
    import torch

    x = torch.randn(8, 8)
    return x.to(device) * 2


@navitrain.probe.case("sleeps-with-escapees")
def sleeps_with_escapees(device):
    """A grandchild in the child's process group and one that left it (setsid), then sleep forever."""
    stay = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1000)"])
    escape = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1000)"], start_new_session=True)
    pidfile = os.environ.get("LINGERING_PIDFILE")
    if pidfile:
        with open(pidfile + ".tmp", "w") as f:
            f.write(f"{stay.pid} {escape.pid}")
        os.replace(pidfile + ".tmp", pidfile)
    while True:
        time.sleep(1)
