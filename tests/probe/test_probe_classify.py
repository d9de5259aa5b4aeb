"""runner.classify(): what a finished or killed child left behind -> outcome, detail, explain mode."""
import signal

from navitrain.probe.runner import classify


def test_result_file_outcomes_are_kept():
    assert classify(0, {"outcome": "pass", "detail": "ok"}, "", "comparing", False, 60) == ("pass", "ok", None)
    mismatch = {"outcome": "mismatch", "detail": "output: NaN", "mode": "fp16-corruption"}
    assert classify(0, mismatch, "", "comparing", False, 60) == ("mismatch", "output: NaN", "fp16-corruption")


def test_errors_get_the_explain_mode_and_faults_become_gpu_faults():
    error = {"outcome": "error", "detail": "RuntimeError: rocBLAS error: Cannot read /opt/rocm/lib/rocblas/library/"
                                           "TensileLibrary.dat: No such file or directory"}
    assert classify(0, error, "", "the device run", False, 60)[::2] == ("error", "rocblas-missing-arch")
    plain = {"outcome": "error", "detail": "ValueError: bad shape"}
    assert classify(0, plain, "", "the device run", False, 60) == ("error", "ValueError: bad shape", None)
    faulted = {"outcome": "error", "detail": "RuntimeError: HIP error: an illegal memory access was encountered"}
    log = "Memory access fault by GPU node-1 (Agent handle: 0x55d0) on address 0x7f00. Reason: Page not present"
    outcome, detail, mode = classify(0, faulted, log, "the device run", False, 60)
    assert (outcome, mode) == ("gpu-fault", "gfx-override-fault") and detail == faulted["detail"]


def test_death_without_result():
    segv = -signal.SIGSEGV
    assert classify(segv, None, "Fatal Python error: Segmentation fault", "the device run", False, 60) == \
        ("crash", "killed by SIGSEGV during the device run", None)
    outcome, detail, _ = classify(1, None, "Traceback ...\nImportError: libamdhip64.so.6: cannot open",
                                  "the route import", False, 60)
    assert outcome == "crash"
    assert detail == ("exited with code 1 without a result during the route import: "
                      "ImportError: libamdhip64.so.6: cannot open")
    outcome, detail, mode = classify(-signal.SIGABRT, None, "HSA_STATUS_ERROR_MEMORY_APERTURE_VIOLATION: code: 0x29",
                                     "the device run", False, 60)
    assert (outcome, mode) == ("gpu-fault", "gfx-override-fault")
    assert detail == "HSA_STATUS_ERROR_MEMORY_APERTURE_VIOLATION: code: 0x29 (killed by SIGABRT during the device run)"


def test_timeouts():
    assert classify(None, None, "", "the device run", True, 30) == (
        "hang", "no result 30 s after the case started during the device run; killed the child and its process group",
        None)
    _, detail, _ = classify(None, None, "", "route.prepare()", True, 30, stuck=True)
    assert "stuck in the kernel" in detail
    outcome, detail, mode = classify(None, None, "amdgpu 0000:03:00.0: ring gfx_0.0.0 timeout", "the device run",
                                     True, 30)
    assert (outcome, mode) == ("hang", "gpu-hang")
    # An answer written before a hang on exit stands.
    outcome, detail, _ = classify(None, {"outcome": "pass", "detail": "ok"}, "", "comparing", True, 30)
    assert outcome == "pass" and detail == "ok (then hung on exit and was killed)"
