"""No probe leaves a process or a temp dir behind: `navitrain probe` killed by SIGTERM, SIGHUP or SIGKILL
while a case hangs (with a grandchild in its group and one that called setsid) takes its whole tree
and its temp dirs with it within 5 s; a dead probe's leftover dir is removed by the next run."""
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from navitrain.probe import tempdirs

CASES_FILE = str(Path(__file__).with_name("lingering_cases.py"))
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def _marked(name: str, value: str) -> list[int]:
    """Live (not zombie) processes whose environment holds name=value."""
    needle = f"{name}={value}".encode()
    found = []
    for pid in (p for p in os.listdir("/proc") if p.isdigit()):
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if needle not in f.read().split(b"\0"):
                    continue
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(") ", 1)[1][0] == "Z":
                    continue
        except OSError:
            continue
        found.append(int(pid))
    return found


def _leftovers(tmp: Path) -> list[str]:
    return sorted(p.name for p in tmp.iterdir() if p.name.startswith(("navitrain-probe-", "navitrain-cases-",
                                                                      "navitrain-xdg-")))


def _wait_for(predicate, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


def _start_hanging_probe(tmp_path, ignore_sighup=False):
    """`navitrain probe` running a case whose child leaves a grandchild in its group and one that called
    setsid; every process of the tree carries a mark. Returns (proc, mark, its TMPDIR, the pid file)."""
    mark = uuid.uuid4().hex
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    pidfile = tmp_path / "grandchildren.pid"
    env = dict(os.environ, CHILDREN_TEST_MARK=mark, TMPDIR=str(tmp), LINGERING_PIDFILE=str(pidfile),
               NAVITRAIN_CACHE_DIR=str(tmp_path / "cache"))
    hup = signal.SIG_IGN if ignore_sighup else signal.SIG_DFL

    def dispositions():  # the same whatever this test runs under (nohup ignores SIGHUP)
        signal.signal(signal.SIGHUP, hup)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)

    proc = subprocess.Popen(
        [sys.executable, "-m", "navitrain", "probe", "--route", "cpu", "--cases", CASES_FILE,
         "-k", "sleeps-with-escapees", "--timeout", "300", "--json"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, preexec_fn=dispositions)
    return proc, mark, tmp, pidfile


def _assert_tree_and_dir_gone(mark, tmp):
    assert _wait_for(lambda: not _marked("CHILDREN_TEST_MARK", mark), 5), \
        f"survivors: {_marked('CHILDREN_TEST_MARK', mark)}"
    assert _wait_for(lambda: not _leftovers(tmp), 5), _leftovers(tmp)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL, signal.SIGHUP], ids=lambda s: s.name)
def test_killed_probe_leaves_no_process_and_no_temp_dir(tmp_path, sig):
    proc, mark, tmp, pidfile = _start_hanging_probe(tmp_path)
    try:
        assert _wait_for(pidfile.exists, 120), "the hanging case never started"
        stay, escaped = map(int, pidfile.read_text().split())
        assert {stay, escaped} <= set(_marked("CHILDREN_TEST_MARK", mark))
        assert _leftovers(tmp), "the probe made no temp dir where the test looks"
        proc.send_signal(sig)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -sig, proc.stderr.read().decode()  # it ends as the signal intends
    _assert_tree_and_dir_gone(mark, tmp)


def test_next_run_removes_a_dead_owners_dir_and_keeps_a_live_ones(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    orphan = tmp_path / "navitrain-probe-orphan"
    orphan.mkdir()
    (orphan / tempdirs.OWNER_FILE).write_text(f"{dead.pid}\n")
    (orphan / "output.log").write_text("x")
    live = tmp_path / "navitrain-cases-live"
    live.mkdir()
    (live / tempdirs.OWNER_FILE).write_text(f"{os.getpid()} {tempdirs._start_time(os.getpid())}\n")
    reused = tmp_path / "navitrain-probe-reused-pid"  # our pid, another process's start time
    reused.mkdir()
    (reused / tempdirs.OWNER_FILE).write_text(f"{os.getpid()} 1\n")
    unrelated = tmp_path / "someone-else"
    unrelated.mkdir()
    removed = tempdirs.remove_abandoned(str(tmp_path))
    assert sorted(p.name for p in removed) == ["navitrain-probe-orphan", "navitrain-probe-reused-pid"]
    assert live.is_dir() and unrelated.is_dir() and not orphan.exists() and not reused.exists()


def test_the_wgpu_runtime_dir_goes_with_its_process(tmp_path):
    """adapters.prepare_instance() makes a private XDG_RUNTIME_DIR: removed at exit, and after an exit
    without exit handlers (os._exit, as probe and bench children end) by the next sweep."""
    env = {k: v for k, v in os.environ.items() if k != "XDG_RUNTIME_DIR"}
    env["TMPDIR"] = str(tmp_path)
    code = ("from navitrain import adapters; adapters.prepare_instance(); "
            "import os; print(os.environ['XDG_RUNTIME_DIR'])")
    made = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert made.strip().startswith(str(tmp_path)) and _leftovers(tmp_path) == []
    subprocess.run([sys.executable, "-c", code + "; os._exit(0)"], env=env, check=True, capture_output=True)
    assert len(_leftovers(tmp_path)) == 1
    tempdirs.remove_abandoned(str(tmp_path))
    assert _leftovers(tmp_path) == []


def test_a_probe_started_under_nohup_ignores_sighup_and_still_cleans_up_on_sigterm(tmp_path):
    proc, mark, tmp, pidfile = _start_hanging_probe(tmp_path, ignore_sighup=True)
    try:
        assert _wait_for(pidfile.exists, 120), "the hanging case never started"
        proc.send_signal(signal.SIGHUP)
        time.sleep(1.0)
        assert proc.poll() is None, "SIGHUP ended a probe that was started ignoring it (nohup)"
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGTERM, proc.stderr.read().decode()
    _assert_tree_and_dir_gone(mark, tmp)
