"""benchmarks/max_batch.py --predict (issue 20): the largest batch under a cap from small uncapped tries.

Synthetic traces (pure Python) check the fits, the extrapolation of a trace and the allocator replay against
the replay of the true trace at every batch; one tiny end-to-end run on this machine's adapter checks that
the batch predicted here fits under a real cap and 10% more does not.
"""
import importlib.util
import json
import random
from pathlib import Path

import pytest

_BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def _load(name):
    spec = importlib.util.spec_from_file_location(name, _BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


mbp = _load("max_batch_predict")
max_batch = _load("max_batch")
MiB = 1 << 20


class SyntheticStep:
    """A made-up training step: `weights` constant requests, `acts` requests of per_sample * batch bytes
    kept until the backward (in reverse), and `temps` short-lived ones; freed in a fixed order."""

    def __init__(self, seed, weights=5, acts=12, temps=6, extra=lambda batch: False):
        rng = random.Random(seed)
        self.weights = [rng.randrange(1 << 10, 1 << 21) for _ in range(weights)]
        self.acts = [(rng.randrange(0, 4096), rng.randrange(1 << 12, 1 << 17)) for _ in range(acts)]
        self.temps = [(rng.randrange(0, 4096), rng.randrange(1 << 10, 1 << 16)) for _ in range(temps)]
        self.extra = extra  # whether at this batch a split-K-like partial buffer is requested as well

    def trace(self, batch):
        trace, k = [], 0

        def alloc(nbytes):
            nonlocal k
            trace.append(nbytes)
            k += 1
            return k - 1

        kept = [alloc(n) for n in self.weights]
        for _ in range(2):
            live = [alloc(a + b * batch) for a, b in self.acts]
            for a, b in self.temps:
                trace.append(-(alloc(a + b * batch) + 1))
            if self.extra(batch):
                trace.append(-(alloc(3 * MiB) + 1))
            for block in reversed(live):
                trace.append(-(block + 1))
        return trace + [-(block + 1) for block in kept]

    def sites(self, batch):
        """Where each request comes from, as max_batch.py records it."""
        step = [f"act{i}" for i in range(len(self.acts))] + [f"tmp{i}" for i in range(len(self.temps))]
        extra = ["split"] if self.extra(batch) else []
        return [f"w{i}" for i in range(len(self.weights))] + 2 * (step + extra)


def _search(fits, most):
    return max_batch.largest_batch(fits, most)


@pytest.mark.parametrize("text,nbytes", [("6GiB", 6 << 30), ("48MiB", 48 << 20), ("512KiB", 512 << 10),
                                         ("1.5GiB", 3 << 29), ("4096", 4096), (" 2gb ", 2 * 10 ** 9)])
def test_parse_bytes(text, nbytes):
    assert mbp.parse_bytes(text) == nbytes


def test_fit_line_recovers_a_line_and_reports_the_worst_residual():
    rng = random.Random(1)
    a, b = rng.uniform(1e6, 1e8), rng.uniform(1e5, 1e7)
    exact = mbp.fit_line([(n, a + b * n) for n in (1, 2, 4, 7)])
    assert exact["a"] == pytest.approx(a) and exact["b"] == pytest.approx(b) and exact["max_residual"] < 1e-3
    bent = mbp.fit_line([(1, 10.0), (2, 20.0), (3, 40.0)])   # not a line: the residual says so
    assert bent["b"] == pytest.approx(15.0) and bent["max_residual"] == pytest.approx(10 / 3)
    assert bent["max_residual_share"] == pytest.approx(10 / 3 / 20)
    with pytest.raises(ValueError):
        mbp.fit_line([(4, 1.0), (4, 2.0)])


@pytest.mark.parametrize("a,b,limit,most,expected", [(10, 3, 40, 100, 10), (10, 3, 39, 100, 9), (50, 3, 40, 100, 0),
                                                     (10, 3, 10 ** 9, 100, 100), (10, 0, 40, 100, 100),
                                                     (50, 0, 40, 100, 0)])
def test_largest_under(a, b, limit, most, expected):
    assert mbp.largest_under({"a": a, "b": b}, limit, most) == expected


def test_trace_stats_counts_size_classes_and_per_class_high_water():
    # 3000 B -> 4 KiB class, 2 MiB + 1 -> 2.25 MiB (eighths above 1 MiB); two 4 KiB blocks live at once.
    trace = [3000, 3000, -1, 2 * MiB + 1, -3, -2, 100, -4]
    stats = mbp.trace_stats(trace)
    assert stats["largest_block"] == 2 * MiB + MiB // 4
    assert stats["peak_allocated"] == 4096 + 2 * MiB + MiB // 4
    assert stats["carved"] == 2 * 4096 + 2 * MiB + MiB // 4 + 256
    assert stats["allocations"] == 4


def test_replay_follows_the_allocator_rules():
    trace = SyntheticStep(2).trace(64)
    uncapped = mbp.replay(trace, 64 * MiB, 128 * MiB, None)
    assert uncapped["fits"] and uncapped["peak_reserved"] % (64 * MiB) == 0
    stats = mbp.trace_stats(trace)
    # the cap counts heaps: every carved block must fit (no heap here goes idle during the step) ...
    assert mbp.replay(trace, 64 * MiB, 128 * MiB, stats["carved"])["fits"]
    assert not mbp.replay(trace, 64 * MiB, 128 * MiB, stats["peak_allocated"] - 1)["fits"]
    # ... and one block above the largest binding is refused whatever the cap
    refused = mbp.replay(trace, 64 * MiB, stats["largest_block"] - 256, None)
    assert not refused["fits"] and "storage binding" in refused["error"]


@pytest.mark.parametrize("seed", [3, 4])
def test_extrapolated_trace_is_the_trace_at_that_batch(seed):
    step = SyntheticStep(seed, extra=lambda batch: batch < 8)
    batches = (2, 8, 16, 32)
    trace_at, check = mbp.extrapolate({n: step.trace(n) for n in batches}, {n: step.sites(n) for n in batches})
    assert check["from_batches"] == [16, 32]
    assert check["per_batch"]["8"] == {"off_the_line": 0, "worst_error_bytes": 0, "only_at_largest": 0, "only_here": 0}
    # batch 2 makes one more request per step (a split-K partial, say): lined up around it, the rest is on the line
    assert check["per_batch"]["2"] == {"off_the_line": 0, "worst_error_bytes": 0, "only_at_largest": 0, "only_here": 2}
    for n in (9, 100, 777):
        assert trace_at(n) == step.trace(n)


def test_extrapolated_trace_keeps_the_largest_batch_pattern():
    # the extra request exists from batch 8 on (a split that starts once K is long): the prediction keeps it
    step = SyntheticStep(11, extra=lambda batch: batch >= 8)
    trace_at, check = mbp.extrapolate({n: step.trace(n) for n in (2, 4, 8)}, {n: step.sites(n) for n in (2, 4, 8)})
    assert check["per_batch"]["4"] == {"off_the_line": 0, "worst_error_bytes": 0, "only_at_largest": 2, "only_here": 0}
    for n in (9, 64):
        assert trace_at(n) == step.trace(n)


def test_extrapolate_reports_a_bent_request():
    traces = {n: SyntheticStep(5).trace(n) for n in (1, 2, 4)}
    traces[1][7] += 4096   # one request of batch 1 is off the line through batches 2 and 4
    _, check = mbp.extrapolate(traces)   # no sites: lined up by order, the traces having the same shape
    assert check["per_batch"]["1"]["off_the_line"] == 1 and check["per_batch"]["1"]["worst_error_bytes"] == 4096
    assert check["per_batch"]["2"]["off_the_line"] == 0
    # a trace recorded without sites lines up with one that has them by order, not by nothing
    _, mixed = mbp.extrapolate(traces, {4: SyntheticStep(5).sites(4)})
    assert mixed["per_batch"] == check["per_batch"]
    with pytest.raises(ValueError):
        mbp.extrapolate({4: traces[4]})


@pytest.mark.parametrize("seed,cap_mib,heap_mib,binding_mib", [(6, 300, 512, 2048), (7, 1000, 64, 128),
                                                                (8, 48, 64, 128), (9, 6144, 512, 2047)])
def test_prediction_is_the_largest_batch_whose_true_trace_fits(seed, cap_mib, heap_mib, binding_mib):
    step = SyntheticStep(seed, extra=lambda batch: batch < 3)
    measured = [{"batch": n, "trace": step.trace(n)} for n in (4, 8, 16)]
    target = {"heap_bytes": heap_mib * MiB, "max_binding_bytes": binding_mib * MiB}
    most = 4096
    result = mbp.predict(measured, cap_mib * MiB, target, most, _search)

    def truth(n):
        return mbp.replay(step.trace(n), heap_mib * MiB, binding_mib * MiB, cap_mib * MiB)["fits"]

    n = result["predicted"]
    assert (n == 0 or truth(n)) and (n == most or not truth(n + 1))
    bounds = result["bounds"]
    assert n <= bounds["upper_from_allocated"] and n <= bounds["binding"]
    assert result["fits"]["peak_allocated"]["max_residual_share"] < 0.05


def test_target_adapter_of_a_limits_profile():
    card = mbp.target_adapter("rx5600xt", {})
    assert card["heap_bytes"] == 512 * MiB
    assert card["max_binding_bytes"] == (2 ** 31 - 4) // 256 * 256
    here = mbp.target_adapter(None, {"heap_bytes": 64 * MiB, "max_binding_bytes": 128 * MiB})
    assert here["heap_bytes"] == 64 * MiB and here["max_binding_bytes"] == 128 * MiB


def test_markdown_table_has_the_fits_and_the_verification():
    step = SyntheticStep(10)
    measured = [{"batch": n, "trace": step.trace(n)} for n in (1, 2, 4)]
    row = mbp.predict(measured, 256 * MiB, {"heap_bytes": 512 * MiB, "max_binding_bytes": 2048 * MiB}, 4096,
                      _search)
    row.update(model="gpt", precision="fp16", verified={"limit": "16MiB", "tries": [(5, True), (6, False)]})
    table = mbp.markdown([row]).splitlines()
    assert len(table) == 3 and table[2].startswith("| gpt | fp16 |")
    assert f"| {row['predicted']} |" in table[2] and "5: fits, 6: fails under 16MiB here" in table[2]


@pytest.mark.slow
def test_tiny_prediction_holds_under_a_real_cap(tmp_path):
    """Measured at batches 4 and 8 on this adapter, predicted under 8 MiB, then tried for real under that cap."""
    out = tmp_path / "predicted.json"
    code = max_batch.main(["--predict", "--verify", "--size", "tiny", "--models", "resnet18", "--precisions", "fp32",
                           "--limit", "8MiB", "--batches", "4,8", "--max", "256", "--profile", "none",
                           "--out", str(out), "--markdown", str(tmp_path / "predicted.md")])
    assert code == 0
    row = json.loads(out.read_text())["results"][0]
    assert row["trace_check"]["from_batches"] == [4, 8] and row["trace_check"]["per_batch"]["4"]["off_the_line"] == 0
    assert row["peak_bytes_reported"] == [row["measured"][str(n)]["peak_allocated"] for n in (4, 8)]
    verified = row["verified"]
    assert verified["predicted_here"] == row["predicted"] > 8
    assert verified["as_predicted"], verified
    assert "| resnet18 | fp32 |" in (tmp_path / "predicted.md").read_text()


def test_sites_line_up_when_an_edit_moved_their_lines():
    step = SyntheticStep(12, extra=lambda batch: batch < 4)
    sites = {n: [f"kernels.py:run:{40 + 27 * (n == 8)} {site}" for site in step.sites(n)] for n in (2, 4, 8)}
    _, check = mbp.extrapolate({n: step.trace(n) for n in (2, 4, 8)}, sites)
    assert check["per_batch"]["4"]["only_at_largest"] == 0 and check["per_batch"]["2"]["only_here"] == 2


def test_sites_recorded_another_way_fall_back_to_the_order():
    step = SyntheticStep(13)
    sites = {2: step.sites(2), 4: step.sites(4), 8: [f"v2_{site}" for site in step.sites(8)]}
    trace_at, check = mbp.extrapolate({n: step.trace(n) for n in (2, 4, 8)}, sites)
    assert check["per_batch"]["4"] == {"off_the_line": 0, "worst_error_bytes": 0, "only_at_largest": 0, "only_here": 0}
    assert trace_at(50) == step.trace(50)
