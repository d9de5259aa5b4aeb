"""Which depthwise kernel a layer gets with tuning off (lavapipe, CI, NAVITRAIN_WGPU_TUNE=0), and the shape of
its WGSL, pinned (issue 23): a choice rule, a tile, a workgroup size or a loop bound that changes must change
these tests too, instead of only showing up as a GPU slowdown months later. The kernels' results are
checked against float64 on the CPU here as well (the full matrix is in test_conv_depthwise.py)."""
import re

import pytest
import torch
import torch.nn.functional as F

from navitrain.wgpu.kernels import codegen
from navitrain.wgpu.runtime import runtime
from tests.wgpu.conv_checks import assert_close_to_reference

F32 = torch.float32


@pytest.fixture
def launches(monkeypatch):
    """Tuning off, an empty kernel cache (so that every kernel's WGSL is generated again), and a record of
    what runs: launches["dispatches"] is a list of (kernel key, grid), launches["wgsl"] maps key -> WGSL."""
    monkeypatch.setenv("NAVITRAIN_WGPU_TUNE", "0")
    rt = runtime()
    rt._kernels.clear()
    record = {"dispatches": [], "wgsl": {}}
    keys = {}
    kernel, dispatch = rt.kernel, rt.dispatch

    def traced_kernel(key, name, n_buffers, source, table=False):
        def generate():
            text = source() if callable(source) else source
            record["wgsl"][key] = text
            return text
        compiled = kernel(key, name, n_buffers, generate, table)
        keys[id(compiled)] = key
        return compiled

    def traced_dispatch(compiled, heaps, params, groups, *args, **kwargs):
        record["dispatches"].append((keys.get(id(compiled), compiled.name), tuple(groups)))
        return dispatch(compiled, heaps, params, groups, *args, **kwargs)

    monkeypatch.setattr(rt, "kernel", traced_kernel)
    monkeypatch.setattr(rt, "dispatch", traced_dispatch)
    yield record
    rt._kernels.clear()   # nothing compiled through the wrappers outlives the test


def _passes(N, C, H, k, s, channels_last, seed):
    """Run forward, grad-input and grad-weight of a depthwise layer on wgpu, one pass at a time; returns the
    wgpu results and their float64 CPU references."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(N, C, H, H, generator=gen, dtype=torch.float64)
    w = torch.randn(C, 1, k, k, generator=gen, dtype=torch.float64)
    xs, ws = x.clone().requires_grad_(), w.clone().requires_grad_()
    y = F.conv2d(xs, ws, None, s, k // 2, groups=C)
    gy = torch.randn(y.shape, generator=gen, dtype=torch.float64)
    y.backward(gy)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    xd = x.to(F32).contiguous(memory_format=fmt).to("wgpu")
    wd = w.to(F32).to("wgpu")
    gyd = gy.to(F32).contiguous(memory_format=fmt).to("wgpu")
    backward = torch.ops.aten.convolution_backward.default
    args = (gyd, xd, wd, None, [s, s], [k // 2] * 2, [1, 1], False, [0, 0], C)
    return {"fwd": lambda: F.conv2d(xd, wd, None, s, k // 2, groups=C),
            "dgrad": lambda: backward(*args, [True, False, False])[0],
            "wgrad": lambda: backward(*args, [False, True, False])[1]}, {
            "fwd": y.detach(), "dgrad": xs.grad, "wgrad": ws.grad}


def _run_each(launches, passes, refs):
    """pass name -> the dispatches it made; each pass's result checked against the CPU's."""
    made = {}
    for name, run in passes.items():
        launches["dispatches"].clear()
        got = run().cpu()
        assert_close_to_reference((got,), (refs[name],), 2e-5)
        made[name] = list(launches["dispatches"])
    return made


_PARAMETER_LET = re.compile(r"^\s*let \w+ = p[ufi]\(\d+u\);\s*$")


def _body(wgsl: str) -> str:
    """The kernel body after the parameter block's `let name = pu(k);` prelude."""
    lines = wgsl.split("fn main(", 1)[1].splitlines()
    last = max(i for i, line in enumerate(lines) if _PARAMETER_LET.match(line))
    return "\n".join(lines[last + 1:])


def _assert_parameters_read_once(wgsl: str):
    """Parameters are read once, by name, at the top: no parameter read (uniform or otherwise) in the
    body, none by word number anywhere but the prelude's lets."""
    body = _body(wgsl)
    assert not re.search(r"\bp[ufi]\(|\bP\[", body), "a kernel parameter read inside the body"
    assert "var<storage, read> " not in wgsl and not re.search(r"\bT\[", body), "parameters from a storage buffer"


def test_stride1_nchw_3x3_is_the_tiled_kernel_with_tuning_off(launches):
    """MobileNetV2's stride-1 3x3 depthwise layer (NCHW, planes wider than 16): forward and grad-input are
    the tiled kernel with 8 threads along W (8 x 32 output tiles, one (n, c) plane per workgroup, 64
    threads), grad-weight the per-channel workgroup kernel; the WGSL: a 10 x 34 input tile in workgroup
    memory filled by the one loop (constant bound), 9 weights in registers, 18 constant-offset tile reads."""
    N, C, H = 2, 6, 40
    passes, refs = _passes(N, C, H, 3, 1, False, seed=41)
    made = _run_each(launches, passes, refs)
    tiles = N * C * -(-H // 32) * -(-H // 8)
    for name, flip in (("fwd", False), ("dgrad", True)):
        key = ("dw_tiled", 3, 3, 1, 1, flip, 8, F32, F32, F32, None)
        assert made[name] == [(key, codegen.grid(tiles))], (name, made[name])
        wgsl = launches["wgsl"][key]
        assert "@workgroup_size(64)" in wgsl
        assert "var<workgroup> tile: array<f32, 340>;" in wgsl
        loops = re.findall(r"\bfor \(([^)]*)\)", wgsl)
        assert loops == ["var e = lid; e < 340u; e = e + 64u"], loops
        assert not re.search(r"\b(while|loop)\b", wgsl)
        before_barrier, after_barrier = _body(wgsl).split("workgroupBarrier();")
        assert before_barrier.count("b2[") == 9 and "b2[" not in after_barrier, "weights not in registers"
        assert len(re.findall(r"tile\[tb \+ \d+u\]", after_barrier)) == 3 * 6
        _assert_parameters_read_once(wgsl)
    wgrad = [key for key, _ in made["wgrad"]]
    assert wgrad[0] == ("dw_wgrad", 3, 3, 1, 1, F32, F32, F32), made["wgrad"]
    assert made["wgrad"][0][1][0] == C, "grad-weight: one workgroup per channel and slice"
    assert all(key[0] == "reduce" for key in wgrad[1:]), made["wgrad"]
    _assert_parameters_read_once(launches["wgsl"][wgrad[0]])


def test_channels_last_f32_forward_is_the_vec4_kernel_with_tuning_off(launches):
    """channels_last f32 with C % 4 == 0 (MobileNetV2 144@56 NHWC, ConvNeXt's 7x7): forward and stride-1
    grad-input are the vec4 kernel (4 channels x 4 outputs a thread, straight from memory, no loop);
    grad-weight is the position-slice kernel with vec4 sums (3x3)."""
    N, C, H = 2, 8, 13
    passes, refs = _passes(N, C, H, 3, 1, True, seed=43)
    made = _run_each(launches, passes, refs)
    threads = N * (C // 4) * H * -(-H // 4)
    for name, flip in (("fwd", False), ("dgrad", True)):
        key = ("dw_vec4", 3, 3, 1, 1, flip, F32, F32, F32, None)
        assert made[name] == [(key, codegen.groups_for(threads, 64))], (name, made[name])
        wgsl = launches["wgsl"][key]
        assert "@workgroup_size(64)" in wgsl and "var<workgroup>" not in wgsl
        assert not re.search(r"\b(for|while|loop)\b", wgsl), "the vec4 kernel has no loop"
        _assert_parameters_read_once(wgsl)
    key = made["wgrad"][0][0]
    assert key == ("dw_wgrad_nhwc", 3, 3, 1, 1, True, F32, F32, F32), made["wgrad"]
    _assert_parameters_read_once(launches["wgsl"][key])
