"""Tuning compiles its candidates' kernels together, on several threads (kernel_cache.compile_together):
a driver takes ~0.4 s per GEMM pipeline (run 15, an H100 through Vulkan), which was 90% of tuning.

What must hold: a collecting run stops at its first kernel not compiled yet and notes how to build it;
only the collecting thread is affected; the kernels compiled together are the ones later runs use (no
second compile) and compute the right values; a kernel that fails to compile together fails again, with
the usual error, where it is used; and tuning with threads picks among the same shapes with the same
results as tuning one kernel at a time.
"""
import threading

import pytest
import torch

from navitrain.wgpu.errors import KernelCompileError
from navitrain.wgpu.kernel_cache import KernelCache, KernelNotCompiled
from navitrain.wgpu.kernels import gemm, gemm_tuning
from navitrain.wgpu.runtime import runtime
from navitrain.wgpu.tensor import empty


def _operands(M, N, K, seed):
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(M, K, generator=gen, dtype=torch.float64)
    b = torch.randn(K, N, generator=gen, dtype=torch.float64)
    return a, b, a.float().to("wgpu"), b.float().to("wgpu")


def _relative_error(got, want):
    return ((got.double() - want).norm() / want.norm()).item()


def test_collecting_stops_at_the_first_new_kernel_and_compiling_together_builds_it(monkeypatch):
    rt = runtime()
    monkeypatch.setattr(rt, "_kernels", {})
    a, b, aw, bw = _operands(37, 29, 53, seed=3)
    out = empty([37, 29], torch.float32)
    cfg = gemm.TileConfig(32, 32, 8, 4, 4)
    pending = {}
    with rt.collecting_kernels(pending):
        with pytest.raises(KernelNotCompiled):
            gemm.gemm(aw, bw, out, config=cfg)
    assert len(pending) == 1 and getattr(rt._collecting, "pending", None) is None
    assert rt.compile_together(pending, threads=2) == 1
    compiles = rt.compile_count
    gemm.gemm(aw, bw, out, config=cfg)
    assert rt.compile_count == compiles                      # the kernel compiled together was used
    assert _relative_error(out.cpu(), a @ b) < 1e-5


def test_only_the_collecting_thread_is_stopped(monkeypatch):
    rt = runtime()
    monkeypatch.setattr(rt, "_kernels", {})
    a, b, aw, bw = _operands(21, 19, 17, seed=4)
    results = {}

    def other_thread():
        out = empty([21, 19], torch.float32)
        gemm.gemm(aw, bw, out, config=gemm.TileConfig(32, 32, 8, 4, 4))
        results["error"] = _relative_error(out.cpu(), a @ b)

    with rt.collecting_kernels({}):
        worker = threading.Thread(target=other_thread)
        worker.start()
        worker.join()
    assert results["error"] < 1e-5


def test_a_kernel_that_fails_together_fails_again_where_it_is_used(monkeypatch):
    rt = runtime()
    monkeypatch.setattr(rt, "_kernels", {})
    broken = "@compute @workgroup_size(1) fn main() { let x: f32 = undefined_name; }"
    pending = {("test", "broken"): ("test_broken", 1, broken, False)}
    assert rt.compile_together(pending, threads=2) == 0
    assert ("test", "broken") not in rt._kernels
    with pytest.raises(KernelCompileError, match="test_broken"):
        rt.kernel(("test", "broken"), "test_broken", 1, broken)


def _tuning_from_scratch(monkeypatch, cache_dir):
    """Tuning forced on this adapter with an empty cache in `cache_dir`, nothing remembered and no kernel
    compiled yet; returns the runtime."""
    monkeypatch.setenv("NAVITRAIN_WGPU_TUNE", "force")
    monkeypatch.setenv("NAVITRAIN_CACHE_DIR", str(cache_dir))
    monkeypatch.setattr(gemm_tuning, "_cache", None)
    monkeypatch.setattr(gemm_tuning, "_picked", {})
    rt = runtime()
    monkeypatch.setattr(rt, "_kernels", {})
    return rt


def _tune_from_empty(monkeypatch, cache_dir, threads: str):
    """Tune a product and a strided convolution (forward and both gradients) from an empty cache; check
    the values against float64; return the shape classes tuned and the sizes of the batches compiled
    together."""
    monkeypatch.setenv("NAVITRAIN_WGPU_COMPILE_THREADS", threads)
    rt = _tuning_from_scratch(monkeypatch, cache_dir)
    together = []
    real = KernelCache.compile_together
    monkeypatch.setattr(type(rt), "compile_together",
                        lambda self, pending, n: together.append(len(pending)) or real(self, pending, n))
    a, b, aw, bw = _operands(40, 72, 24, seed=5)
    assert _relative_error(torch.mm(aw, bw).cpu(), a @ b) < 1e-5
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(2, 5, 9, 9, generator=gen, dtype=torch.float64, requires_grad=True)
    w = torch.randn(7, 5, 3, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    xw = x.detach().float().to("wgpu").requires_grad_()
    ww = w.detach().float().to("wgpu").requires_grad_()
    want = torch.nn.functional.conv2d(x, w, stride=2, padding=1)
    got = torch.nn.functional.conv2d(xw, ww, stride=2, padding=1)
    dy = torch.randn(want.shape, generator=gen, dtype=torch.float64)
    want.backward(dy)
    got.backward(dy.float().to("wgpu"))
    assert _relative_error(got.detach().cpu(), want.detach()) < 1e-5
    assert _relative_error(xw.grad.cpu(), x.grad) < 1e-5
    assert _relative_error(ww.grad.cpu(), w.grad) < 1e-5
    return sorted(gemm_tuning._load()), together


def test_tuning_with_threads_tunes_the_same_shapes_with_the_same_values(monkeypatch, tmp_path):
    """The same shape classes are tuned whether the candidates compile together (2 threads) or one by
    one (1), and both give float64's values."""
    monkeypatch.setattr(gemm_tuning, "CANDIDATES", gemm_tuning.CANDIDATES[8:11])
    alone, none_together = _tune_from_empty(monkeypatch, tmp_path / "one", "1")
    threaded, together = _tune_from_empty(monkeypatch, tmp_path / "two", "2")
    assert any(k.startswith("('mm'") for k in alone) and any("conv_wgrad" in k for k in alone)
    assert threaded == alone
    assert none_together == [] and together and min(together) >= 1


def test_a_choice_met_inside_a_collecting_run_is_timed_with_collection_off(monkeypatch, tmp_path):
    """pick_choice nested in another tuning's collecting run (a convolution's formulation chosen while the
    tiles of an enclosing product are collected): its options are timed with collection off, else they
    would stop at their first new kernel and be dropped as failures."""
    rt = _tuning_from_scratch(monkeypatch, tmp_path)
    seen = []
    real_time = gemm_tuning._time
    monkeypatch.setattr(gemm_tuning, "_time", lambda r, run: seen.append(getattr(r._collecting, "pending", None))
                        or real_time(r, run))
    a, b, aw, bw = _operands(20, 24, 28, seed=9)
    outs = {name: empty([20, 24], torch.float32) for name in ("one", "two")}
    options = {"one": lambda: gemm.gemm(aw, bw, outs["one"], config=gemm.TileConfig(32, 32, 8, 4, 4)),
               "two": lambda: gemm.gemm(aw, bw, outs["two"], config=gemm.TileConfig(64, 32, 16, 4, 4))}
    with rt.collecting_kernels({}):
        choice = gemm_tuning.pick_choice("test|nested-choice", options, "two")
    assert choice in options and seen == [None, None]
    for out in outs.values():
        assert _relative_error(out.cpu(), a @ b) < 1e-5
