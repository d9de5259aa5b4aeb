"""Numeric options outside the probe are checked up front too: nan, inf and out-of-range values are a
clear error (rc 2), never accepted and then hung on or traced back."""
import os
import subprocess
import sys

import pytest


def _navitrain(*args):
    return subprocess.run([sys.executable, "-m", "navitrain", *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "COLUMNS": "200"})


@pytest.mark.parametrize("args,message", [
    (["bench", "-r", "cpu", "--quick", "--timeout", "nan", "--json"], "--timeout must be positive"),
    (["bench", "-r", "cpu", "--quick", "--timeout", "inf", "--json"], "--timeout must be positive"),
    (["bench", "-r", "cpu", "--quick", "--seed", "99999999999999999999999", "--json"], "--seed must be"),
    (["doctor", "--no-probe", "--timeout", "nan", "--json"], "--timeout"),
], ids=["bench-timeout-nan", "bench-timeout-inf", "bench-seed-huge", "doctor-timeout-nan"])
def test_bad_numbers_are_refused(args, message):
    result = _navitrain(*args)
    assert result.returncode == 2, (result.returncode, result.stdout[-500:], result.stderr[-1500:])
    assert message in result.stderr and "Traceback" not in result.stderr
