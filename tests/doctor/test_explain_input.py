"""`navitrain explain` reads any input in bounded memory: an endless device (/dev/zero), a pipe that
cannot seek (`<(cmd)`, a FIFO), standard input; a stream is classified by its last bytes."""
import os
import resource
import subprocess
import sys
import threading

import pytest

from navitrain.doctor.tail import read_tail

FAULT = (b"HSA_STATUS_ERROR_MEMORY_APERTURE_VIOLATION: The agent attempted to access memory beyond the largest "
         b"legal address.\n")
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/dev/zero, FIFOs, RLIMIT_AS")


def _explain(*args, stdin=None, input=None):
    def limit_memory():  # far below what reading /dev/zero to the end would need
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))

    return subprocess.run([sys.executable, "-m", "navitrain", "explain", *args, "--no-facts", "--json"],
                          stdin=stdin, input=input, capture_output=True, timeout=120, preexec_fn=limit_memory)


def test_endless_device_is_read_in_bounded_memory_and_time():
    result = _explain("/dev/zero")
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    assert b'"unknown"' in result.stdout
    assert b"did not end" in result.stderr  # it says that it stopped reading


def test_a_pipe_that_cannot_seek_is_classified(tmp_path):
    fifo = tmp_path / "log.fifo"
    os.mkfifo(fifo)

    def write():
        with open(fifo, "wb") as f:
            f.write(os.urandom(3 << 20).replace(b"\n", b" ") + b"\n" + FAULT)

    writer = threading.Thread(target=write)
    writer.start()
    try:
        result = _explain(str(fifo))
    finally:
        writer.join(timeout=30)
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    assert b'"gfx-override-fault"' in result.stdout


def test_standard_input_is_classified_by_its_end():
    result = _explain("-", input=b"noise line\n" * 200_000 + FAULT)
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    assert b'"gfx-override-fault"' in result.stdout


def test_read_tail_keeps_the_last_bytes_of_a_stream_and_stops_at_the_cap():
    payload = os.urandom(10_000)
    read, write = os.pipe()
    threading.Thread(target=lambda: (os.write(write, payload), os.close(write))).start()
    with os.fdopen(read, "rb") as stream:
        tail = read_tail(stream, keep=1000, cap=1 << 20)
    assert tail.data == payload[-1000:] and tail.total == 10_000 and tail.cut_start and not tail.unfinished

    with open("/dev/zero", "rb") as endless:
        tail = read_tail(endless, keep=100, cap=5000)
    assert tail.data == b"\0" * 100 and tail.total == 5000 and tail.unfinished


def test_read_tail_of_a_regular_file_seeks_to_its_end(tmp_path):
    path = tmp_path / "big.log"
    payload = os.urandom(50_000)
    path.write_bytes(payload)
    with open(path, "rb") as f:
        tail = read_tail(f, keep=4096)
    assert tail.data == payload[-4096:] and tail.total == 50_000 and tail.cut_start and not tail.unfinished
