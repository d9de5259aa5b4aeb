"""The built-in catalogue: what it covers, that it lists without torch, and that every case passes on
the `cpu` route (each in its own child, compared with the float64 CPU reference)."""
import subprocess
import sys

import pytest

from navitrain.probe import cases, session
from navitrain.routes import registry

REQUIRED = {
    # the list, by the case names that cover it
    "allocation and copies": {"alloc-fill", "copy-roundtrip", "copy-on-device"},
    "elementwise": {"elementwise-arith", "elementwise-unary", "activations-fwd-bwd"},
    "reductions": {"reduce-sum-mean", "reduce-max-argmax", "reduce-var-norm"},
    "matmul fp32/fp16/bf16": {"matmul-fp32", "matmul-fp16", "matmul-bf16"},
    "conv2d shapes, layouts": {"conv2d-classic", "conv2d-stride-pad", "conv2d-1x1", "conv2d-channels-last"},
    "conv1d, transposed": {"conv1d", "conv-transpose2d"},
    "pooling": {"maxpool2d", "avgpool2d-adaptive"},
    "normalisation": {"batchnorm2d-train", "layernorm"},
    "softmax, cross-entropy": {"softmax-logsoftmax", "cross-entropy"},
    "embedding, dropout, attention": {"embedding", "dropout-statistics", "sdpa"},
    "optimisers": {"sgd-step", "adamw-step"},
    "autocast": {"autocast-fp16", "autocast-bf16"},
    "training runs": {"tiny-cnn-3-steps", "tiny-transformer-3-steps"},
}


def test_catalogue_covers_the_training_surface():
    names = {c.name for c in cases.load_catalogue()}
    assert len(names) >= 40
    for what, needed in REQUIRED.items():
        assert needed <= names, f"{what}: missing {needed - names}"


def test_essential_set_is_small_and_contains_the_training_runs():
    essential = {c.name for c in cases.essential()}
    assert {"tiny-cnn-3-steps", "tiny-transformer-3-steps", "conv2d-classic"} <= essential
    assert len(essential) <= 8


def test_listing_the_catalogue_does_not_import_torch():
    code = "import sys; from navitrain.probe import cases; print(len(cases.load_catalogue()), 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60).stdout.split()
    assert int(out[0]) >= 40 and out[1] == "False"


def test_case_decorator_validates_and_refuses_duplicates():
    with pytest.raises(ValueError, match="dtype"):
        cases.case("bad-dtype", dtype="float8")
    with pytest.raises(ValueError, match="defined twice"):
        cases.case("conv2d-classic")(lambda device: None)


def _run_all(route):
    catalogue = cases.load_catalogue()
    run = session.run(catalogue, [route], jobs=2, timeout=120)
    assert not run.interrupted
    outcomes = {r.case: (r.outcome, r.detail) for r in run.results}
    assert set(outcomes) == {c.name for c in catalogue}
    # A device type without autocast reports those cases unavailable, by design; nothing else may fail.
    by_design = {c.name for c in catalogue if c.group == "autocast"}
    failed = {name: o for name, o in outcomes.items()
              if o[0] != "pass" and not (o[0] == "unavailable" and name in by_design)}
    assert not failed, failed
    return outcomes


@pytest.mark.slow
def test_full_catalogue_passes_on_cpu():
    outcomes = _run_all("cpu")
    assert outcomes["autocast-bf16"][0] == "pass"  # the CPU has autocast


@pytest.mark.slow
@pytest.mark.skipif("wgpu" not in registry.names(), reason="the wgpu route is not in this tree yet")
def test_full_catalogue_passes_on_wgpu():
    """On CI this is lavapipe (Mesa's Vulkan on the CPU): every case, compared with the CPU."""
    _run_all("wgpu")
