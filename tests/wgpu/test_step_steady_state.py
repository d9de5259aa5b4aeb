"""An eager training step does the same host work every step once warm (issue 19: eager GPT steps on an
H100 switched between ~39 and ~65 ms of host time within one run). Whatever varies on a machine, no
navitrain-side state may: no heap buffers created, the same submissions and dispatches, host caches that
neither grow nor get cleared, no objects accumulating for Python's cyclic GC to scan. benchmarks/step_modes.py
prints the same per-step series with timings for the machine where the modes show."""
import json
import subprocess
import sys
from pathlib import Path

STEADY = ("new_buffers", "routes", "groups", "layouts", "views", "plans", "kernels", "bindgroups")


def test_eager_gpt_steps_repeat_the_same_host_work():
    # In a fresh process: after the whole suite the host caches hold other tests' entries and still grow for a
    # step or two (CI: bind groups 75, 76, 77, 77, 77), which says nothing about a training run's steady state.
    code = ("import json, sys; sys.path.insert(0, sys.argv[1]); import step_modes\n"
            "rows = step_modes.run('gpt', 'tiny', steps=5, warmup=2, fresh_batches=True)\n"
            "print(json.dumps(rows))\n")
    done = subprocess.run([sys.executable, "-c", code, str(Path(__file__).resolve().parents[2] / "benchmarks")],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(rows) == 5
    for column in STEADY:
        assert len({r[column] for r in rows}) == 1, (column, [r[column] for r in rows])
    # Dispatches and submits: steady in the runs seen alone, but after the whole suite CI saw 151, 152, 152, 152, 150
    # dispatches (cause not found yet; a few dispatches are not the H100's 1.7x mode switch).
    for column in ("dispatches", "submits"):
        counts = [r[column] for r in rows]
        assert max(counts) - min(counts) <= max(3, min(counts) // 50), (column, counts)
    assert rows[0]["new_buffers"] == 0
    assert rows[0]["dispatches"] > 100 and rows[0]["submits"] > 1
    assert all(r["cpu_ms"] > 0 and r["wall_ms"] >= r["submit_wall_ms"] for r in rows)


_GC_CHECK = """
import gc, json, torch
import navitrain.wgpu as nw
from navitrain.bench import models, workloads

workload = workloads.get("gpt", "tiny")
torch.manual_seed(0)
net = workload.build().to("wgpu")
train = models.train_step(net, workload.make_optimizer(net.parameters()), workload.loss)
batches = [workload.batch(seed) for seed in range(7)]
# Four warm-up steps: the first steps record each op's plan (wgpu/op_plans.py), a bounded cache that stops
# growing once the step's allocations repeat (from the third step; the fourth meets the loss's second address).
for x, y in batches[:4]:
    train(x.to("wgpu"), y.to("wgpu")).item()
gc.collect()
tracked = len(gc.get_objects())
gc.set_debug(gc.DEBUG_SAVEALL)  # what a collection finds unreachable is kept in gc.garbage, not freed
# Fresh batches uploaded, as a training loop does; no read-back inside: wgpu-py's queue.read_buffer makes
# a ctypes array type per call (`(c_uint8 * n).from_address`), a cycle of a few objects per .item() that
# only the GC frees -- wgpu-py's, and young, so cheap.
for x, y in batches[4:]:
    train(x.to("wgpu"), y.to("wgpu"))
nw.synchronize()
gc.collect()
cycles = sorted({type(o).__name__ for o in gc.garbage})
gc.set_debug(0)
gc.garbage.clear()
print(json.dumps({"cycles": cycles, "tracked": tracked, "now": len(gc.get_objects())}))
"""


def test_eager_gpt_steps_leave_nothing_for_the_cyclic_gc():
    """Every object a step makes dies by reference count: no cycles for the GC to break, and nothing
    accumulating. Either would feed the older GC generations, whose collections scan all of a torch
    process's ~300k tracked objects (~0.1 s on lavapipe's CPU): a slow step wherever one lands.
    In a fresh process, like the test above: after test_compile.py's tests, objects they left (the fake
    tensors of their compiled graphs) become garbage during these steps, which says nothing about a
    training run's steps. Dynamo keeps each compiled function as a global of the compiled code's module
    (here navitrain.bench.models, whose train_step those tests compile), and through it the traced graph
    module with its fake tensors, past torch._dynamo.reset(); they seem to be let go when that code runs again
    (493bd9b, before this test moved, fails the same way when the two files run together)."""
    done = subprocess.run([sys.executable, "-c", _GC_CHECK], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert not found["cycles"], found["cycles"]
    assert found["now"] - found["tracked"] <= 20, found
