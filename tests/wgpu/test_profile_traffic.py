"""navitrain.wgpu.profile() reports bytes read and written and FLOPs per kernel (issue 19): eager ops,
kernels launched outside aten ops (note_traffic), captured-graph replays and compiled graphs; and
nothing is traced while no profile is open."""
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import navitrain.wgpu as nw
from navitrain.wgpu import dispatch, profiling, traffic
from navitrain.wgpu.kernels import pointwise
from navitrain.wgpu.runtime import runtime
from navitrain.wgpu.tensor import WgpuTensor


def _with_edges(t: torch.Tensor) -> torch.Tensor:
    flat = t.view(-1)
    flat[:4] = torch.tensor([float("nan"), float("inf"), -float("inf"), -0.0])
    return t


def _stored(dtype) -> int:
    """Bytes per element in the device buffer (bool and small integers are widened)."""
    return runtime().stypes[dtype].itemsize


def _profiled(fn):
    fn()  # compile the kernels first
    nw.synchronize()
    with nw.profile() as table:
        out = fn()
    return table, out


def test_pointwise_ops_move_their_tensors_sizes():
    M, N = 37, 53
    x_cpu, b_cpu = _with_edges(torch.randn(M, N)), torch.randn(N)
    x, b = x_cpu.to("wgpu"), b_cpu.to("wgpu")
    f32 = _stored(torch.float32)

    table, y = _profiled(lambda: x + b)  # b broadcast: read once, N elements
    torch.testing.assert_close(y.cpu(), x_cpu + b_cpu, equal_nan=True)
    t = table.totals()
    assert (t["dispatches"], t["untracked"]) == (1, 0)
    assert (t["bytes_read"], t["bytes_written"], t["flops"]) == ((M * N + N) * f32, M * N * f32, M * N)
    assert t["bytes_moved"] == table["pointwise_add"].bytes_moved

    t = _profiled(lambda: x * x)[0].totals()  # the same region read twice counts once
    assert (t["bytes_read"], t["bytes_written"]) == (M * N * f32, M * N * f32)

    t = _profiled(lambda: x > 0)[0].totals()  # a bool result at its stored size
    assert (t["bytes_read"], t["bytes_written"]) == (M * N * f32, M * N * _stored(torch.bool))

    z = torch.empty(M, N, device="wgpu")
    t = _profiled(lambda: z.add_(b))[0].totals()  # in place: self read and written
    assert (t["bytes_read"], t["bytes_written"]) == ((M * N + N) * f32, M * N * f32)
    t = _profiled(lambda: z.copy_(x))[0].totals()  # copy_ overwrites without reading self; moving is no FLOP
    assert (t["bytes_read"], t["bytes_written"], t["flops"]) == (M * N * f32, M * N * f32, 0)

    half = x.to(torch.float16)
    t = _profiled(lambda: half.t().relu())[0].totals()  # a transposed view: its region, at its dtype's size
    assert (t["bytes_read"], t["bytes_written"]) == (M * N * _stored(torch.float16),) * 2


def test_matrix_product_flops_are_2mnk():
    M, N, K = 24, 40, 56
    a, b = torch.randn(M, K).to("wgpu"), torch.randn(K, N).to("wgpu")
    table, _ = _profiled(lambda: a @ b)
    gemm = [row for name, row in table.items() if name.startswith("gemm")]
    assert sum(r.flops for r in gemm) == table.totals()["flops"] == 2 * M * N * K
    assert sum(r.bytes_read for r in gemm) == (M * K + K * N) * 4

    B = 3
    p, q = torch.randn(B, M, K).to("wgpu"), torch.randn(B, K, N).to("wgpu")
    assert _profiled(lambda: torch.bmm(p, q))[0].totals()["flops"] == 2 * B * M * N * K


def test_convolution_flops_are_pytorchs_own():
    x_cpu, w_cpu = torch.randn(2, 3, 12, 12, requires_grad=True), torch.randn(8, 3, 3, 3, requires_grad=True)
    with FlopCounterMode(display=False) as counter:
        torch.nn.functional.conv2d(x_cpu, w_cpu, padding=1, stride=2).sum().backward()
    conv_flops = sum(v for op, v in counter.get_flop_counts()["Global"].items() if "convolution" in str(op))

    x = x_cpu.detach().to("wgpu").requires_grad_()
    w = w_cpu.detach().to("wgpu").requires_grad_()

    def step():
        x.grad = w.grad = None  # no accumulating add into old gradients
        torch.nn.functional.conv2d(x, w, padding=1, stride=2).sum().backward()

    table, _ = _profiled(step)
    conv_rows = [row for name, row in table.items() if name.startswith(("conv", "gemm", "winograd"))]
    assert conv_flops > 0 and sum(r.flops for r in conv_rows) == conv_flops
    # FLOPs go to the products; a copy or reduction a convolution pass issues beside them computes none.
    assert all(row.flops == 0 for name, row in table.items() if not name.startswith(("conv", "gemm", "winograd")))
    assert all(row.untracked == 0 for row in table.values())


def test_kernels_launched_outside_aten_ops_report_with_note_traffic():
    a, b = torch.randn(300).to("wgpu"), torch.randn(300).to("wgpu")

    def launch():
        start = profiling.mark()
        out = pointwise.run("outside_fma", "a * b + a", [a, b], torch.float32, "f32")
        profiling.note_traffic([a, b], [out], flops=2 * out.numel(), since=start)
        return out

    table, out = _profiled(launch)
    torch.testing.assert_close(out.cpu(), a.cpu() * b.cpu() + a.cpu())
    (name, row), = table.items()
    assert (row.count, row.bytes_read, row.bytes_written, row.flops, row.untracked) == (1, 2400, 1200, 600, 0)

    table, _ = _profiled(lambda: pointwise.run("outside_fma", "a * b + a", [a, b], torch.float32, "f32"))
    assert table.totals()["untracked"] == 1 and table.totals()["bytes_moved"] == 0


def test_captured_graph_replays_add_up_their_traffic():
    torch.manual_seed(0)
    layer = torch.nn.Linear(16, 8).to("wgpu")
    x = _with_edges(torch.randn(4, 16)).to("wgpu")

    def step():
        return torch.nn.functional.dropout(layer(x).relu(), 0.5)

    eager, _ = _profiled(step)
    g = nw.WgpuGraph()
    with nw.graph(g):
        out = step()
    g.replay()
    torch.manual_seed(11)
    g.replay()
    plain = out.cpu()
    torch.manual_seed(11)
    with nw.profile() as once:
        g.replay()
    # Replayed one dispatch at a time inside the profile, with the same fresh random numbers.
    torch.testing.assert_close(out.cpu(), plain, equal_nan=True)
    with nw.profile() as twice:
        g.replay()
        g.replay()
    one, two, e = once.totals(), twice.totals(), eager.totals()
    assert one["bytes_moved"] > 0 and one["flops"] >= 2 * 4 * 16 * 8
    assert {k: one[k] for k in ("dispatches", "bytes_read", "bytes_written", "flops")} == \
        {k: e[k] for k in ("dispatches", "bytes_read", "bytes_written", "flops")}
    for key in ("dispatches", "bytes_read", "bytes_written", "flops"):
        assert two[key] == 2 * one[key], key
    assert all(row.seconds > 0 for row in twice.values())
    g.reset()


def test_compiled_model_reports_traffic():
    torch.manual_seed(1)
    B, D, H, C = 8, 32, 48, 10
    model = torch.nn.Sequential(torch.nn.Linear(D, H), torch.nn.ReLU(), torch.nn.Linear(H, C)).to("wgpu")
    compiled = torch.compile(model, backend="wgpu")
    x = torch.randn(B, D).to("wgpu")
    with torch.no_grad():
        for _ in range(3):  # eager run, capture, replay
            compiled(x)
        table, out = _profiled(lambda: compiled(x))
    torch.testing.assert_close(out.cpu(), model(x).detach().cpu(), rtol=1e-4, atol=1e-5)
    gemm_flops = sum(row.flops for name, row in table.items() if name.startswith("gemm"))
    assert gemm_flops == 2 * B * D * H + 2 * B * H * C
    assert table.totals()["bytes_moved"] >= 4 * (B * D + D * H + H * C + B * C)


def test_nothing_is_traced_while_not_profiling():
    assert WgpuTensor.__torch_dispatch__.__func__ is dispatch.torch_dispatch
    assert traffic.current_log() is None and profiling.mark() is None
    rt = runtime()
    keys_before = len(rt.profile_keys)
    x = torch.randn(64).to("wgpu")
    profiling.note_traffic([x], [x], flops=1)  # no profile open: a no-op
    (x + 1).relu().sum().item()
    assert len(rt.profile_keys) == keys_before and rt.profile is None
    with nw.profile():
        assert WgpuTensor.__torch_dispatch__.__func__ is not dispatch.torch_dispatch
    assert WgpuTensor.__torch_dispatch__.__func__ is dispatch.torch_dispatch
    g = nw.WgpuGraph()
    with nw.graph(g):
        x.mul(2)
        assert traffic.current_log() is g.traffic
    assert WgpuTensor.__torch_dispatch__.__func__ is dispatch.torch_dispatch
    with pytest.raises(ZeroDivisionError), nw.graph(nw.WgpuGraph()):
        1 / 0
    assert WgpuTensor.__torch_dispatch__.__func__ is dispatch.torch_dispatch


def test_profiles_nest_and_keep_their_dispatches_apart():
    x = torch.randn(100).to("wgpu")
    (x + 1).neg().sum().item()
    with nw.profile() as outer:
        x + 1
        with nw.profile() as inner:
            x.neg()
        x + 2
    assert set(inner) == {"pointwise_neg"} and set(outer) == {"pointwise_add"}
    assert outer["pointwise_add"].count == 2 and outer["pointwise_add"].bytes_written == 800
    assert inner["pointwise_neg"].bytes_read == 400
    count, seconds = outer["pointwise_add"]  # rows still unpack as [dispatches, GPU seconds]
    assert count == 2 and seconds > 0
