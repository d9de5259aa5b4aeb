"""torch.distributed on the wgpu device: the "navitrain" process group (gloo with host staging) under
two real processes on 127.0.0.1, each with its own wgpu device (on lavapipe both open the one adapter).

Each rank is tests/wgpu/ddp_worker.py in a subprocess with a hard timeout, so a hang fails the test
instead of CI. Expectations come from PyTorch on the CPU with the same fresh random inputs.
"""
from __future__ import annotations

import copy
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import navitrain.wgpu.distributed as wd

sys.path.insert(0, str(Path(__file__).parent))
import ddp_worker  # noqa: E402

WORKER = Path(__file__).with_name("ddp_worker.py")
ROOT = Path(__file__).resolve().parents[2]
RUN_TIMEOUT = 240   # seconds for a whole two-process run: lavapipe on a shared 2-core box is slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_ranks(case: str, tmp_path, world: int = 2, expect_rc=None, nodes: bool = False) -> list:
    """Start every rank of `case`, wait (killing all on timeout), return what each saved. nodes=True:
    each rank is a separate one-process torchrun "node" meeting the others over TCP on 127.0.0.1, as
    machines do (torchrun --nnodes N --node-rank K --master-addr ...)."""
    port = _free_port()
    env = dict(os.environ, NAVITRAIN_WGPU_STRICT="1",
               PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
    outs = [tmp_path / f"{case}-{r}.pt" for r in range(world)]
    if nodes:
        commands = [[sys.executable, "-m", "torch.distributed.run", f"--nnodes={world}", f"--node-rank={r}",
                     "--nproc-per-node=1", "--master-addr=127.0.0.1", f"--master-port={port}", str(WORKER), case,
                     "env", "env", "env", str(tmp_path / f"{case}-{{rank}}.pt")] for r in range(world)]
    else:
        commands = [[sys.executable, str(WORKER), case, str(r), str(world), str(port), str(outs[r])]
                    for r in range(world)]
    procs = [subprocess.Popen(c, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for c in commands]
    logs = []
    deadline = time.monotonic() + RUN_TIMEOUT
    try:
        for p in procs:
            logs.append(p.communicate(timeout=max(1.0, deadline - time.monotonic()))[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for r, p in enumerate(procs):
        want = 0 if expect_rc is None else expect_rc[r]
        assert p.returncode == want, f"rank {r} exited {p.returncode} (wanted {want}):\n{logs[r][-4000:]}"
    return [torch.load(o) if o.exists() else None for o in outs]


def test_registered_for_the_wgpu_device():
    import torch.distributed as dist

    assert wd.NAME in dist.Backend.backend_list
    assert dist.Backend.default_device_backend_map["wgpu"] == wd.NAME
    assert "wgpu" in dist.Backend.backend_capability[wd.NAME]


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory):
    """Collectives, then DDP of the GPT decoder, of the ResNet and of a SyncBatchNorm CNN, in one run of
    two one-process torchrun "nodes" (starting the processes is most of the time on lavapipe)."""
    return _run_ranks("all", tmp_path_factory.mktemp("two_nodes"), nodes=True)


def test_collectives_on_odd_sized_non_contiguous_and_special_values_between_two_nodes(two_nodes):
    r0, r1 = (r["collectives"] for r in two_nodes)
    inputs = [ddp_worker.rank_inputs(r) for r in range(2)]
    for key in ("odd", "special", "int32", "half"):
        want = inputs[0][key] + inputs[1][key]
        for got in (r0, r1):
            assert got[f"sum_{key}"].dtype == want.dtype
            torch.testing.assert_close(got[f"sum_{key}"], want, equal_nan=True, rtol=1e-3, atol=1e-3)
    # inf + 1 = inf and nan + 2 = nan survive the staging copies
    assert torch.isinf(r0["sum_special"][3]) and torch.isnan(r0["sum_special"][7])
    for got in (r0, r1):
        torch.testing.assert_close(got["max_odd"], torch.maximum(inputs[0]["odd"], inputs[1]["odd"]))
    for r, got in enumerate((r0, r1)):
        base = inputs[r]["wide"].clone()
        view = base.t()[1:8:2]
        view.copy_(inputs[0]["wide"].t()[1:8:2] + inputs[1]["wide"].t()[1:8:2])
        torch.testing.assert_close(got["sum_view_base"], base)   # the view's elements summed, the rest kept
        torch.testing.assert_close(got["bcast"], inputs[1]["bcast"].t())
        torch.testing.assert_close(got["all_gather"], [inputs[0]["gather"], inputs[1]["gather"]])
        torch.testing.assert_close(got["all_gather_into_tensor"],
                                   torch.cat([inputs[0]["gather"], inputs[1]["gather"]]))
        total = inputs[0]["scatter"] + inputs[1]["scatter"]
        torch.testing.assert_close(got["reduce_scatter_tensor"], total[r * 9:(r + 1) * 9])
        assert got["device"] == "wgpu:0"
        torch.testing.assert_close(got["all_to_all_single"], torch.cat(
            [inputs[0]["scatter"][r * 9:(r + 1) * 9], inputs[1]["scatter"][r * 9:(r + 1) * 9]]))
    torch.testing.assert_close(r0["gather"], [inputs[0]["gather"], inputs[1]["gather"]])
    torch.testing.assert_close(r1["recv"], inputs[0]["bcast"].t())


def _reference(name: str, world: int, per_rank_forward: bool, dtype=torch.float32,
               with_buffers: bool = False) -> list[dict]:
    """One process on the CPU training on the concatenated batch. With BatchNorm (`per_rank_forward`)
    each rank's share goes through the model separately, as under DDP (BatchNorm's statistics are
    per process unless SyncBatchNorm), and the loss is the mean of the shares' losses, which is what
    DDP's averaged gradients are the gradient of."""
    model, batches, loss_fn, make_opt = ddp_worker.ddp_setup(name)
    model = copy.deepcopy(model).to(dtype)
    opt = make_opt(model.parameters())
    snapshots = []
    for x, y in batches:
        x = x.to(dtype) if x.is_floating_point() else x
        opt.zero_grad(set_to_none=True)
        if per_rank_forward:
            loss = sum(loss_fn(model(xs), ys) for xs, ys in zip(x.chunk(world), y.chunk(world))) / world
        else:
            loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        snapshots.append(ddp_worker.snapshot(model, with_buffers))
    return snapshots


def _check_ddp(name: str, runs, per_rank_forward: bool, dtype, tol: float, with_buffers: bool = False):
    r0, r1 = (r[name] for r in runs)
    assert r0["fallbacks"] == 0 and r1["fallbacks"] == 0
    ref = _reference(name, 2, per_rank_forward, dtype, with_buffers)
    assert len(r0["snapshots"]) == len(ref)
    for step, (s0, s1, want) in enumerate(zip(r0["snapshots"], r1["snapshots"], ref)):
        for key in want:
            # DDP keeps replicas identical: both ranks apply the same averaged gradient.
            torch.testing.assert_close(s0[key], s1[key], rtol=0, atol=0, msg=f"step {step} {key}: ranks differ")
            torch.testing.assert_close(s0[key], want[key], rtol=tol, atol=tol,
                                       msg=lambda m, k=key, s=step: f"step {s} parameter {k}: {m}")


def test_ddp_gpt_decoder_five_steps_equal_one_process_on_the_whole_batch(two_nodes):
    _check_ddp("gpt", two_nodes, per_rank_forward=False, dtype=torch.float32, tol=2e-3)


def test_ddp_cifar_resnet18_five_steps_equal_one_process_on_the_whole_batch(two_nodes):
    # float64 reference as in test_training's ResNet parity test (BatchNorm amplifies rounding).
    _check_ddp("resnet", two_nodes, per_rank_forward=True, dtype=torch.float64, tol=2e-3)


def test_ddp_with_sync_batch_norm_equals_batch_norm_on_the_whole_batch_in_one_process(two_nodes):
    # SyncBatchNorm's statistics are those of both ranks' shares together, so the reference is plain
    # BatchNorm over the concatenated batch (one forward), running statistics included.
    _check_ddp("syncbn", two_nodes, per_rank_forward=False, dtype=torch.float64, tol=2e-3, with_buffers=True)


def test_a_dead_rank_makes_the_other_fail_clearly_within_the_timeout(tmp_path):
    t0 = time.monotonic()
    r0, _ = _run_ranks("dead_rank", tmp_path, expect_rc=[0, 3])
    elapsed = time.monotonic() - t0
    # DDP's backward: the bucket's all_reduce fails on gloo's thread; the reducer raises it when
    # backward ends (PyTorch wraps the CollectiveError in a RuntimeError carrying its message).
    ddp, plain = r0["ddp"], r0["all_reduce"]
    assert ddp["error_type"] == "RuntimeError" and "CollectiveError" in ddp["error"], ddp
    assert plain["error_type"] == "CollectiveError", plain
    for got in (ddp, plain):
        assert "all_reduce failed on rank 0 of 2" in got["error"] and "another rank" in got["error"], got["error"]
        assert got["seconds"] <= ddp_worker.TIMEOUT.total_seconds() + 5, got   # within the group's timeout
    assert elapsed < RUN_TIMEOUT


@pytest.mark.parametrize("backend", [wd.NAME, f"cpu:gloo,wgpu:{wd.NAME}"])
def test_backend_strings_take_wgpu_and_cpu_tensors(backend):
    import torch.distributed as dist

    dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    try:
        g = torch.Generator().manual_seed(7)
        host = torch.randn(2, 5, generator=g)
        dev, cpu = host.to("wgpu").t(), host.clone()     # a non-contiguous wgpu tensor
        dist.all_reduce(dev)
        dist.all_reduce(cpu, op=dist.ReduceOp.MAX)
        dist.barrier()
        torch.testing.assert_close(dev.cpu(), host.t())  # world of one: the sum is the tensor
        torch.testing.assert_close(cpu, host)
        # The rest of the API in a world of one: each returns its input (through the staging copies).
        dist.reduce(dev, dst=0)
        out = torch.empty(5, 2, device="wgpu")
        dist.reduce_scatter(out, [dev.contiguous()])
        torch.testing.assert_close(out.cpu(), host.t())
        out = torch.empty(5, 2, device="wgpu")
        dist.scatter(out, [dev], src=0)
        torch.testing.assert_close(out.cpu(), host.t())
        gathered = [torch.empty(5, 2, device="wgpu")]
        dist.gather(dev, gathered, dst=0)
        torch.testing.assert_close(gathered[0].cpu(), host.t())
    finally:
        dist.destroy_process_group()


def test_plain_gloo_refuses_wgpu_tensors_clearly():
    import torch.distributed as dist

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        with pytest.raises(RuntimeError, match="init_process_group\\('navitrain'\\)"):
            dist.all_reduce(torch.randn(3).to("wgpu"))
    finally:
        dist.destroy_process_group()


def _info(name, kind="DiscreteGPU", software=False):
    from navitrain.adapters import AdapterInfo

    return AdapterInfo(name, "", 0, 0, kind, "Vulkan", "", software)


def test_device_order_is_hardware_by_rank_then_enumeration_and_software_only_alone():
    from navitrain.adapters import choose, device_order

    infos = [_info("llvmpipe", "CPU", True), _info("Intel UHD 770", "IntegratedGPU"),
             _info("AMD Radeon RX 5700 XT (RADV NAVI10)"), _info("AMD Radeon RX 5700 XT (RADV NAVI10)")]
    assert device_order(infos) == [2, 3, 1]           # identical cards keep the driver's order
    assert device_order(infos)[0] == choose(infos)    # wgpu:0 is what a single process picks
    assert device_order([_info("llvmpipe", "CPU", True)]) == [0]


_TWO_ADAPTERS = """
import torch, navitrain.adapters as a
real = a.list_adapters
def twice():  # the machine's one adapter seen as two identical ones
    pairs = real()
    return pairs + [(pairs[0][0], pairs[0][1].__class__(**{**pairs[0][1].to_dict(), "name": "second"}))]
a.list_adapters = twice
import navitrain.wgpu as nw
assert nw.device_count() == 2 and nw.current_device() == 0
try:
    torch.ones(1, device="wgpu:2")
except RuntimeError as e:
    assert "wgpu:2 does not exist" in str(e) and "wgpu:1 second" in str(e), e
x = torch.randn(3, device="wgpu:1")           # the first tensor chooses this process's adapter
assert x.device == torch.device("wgpu", 1) and (x + 1).device == x.device, x.device
assert nw.current_device() == 1 and nw.adapter_info()["name"] == "second"
assert torch.equal((x * 2).cpu(), x.cpu() * 2)
try:
    torch.ones(1, device="wgpu:0")
except RuntimeError as e:
    assert "one adapter per process" in str(e), e
else:
    raise AssertionError("wgpu:0 accepted in a process that drives wgpu:1")
import io
buf = io.BytesIO()
torch.save({"w": x}, buf)
buf.seek(0)
assert torch.equal(torch.load(buf)["w"].cpu(), x.cpu())
rank0 = torch.arange(4.0)      # a checkpoint that rank 0 saved from wgpu:0 loads on this rank's wgpu:1
rank0.untyped_storage()._navitrain_location = "wgpu:0"
buf = io.BytesIO()
torch.save(rank0, buf)
buf.seek(0)
loaded = torch.load(buf)
assert loaded.device == torch.device("wgpu", 1) and torch.equal(loaded.cpu(), torch.arange(4.0)), loaded.device
print("OK")
"""


def test_each_process_drives_the_wgpu_N_it_asks_for():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
    env.pop("NAVITRAIN_WGPU_ADAPTER", None)
    run = subprocess.run([sys.executable, "-c", _TWO_ADAPTERS], env=env, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0 and run.stdout.strip().endswith("OK"), run.stdout + run.stderr[-3000:]


def test_doctor_gives_each_adapter_the_index_ranks_see():
    from navitrain.doctor.probes import add_wgpu_indices

    infos = [_info("llvmpipe", "CPU", True), _info("Intel UHD 770", "IntegratedGPU"), _info("RX 5700 XT"),
             _info("RX 5700 XT")]
    dicts = [i.to_dict() for i in infos]
    add_wgpu_indices(dicts)
    assert [d["wgpu_index"] for d in dicts] == [None, 2, 0, 1]


def test_doctor_adapter_table_shows_wgpu_indices():
    from rich.console import Console

    from navitrain.doctor.probes import probe_vulkan
    from navitrain.doctor.report import _adapter_table

    vulkan = probe_vulkan()
    assert vulkan["status"] == "ok" and vulkan["adapters"][vulkan["chosen"]]["wgpu_index"] == 0
    console = Console(width=200, record=True)
    console.print(_adapter_table({"vulkan": vulkan}, vulkan["adapters"]))
    assert "wgpu:0" in console.export_text()


def test_navitrain_device_takes_the_index_of_the_wgpu_adapter():
    import navitrain

    assert navitrain.device("wgpu", index=0, verify=False) == torch.device("wgpu", 0)
    with pytest.raises(RuntimeError, match="wgpu:7 does not exist"):
        navitrain.device("wgpu", index=7, verify=False)


# -- SyncBatchNorm's ops, in one process ---------------------------------------------------------
def _sync_batch_norm_step(x, weight, bias, running_mean, running_var, dy, on_wgpu: bool):
    """SyncBatchNorm's autograd function in a world of one (on wgpu: every op and the all_gather /
    all_reduce between them), or PyTorch's CPU batch norm in float64; outputs, running statistics and
    gradients as float32."""
    from torch.nn.modules._functions import SyncBatchNorm

    dev = "wgpu" if on_wgpu else "cpu"
    dtype = torch.float32 if on_wgpu else torch.float64
    x, w, b = (t.detach().to(dev, dtype).requires_grad_() for t in (x, weight, bias))
    rm, rv = running_mean.to(dev, dtype), running_var.to(dev, dtype)
    if on_wgpu:
        import torch.distributed as dist

        y = SyncBatchNorm.apply(x, w, b, rm, rv, 1e-5, 0.1, dist.group.WORLD, 1)
    else:
        y = torch.nn.functional.batch_norm(x, rm, rv, w, b, True, 0.1, 1e-5)
    y.backward(dy.to(dev, dtype))
    return [t.detach().float().cpu() for t in (y, rm, rv, x.grad, w.grad, b.grad)]


@pytest.mark.parametrize("channels_last", [False, True])
def test_sync_batch_norm_ops_equal_batch_norm_with_special_values(channels_last):
    import torch.distributed as dist

    g = torch.Generator().manual_seed(11)
    x = torch.randn(4, 3, 5, 6, generator=g) * 3 + 5       # a mean large next to the spread
    x[1, 1, 2, 3] = float("nan")                           # channel 1: NaN everywhere but grad_bias
    x[0, 2, 0, 0] = float("inf")                           # channel 2: inf -> NaN statistics
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    weight, bias = torch.randn(3, generator=g), torch.randn(3, generator=g)
    running_mean, running_var = torch.randn(3, generator=g), torch.rand(3, generator=g) + 0.5
    dy = torch.randn(x.shape, generator=g)
    dist.init_process_group(wd.NAME, store=dist.HashStore(), rank=0, world_size=1)
    try:
        before = navitrain_fallbacks()
        got = _sync_batch_norm_step(x, weight, bias, running_mean, running_var, dy, on_wgpu=True)
        assert navitrain_fallbacks() == before
    finally:
        dist.destroy_process_group()
    want = _sync_batch_norm_step(x, weight, bias, running_mean, running_var, dy, on_wgpu=False)
    for name, g_, w_ in zip(("y", "running_mean", "running_var", "grad_input", "grad_weight", "grad_bias"),
                            got, want):
        torch.testing.assert_close(g_, w_, rtol=1e-4, atol=1e-4, equal_nan=True, msg=lambda m, n=name: f"{n}: {m}")
    assert torch.isfinite(got[0][:, 0]).all() and torch.isnan(got[0][:, 1:]).all()


def navitrain_fallbacks() -> int:
    import navitrain.wgpu as nw

    return nw.fallback_report()["total_fallback_calls"]


def test_gathering_statistics_of_unequal_shares_equals_the_whole_batch():
    """Three "ranks" with 1, 4 and 2 samples (and one with none, filtered out as SyncBatchNorm does): the
    merged mean and invstd, the running update (unbiased variance) and the input gradient of one share
    equal float64 statistics of the concatenated batch."""
    g = torch.Generator().manual_seed(5)
    shares = [torch.randn(n, 4, 3, generator=g) * 2 - 1 for n in (1, 4, 2)]
    whole = torch.cat(shares).double()
    eps, momentum = 1e-5, 0.2
    stats = [torch.batch_norm_stats(s.to("wgpu"), eps) for s in shares]
    mean_all = torch.stack([m for m, _ in stats])
    invstd_all = torch.stack([i for _, i in stats])
    counts = torch.tensor([s.numel() // s.shape[1] for s in shares], dtype=torch.float32).to("wgpu")
    rm, rv = torch.zeros(4).to("wgpu"), torch.ones(4).to("wgpu")
    mean, invstd = torch.batch_norm_gather_stats_with_counts(
        whole.float().to("wgpu"), mean_all, invstd_all, rm, rv, momentum, eps, counts)
    var_b, mean_w = torch.var_mean(whole, dim=(0, 2), unbiased=False)
    n = whole.numel() // 4
    torch.testing.assert_close(mean.cpu().double(), mean_w, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(invstd.cpu().double(), (var_b + eps).rsqrt(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(rm.cpu().double(), momentum * mean_w, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(rv.cpu().double(), (1 - momentum) + momentum * var_b * n / (n - 1), rtol=1e-5,
                               atol=1e-6)
    # The input gradient of share 1 with sums over every share: batch norm's gradient over the whole batch.
    w = torch.randn(4, generator=g)
    dy = torch.randn(whole.shape, generator=g, dtype=torch.float64)
    x64 = whole.clone().requires_grad_()
    torch.nn.functional.batch_norm(x64, None, None, w.double(), None, True, 0.0, eps).backward(dy)
    share, dy_share = shares[1].to("wgpu"), dy[1:5].float().to("wgpu")
    sums = [torch.batch_norm_backward_reduce(dy[a:b].float().to("wgpu"), s.to("wgpu"), mean, invstd,
                                             w.to("wgpu"), True, True, True)
            for s, (a, b) in zip(shares, ((0, 1), (1, 5), (5, 7)))]
    sum_dy = sum(s[0] for s in sums)
    sum_dy_xmu = sum(s[1] for s in sums)
    gx = torch.batch_norm_backward_elemt(dy_share, share, mean, invstd, w.to("wgpu"), sum_dy, sum_dy_xmu,
                                         counts.to(torch.int32))
    torch.testing.assert_close(gx.cpu().double(), x64.grad[1:5], rtol=1e-4, atol=1e-5)
    # Outputs not asked for are undefined, as on CUDA.
    assert torch.batch_norm_backward_reduce(dy_share, share, mean, invstd, None, False, False, False) == (
        None, None, None, None)


def test_async_all_reduce_returns_before_the_result_is_back_and_wait_puts_it_in_the_tensor():
    """What DDP's reducer relies on: all_reduce returns a Work at once; its future's value is the host
    result (the reducer copies it into .grad); wait() writes it into the wgpu tensor, through its strides."""
    import torch.distributed as dist

    dist.init_process_group(wd.NAME, store=dist.HashStore(), rank=0, world_size=1)
    try:
        host = torch.randn(3, 4, generator=torch.Generator().manual_seed(2))
        host[1, 2] = float("nan")
        dev = host.to("wgpu").t()
        work = dist.all_reduce(dev, async_op=True)
        value = work.get_future().wait()[0]
        assert value.device.type == "cpu"
        torch.testing.assert_close(value, host.t().contiguous(), equal_nan=True)
        assert work.wait() and work.is_completed()
        torch.testing.assert_close(dev.cpu(), host.t(), equal_nan=True)
    finally:
        dist.destroy_process_group()
