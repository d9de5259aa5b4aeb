"""The explain classifier on real log lines (the error messages of the issues each mode cites in its
sources), on lines that must not match, and on arbitrary text."""
from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from navitrain.doctor.logs import GPU_FAULT_MODES, MODE_IDS, classify, is_gpu_fault, mode

# Real lines, as the libraries print them (the issues behind them are in each mode's sources).
REAL_LINES = [
    ("no-code-object", "hipErrorNoBinaryForGpu: Unable to find code object for all current devices!"),
    ("no-code-object", "RuntimeError: HIP error: invalid device function"),
    ("rocblas-missing-arch", "rocBLAS error: Cannot read /opt/rocm/lib/rocblas/library/TensileLibrary.dat: "
                             "No such file or directory"),
    ("miopen-dpp-unsupported", "<inline asm>:14:20: error: not a valid operand."),
    ("miopen-dpp-unsupported", "v_add_f32 v4 v4 v4 row_bcast:15 row_mask:0xa"),
    ("miopen-dpp-unsupported", "RuntimeError: miopenStatusUnknownError"),
    ("gfx-override-fault", "HSA_STATUS_ERROR_MEMORY_APERTURE_VIOLATION: The agent attempted to access memory beyond "
                           "the largest legal address. code: 0x29"),
    ("gpu-hang", "ioctl(3, AMDKFD_IOC_WAIT_EVENT, 0x7ffd2a1c8f40"),
    ("build-failure", "error: use of undeclared identifier 'CK_BUFFER_RESOURCE_3RD_DWORD'"),
    ("build-failure", "1 error generated when compiling for gfx1010."),
    ("cpu-fallback-warning", "UserWarning: The operator 'aten::native_dropout_backward' is not currently supported on "
                             "the DML backend and will fall back to run on the CPU."),
]

# Lines from working runs and from the same notes that are not failures.
NOT_FAILURES = [
    "Vulkan0: AMD Radeon RX 5700 (RADV NAVI10) | uma: 0 | fp16: 1 | warp size: 64",
    "  Name:                    gfx1010",
    "  Marketing Name:          AMD Radeon RX 5700 XT",
    "      Name:                    amdgcn-amd-amdhsa--gfx1010:xnack-",
    "export HSA_OVERRIDE_GFX_VERSION=10.3.0",
    "Epoch 3/10: loss 0.4312, acc 0.871",
    "torch.cuda.is_available(): True, device: AMD Radeon RX 5700 XT",
    "rocBLAS info: using TensileLibrary_lazy_gfx1030.dat",
    "make: Nothing to be done for 'all'.",
    "[100%] Built target torch_hip",
    "amdgpu 0000:03:00.0: amdgpu: SMU is initialized successfully!",
    "Segmentation fault (core dumped)",  # a segfault alone is not evidence of a GPU fault
    "loss: nan",  # NaN without any fp16 context is not the fp16 mode
    "",
]


def ids(text: str) -> list[str]:
    return [m.id for m in classify(text)]


@pytest.mark.parametrize("expected,line", REAL_LINES)
def test_real_line_is_classified(expected, line):
    (match,) = classify(line)
    assert match.id == expected
    assert match.lines == [line.strip()]
    assert match.title and match.why and match.fix and match.sources


@pytest.mark.parametrize("line", NOT_FAILURES)
def test_non_failures_are_unknown(line):
    (match,) = classify(line)
    assert match.id == "unknown" and match.lines == []
    assert not is_gpu_fault(line)


FAILURE_MODES = Path(__file__).resolve().parents[1] / "fixtures" / "explain" / "failure_modes.md"


def test_failure_mode_table_rows_classify_as_their_own_id():
    """Every backticked key line of the failure-mode table in tests/fixtures/explain, and a row for
    every mode the classifier knows (so a new mode comes with its lines)."""
    rows = [line for line in FAILURE_MODES.read_text().splitlines() if re.match(r"^\| `[a-z0-9-]+` \|", line)]
    checked = set()
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        mode_id = cells[0].strip("`")
        snippets = re.findall(r"`([^`]+)`", cells[2])
        assert snippets, row
        for snippet in snippets:
            assert mode_id in [m.id for m in classify(snippet)], (mode_id, snippet)
        checked.add(mode_id)
    assert checked == set(MODE_IDS) - {"unknown"}


def test_a_crash_log_gives_modes_in_order_of_importance():
    log = "\n".join([
        "Loading model...",
        "UserWarning: The operator 'aten::foo' is not currently supported on the DML backend and will fall back "
        "to run on the CPU.",
        "HSA_OVERRIDE_GFX_VERSION=10.3.0 python train.py",
        ":0:rocdevice.cpp            :2614: 1234 us: Callback: Queue 0x7f aborting with error : "
        "HSA_STATUS_ERROR_MEMORY_APERTURE_VIOLATION: The agent attempted to access memory beyond the largest "
        "legal address. code: 0x29",
        "Segmentation fault (core dumped)",
    ])
    result = classify(log)
    assert [m.id for m in result] == ["gfx-override-fault", "cpu-fallback-warning"]  # the warning sorts last
    assert result[0].lines[-1] == "Segmentation fault (core dumped)"  # with the override context it counts
    assert is_gpu_fault(log)


def test_fp16_nan_needs_half_precision_context():
    assert ids("autocast(dtype=torch.float16)\nstep 10: loss nan") == ["fp16-corruption"]
    assert ids("modules.devices.NansException: A tensor with all NaNs was produced in Unet.") == ["fp16-corruption"]


def test_gpu_fault_signatures():
    for line in ("Memory access fault by GPU node-1 (Agent handle: 0x55d) on address 0x7f. Reason: Page not present",
                 "amdgpu 0000:03:00.0: amdgpu: [gfxhub] page fault (src_id:0 ring:24 vmid:3 pasid:32772)",
                 "amdgpu 0000:03:00.0: amdgpu: ring gfx_0.0.0 timeout, signaled seq=1, emitted seq=3",
                 "HW Exception by GPU node-1 (Agent handle: 0x5581) reason :GPU Hang"):
        assert is_gpu_fault(line), line
        assert classify(line)[0].id in GPU_FAULT_MODES, line
    assert not is_gpu_fault("RuntimeError: HIP error: invalid device function")
    assert GPU_FAULT_MODES <= set(MODE_IDS)


def test_ansi_colours_crlf_and_nul_bytes_are_cleaned():
    line = "\x1b[31mhipErrorNoBinaryForGpu\x1b[0m: Unable to find code object for all current devices!\r\n\x00"
    (match,) = classify(line)
    assert match.id == "no-code-object"
    assert match.lines == ["hipErrorNoBinaryForGpu: Unable to find code object for all current devices!"]


def test_lines_are_capped_and_deduplicated():
    log = "\n".join(["miopenStatusUnknownError"] * 50 + [f"MIOpen Error: {i}" for i in range(50)])
    (match,) = classify(log)
    assert match.lines[0] == "miopenStatusUnknownError" and len(match.lines) == 8 and len(set(match.lines)) == 8


def test_mode_lookup_gives_fresh_objects():
    a, b = mode("gpu-hang"), mode("gpu-hang")
    a.lines.append("x")
    assert b.lines == [] and a.sources and a.sources[0].startswith("https://github.com/")


def test_big_log_is_fast():
    noise = "\n".join(f"step {i}: loss {1 / (i + 1):.4f} lr 0.001 {'x' * 80}" for i in range(100_000))
    log = noise + "\nRuntimeError: HIP error: invalid device function\n" + "y" * 100_000
    start = time.perf_counter()
    result = classify(log)
    assert [m.id for m in result] == ["no-code-object"]
    assert time.perf_counter() - start < 5.0


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.text(max_size=2000), st.binary(max_size=2000).map(lambda b: b.decode("utf-8", "replace"))))
def test_any_text_classifies_without_error(text):
    result = classify(text)
    assert result and all(m.id in MODE_IDS for m in result)
    assert (result[0].id == "unknown") == (len(result) == 1 and not result[0].lines)
    assert len({m.id for m in result}) == len(result)
    cleaned = text.replace("\x00", "")
    for m in result:
        for line in m.lines:
            assert line and line in cleaned.replace("\r", "\n") or "\x1b" in text
    assert isinstance(is_gpu_fault(text), bool)


@settings(max_examples=100, deadline=None)
@given(noise=st.lists(st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\r"),
                              max_size=80), max_size=30),
       pick=st.sampled_from(REAL_LINES), where=st.integers(min_value=0, max_value=30))
def test_a_real_line_is_found_anywhere_in_noise(noise, pick, where):
    expected, line = pick
    lines = list(noise)
    lines.insert(min(where, len(lines)), line)
    assert expected in ids("\n".join(lines))
