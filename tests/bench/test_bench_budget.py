"""Quick runs bound time, not size (issue 18): the step-count policy with a fake clock, a smaller batch
only when the first step runs out of memory (and said so), and host-bound rows."""
import dataclasses

import pytest
import torch

from navitrain.bench import budget, measure, runner, workloads


def test_keep_timing_stops_at_the_budget_but_never_before_the_minimum():
    assert budget.keep_timing([], 50, 3.0)
    # a fast route: steps of 0.5 s until 3 s are spent
    assert budget.keep_timing([0.5] * 5, 50, 3.0) and not budget.keep_timing([0.5] * 6, 50, 3.0)
    # a slow route: one 20 s step outlasts the budget, yet a median and a spread need 3 steps
    assert budget.keep_timing([20.0, 20.0], 50, 3.0) and not budget.keep_timing([20.0] * 3, 50, 3.0)
    # the cap holds even while the budget lasts; without a budget the count is fixed
    assert not budget.keep_timing([1e-4] * 50, 50, 3.0)
    assert budget.keep_timing([99.0] * 29, 30, None) and not budget.keep_timing([99.0] * 30, 30, None)
    assert not budget.keep_timing([1.0, 1.0], 2, 0.5)  # a cap below the minimum wins


class FakeClock:
    """Each reading advances `tick` seconds: a step is read at its start, on return and after the
    read-back, so it lasts two ticks (one host, one device)."""

    def __init__(self, tick: float):
        self.now, self.tick = 1000.0, tick

    def __call__(self) -> float:
        self.now += self.tick
        return self.now


def _tiny_mlp():
    return workloads.get("mlp", "tiny")


@pytest.mark.parametrize("tick, expected", [(0.0625, 24), (0.25, 6), (5.0, 3)])  # exact in binary
def test_a_slower_route_times_fewer_steps_of_the_same_model(tick, expected):
    w = _tiny_mlp()
    data = measure.train_and_time(w, torch.device("cpu"), steps=50, warmup=2, budget_s=3.0, clock=FakeClock(tick))
    assert data["timed_steps"] == expected == len(data["step_ms"])
    assert data["batch_size"] == w.batch_size and data["batch_note"] == ""  # never a smaller model or batch
    assert data["median_ms"] == pytest.approx(2 * tick * 1e3)
    assert len(data["losses"]) == 2 + expected
    assert data["samples_per_s"] == pytest.approx(w.batch_size / (2 * tick))


def test_host_bound_only_where_the_device_queues_work():
    step = [0.010] * 5
    assert measure.host_bound("cpu", [0.010] * 5, step)["host_bound"] is None  # the CPU cannot tell
    bound = measure.host_bound("wgpu", [0.0095] * 5, step)
    assert bound["host_bound"] is True and bound["host_share"] == pytest.approx(0.95)
    assert bound["host_ms"] == pytest.approx(9.5)
    gpu = measure.host_bound("cuda", [0.001] * 5, step)
    assert gpu["host_bound"] is False and gpu["host_share"] == pytest.approx(0.1)
    # the fake clock's steps are half host, half device: not host-bound on a queued device
    assert measure.host_bound("wgpu", [0.5], [1.0])["host_bound"] is False


def _fits_in(limit: int, after_first_step: bool = False):
    """A loss that raises torch.OutOfMemoryError for batches over `limit` (or, with after_first_step,
    on the second call whatever the batch): a device with little memory."""
    calls = []

    def loss(logits, y):
        calls.append(logits.shape[0])
        if (after_first_step and len(calls) == 2) or (not after_first_step and logits.shape[0] > limit):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return torch.nn.functional.cross_entropy(logits, y)

    return loss, calls


def test_out_of_memory_on_the_first_step_halves_the_batch_and_says_so():
    loss, calls = _fits_in(16)
    w = dataclasses.replace(_tiny_mlp(), loss=loss)  # batch 64
    data = measure.train_and_time(w, torch.device("cpu"), steps=3, warmup=1)
    assert data["batch_size"] == 16 and calls[:3] == [64, 32, 16]
    assert data["batch_note"] == "batch 16 instead of 64: the first step at batch 32 ran out of device memory"
    assert data["samples_per_s"] == pytest.approx(16 / (data["median_ms"] / 1e3))


def test_out_of_memory_later_or_beyond_the_halvings_is_an_error():
    loss, _ = _fits_in(0, after_first_step=True)
    with pytest.raises(torch.OutOfMemoryError):  # memory that ran out mid-run is not the batch's fault
        measure.train_and_time(dataclasses.replace(_tiny_mlp(), loss=loss), torch.device("cpu"), steps=3, warmup=1)
    loss, calls = _fits_in(4)  # 64 -> 32 -> 16 -> 8: still too big after MAX_BATCH_HALVINGS
    with pytest.raises(torch.OutOfMemoryError):
        measure.train_and_time(dataclasses.replace(_tiny_mlp(), loss=loss), torch.device("cpu"), steps=3, warmup=1)
    assert calls == [64, 32, 16, 8]


def test_plans_quick_standard_is_budgeted_tiny_and_full_are_fixed():
    assert runner.plan_for(True, "standard")["budget_s"] == runner.QUICK_BUDGET_S
    assert runner.plan_for(True, "tiny") == {"warmup": 2, "steps": 3, "budget_s": None}
    assert runner.plan_for(False, "standard")["budget_s"] is None
    with pytest.raises(ValueError, match="budget"):
        runner.run_bench(["cpu"], ["mlp"], size="tiny", budget_s=0.0)


def test_standard_sizes_are_the_ones_bench_wgpu_train_times():
    """benchmarks/bench_wgpu_train.py's standard sizes, so the lead can compare step times."""
    r, g, m = (workloads.get(n, "standard") for n in ("resnet18", "gpt", "mlp"))
    assert (r.batch_size, r.shape) == (128, {"width": 64, "image_size": 32})
    assert (g.batch_size, g.shape) == (16, {"vocab": 4096, "context": 256, "d_model": 384, "layers": 6, "heads": 6})
    assert (m.batch_size, m.shape["hidden"]) == (512, [1024, 1024])
    assert r.signature() != workloads.get("resnet18", "tiny").signature()


def test_the_budget_reaches_the_route_process():
    """run_bench hands the budget to each route's child: a 0.3 s budget on tiny steps (about 10 ms on
    this CPU) times more than the minimum and fewer than the cap, and the report says how it was run."""
    report = runner.run_bench(["cpu"], ["mlp"], size="tiny", quick=True, steps=500, warmup=1, budget_s=0.3).to_dict()
    (row,) = report["results"]
    assert row["status"] == "ok", row["detail"]
    assert budget.MIN_TIMED_STEPS <= row["timed_steps"] < 500
    # stopped at the first step past the budget (or at the minimum, on a machine loaded enough that
    # three steps outlast it)
    assert sum(row["step_ms"]) >= 300
    assert row["timed_steps"] == budget.MIN_TIMED_STEPS or sum(row["step_ms"][:-1]) < 300
    assert (report["plan"], report["budget_s"], report["size"], report["representative"]) == \
        ("quick", 0.3, "tiny", False)
