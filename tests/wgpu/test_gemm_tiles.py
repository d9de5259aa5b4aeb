"""Every GEMM tile the autotuner may pick, run for real and compared with a float64 product on the CPU.

On a GPU the tuner chooses among gemm_tuning.CANDIDATES per shape class; on lavapipe it never tunes, so
without this file most candidates (and split-K, and the older blocked thread layout) would only ever run
on the benchmark machine. Shapes cover both code paths of each kernel: bounds-checked (sizes that no tile
divides) and unchecked with 16-byte loads and stores (aligned multiples), plain, transposed and batched
operands, alpha/beta with an added matrix.
"""
import dataclasses

import pytest
import torch

from navitrain.wgpu.kernels import gemm, gemm_tuning
from navitrain.wgpu.tensor import empty

CONFIGS = gemm_tuning.CANDIDATES + [
    dataclasses.replace(gemm_tuning.CANDIDATES[1], interleave=False),
    dataclasses.replace(gemm_tuning.CANDIDATES[4], pad=False),
    gemm.TileConfig(64, 64, 16, 4, 4, splits=3),
]


def _skip_unless_it_fits(cfg):
    from navitrain.wgpu.runtime import runtime

    if not cfg.fits(runtime().limits):
        pytest.skip(f"{cfg.name} needs more workgroup memory or threads than this adapter has")


def _check(cfg, M, N, K, batch=1, ta=False, tb=False, alpha=1.0, beta=0.0, seed=0):
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(batch, M, K, generator=gen, dtype=torch.float64)
    b = torch.randn(batch, K, N, generator=gen, dtype=torch.float64)
    c = torch.randn(batch, M, N, generator=gen, dtype=torch.float64)
    want = alpha * (a @ b) + beta * c
    aw = a.float().transpose(1, 2).contiguous().to("wgpu").transpose(1, 2) if ta else a.float().to("wgpu")
    bw = b.float().transpose(1, 2).contiguous().to("wgpu").transpose(1, 2) if tb else b.float().to("wgpu")
    cw = c.float().to("wgpu")
    out = empty([batch, M, N], torch.float32)
    if batch == 1:
        gemm.gemm(aw[0], bw[0], out[0], alpha, beta, cw[0] if beta else None, cin_strides=(N, 1, 0), config=cfg)
    else:
        gemm.gemm(aw, bw, out, alpha, beta, cw if beta else None, cin_strides=(N, 1, M * N), config=cfg)
    got = out.cpu().double()
    err = ((got - want).norm() / want.norm()).item()
    assert err < 1e-5, f"{cfg.name} {M}x{N}x{K} batch {batch} ta={ta} tb={tb}: relative error {err:.1e}"


@pytest.mark.parametrize("cfg", CONFIGS, ids=[c.name for c in CONFIGS])
def test_tile_on_unaligned_shapes(cfg):
    _skip_unless_it_fits(cfg)
    _check(cfg, 67, 45, 3 * cfg.BK + 5, ta=True, alpha=0.5, beta=2.0, seed=1)


@pytest.mark.parametrize("cfg", CONFIGS, ids=[c.name for c in CONFIGS])
def test_tile_on_aligned_shapes_with_vector_loads(cfg):
    _skip_unless_it_fits(cfg)
    # Whole tiles and K a multiple of 64: no bounds checks, 16-byte loads and stores, long enough K for
    # the split-K variants to split.
    _check(cfg, 2 * cfg.BM, cfg.BN, 256, tb=True, seed=2)
    _check(cfg, cfg.BM, 2 * cfg.BN, 128, batch=3, alpha=1.5, beta=-1.0, seed=3)


def test_auto_split_makes_enough_workgroups_and_stays_exact():
    cfg = gemm.TileConfig(64, 64, 16, 4, 4, splits=0)
    assert gemm.auto_splits(cfg, 64, 64, 64 * 1024, 1) == gemm.TARGET_WORKGROUPS    # one tile, long K
    assert gemm.auto_splits(cfg, 1024, 1024, 1024, 1) == 1                          # 256 tiles already
    assert gemm.auto_splits(cfg, 64, 64, 16 * 16 * 3, 1) == 3                       # bounded by K
    _check(cfg, 64, 32, 4096, seed=4)


def test_forced_tuning_picks_a_candidate_and_caches_it(monkeypatch, tmp_path):
    monkeypatch.setenv("NAVITRAIN_WGPU_TUNE", "force")
    monkeypatch.setenv("NAVITRAIN_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(gemm_tuning, "_cache", None)
    monkeypatch.setattr(gemm_tuning, "_picked", {})
    monkeypatch.setattr(gemm_tuning, "CANDIDATES", [gemm.TileConfig(64, 64, 16, 4, 4), gemm.TileConfig(32, 32, 8, 4, 4),
                                                    gemm.TileConfig(32, 32, 8, 4, 4, splits=0),
                                                    gemm.TileConfig(128, 128, 8, 8, 8)])   # too big for N=40
    timed = []
    real_time = gemm_tuning._time

    def counting_time(rt, run):
        timed.append(1)
        return real_time(rt, run)

    monkeypatch.setattr(gemm_tuning, "_time", counting_time)
    _check(None, 96, 40, 1000, seed=5)
    assert len(timed) == 3
    assert (tmp_path / "gemm_tiles.v3.json").exists()
    monkeypatch.setattr(gemm_tuning, "_picked", {})
    _check(None, 96, 40, 1000, seed=6)          # the cached choice: no timing the second time
    assert len(timed) == 3


def test_reduce_into_a_given_output():
    """reduction.reduce(out=...): the weight-gradient path sums split-K slices straight into dw; any
    other output is refused with the reason, never written wrongly."""
    from navitrain.wgpu.kernels.reduction import reduce

    gen = torch.Generator().manual_seed(7)
    parts = torch.randn(1, 37, 6, 20, generator=gen, dtype=torch.float64)
    dw = empty([6, 5, 2, 2], torch.float32)
    assert reduce(parts.float().to("wgpu"), [1], False, "sum", torch.float32, out=dw) is dw
    err = ((dw.cpu().double().view(1, 6, 20) - parts.sum(1)).abs().max() / parts.sum(1).abs().max()).item()
    assert err < 1e-6
    with pytest.raises(ValueError, match="contiguous"):
        reduce(parts.float().to("wgpu"), [1], False, "sum", torch.float32, out=empty([20, 6], torch.float32).t())


def test_tuning_time_charges_extra_dispatches(monkeypatch):
    """The tuner's score is GPU time (timestamp queries) plus a host charge per dispatch past the
    first, so a split-K product (GEMM + sum pass) pays one charge and a plain one none."""
    from navitrain.wgpu.runtime import runtime

    rt = runtime()
    if rt._timer is None:
        pytest.skip("this adapter has no timestamp queries")
    monkeypatch.setattr(gemm_tuning, "HOST_SECONDS_PER_EXTRA_DISPATCH", 10.0)
    a, b = torch.randn(64, 512).to("wgpu"), torch.randn(512, 64).to("wgpu")
    out = empty([64, 64], torch.float32)
    plain = gemm_tuning._gpu_seconds(rt, lambda: gemm.gemm(a, b, out, config=gemm.TileConfig(32, 32, 8, 4, 4)), 2)
    split = gemm_tuning._gpu_seconds(
        rt, lambda: gemm.gemm(a, b, out, config=gemm.TileConfig(32, 32, 8, 4, 4, splits=4)), 2)
    assert 0 < plain < 10.0 < split < 20.0


def test_pick_choice_times_once_and_remembers(monkeypatch, tmp_path):
    """pick_choice times each option once per key, then answers from memory (the callers ask on every
    convolution) and from the disk cache in a new process."""
    monkeypatch.setenv("NAVITRAIN_WGPU_TUNE", "force")
    monkeypatch.setenv("NAVITRAIN_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(gemm_tuning, "_cache", None)
    monkeypatch.setattr(gemm_tuning, "_picked", {})
    x = torch.randn(64, 64).to("wgpu")
    out = empty([64, 64], torch.float32)
    calls = {"one": 0, "two": 0}

    def option(name, n):
        def run():
            calls[name] += 1
            for _ in range(n):
                gemm.gemm(x, x, out)
        return run

    options = {"one": option("one", 1), "two": option("two", 4)}
    assert gemm_tuning.pick_choice("test|choice", options, "two") == "one"
    timed = dict(calls)
    assert timed["one"] > 0 and timed["two"] > 0
    assert gemm_tuning.pick_choice("test|choice", options, "two") == "one"
    assert calls == timed                              # remembered: nothing ran again
    monkeypatch.setattr(gemm_tuning, "_picked", {})
    assert gemm_tuning.pick_choice("test|choice", options, "two") == "one"
    assert calls == timed                              # from the cache file


def test_long_tuning_says_how_far_it_got(monkeypatch, tmp_path, caplog):
    """Minutes of tuning in a first step must not look like a hang: past PROGRESS_SECONDS of tuning, a
    warning counts the shapes tuned and the seconds spent (here every shape, with the interval at 0)."""
    monkeypatch.setenv("NAVITRAIN_WGPU_TUNE", "force")
    monkeypatch.setenv("NAVITRAIN_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(gemm_tuning, "_cache", None)
    monkeypatch.setattr(gemm_tuning, "_picked", {})
    monkeypatch.setattr(gemm_tuning, "_progress", {"shapes": 0, "seconds": 0.0, "said": 0.0, "compiles": 0,
                                                   "compile_seconds": 0.0})
    monkeypatch.setattr(gemm_tuning, "CANDIDATES", [gemm.TileConfig(32, 32, 8, 4, 4)])
    monkeypatch.setattr(gemm_tuning, "PROGRESS_SECONDS", 0.0)
    from navitrain.wgpu.runtime import runtime

    rt = runtime()
    monkeypatch.setattr(rt, "_kernels", {})          # every kernel compiles anew: the compiles are counted
    with caplog.at_level("WARNING", logger="navitrain.wgpu"):
        _check(None, 40, 24, 72, seed=7)
        _check(None, 300, 24, 72, seed=8)          # another shape class
        _check(None, 300, 24, 72, seed=9)          # the same one again: nothing tuned, nothing said
    said = [r.getMessage() for r in caplog.records if "still timing tiles" in r.getMessage()]
    assert [m.split(" tuned")[0] for m in said] == ["navitrain: still timing tiles: 1 shape",
                                                    "navitrain: still timing tiles: 2 shapes"]
    assert all("s of it compiling" in m for m in said)
    summary = gemm_tuning.tuning_summary()
    assert summary["shapes"] == 2 and summary["compiles"] >= 1
    assert 0.0 < summary["compile_seconds"] <= summary["seconds"]
    monkeypatch.setattr(gemm_tuning, "PROGRESS_SECONDS", 1e9)   # the default interval: silent for short tuning
    caplog.clear()
    with caplog.at_level("WARNING", logger="navitrain.wgpu"):
        _check(None, 40, 24, 1000, seed=10)
    assert not [r for r in caplog.records if "still timing tiles" in r.getMessage()]


@pytest.mark.parametrize("keep, screen, timed_expected", [
    (1, [2.0, 1.0, 1.2, 5.0, 9.0], ["32x32", "64x32"]),            # within 25% of the fastest single call
    (3, [2.0, 1.0, 1.2, 5.0, 9.0], ["32x32", "64x32", "64x64"]),   # and at least SCREEN_KEEP of them
    (1, [None] * 5, ["64x64", "32x32", "64x32", "32x64", "128x64"]),  # no timestamps: everything timed
])
def test_screening_times_only_the_candidates_that_can_win(monkeypatch, tmp_path, keep, screen, timed_expected):
    """Tuning screens every candidate with one timed call and times only the close ones in full (most
    of ~25 tiles lose by far more than 25%); without a screening time, every candidate is timed."""
    monkeypatch.setenv("NAVITRAIN_WGPU_TUNE", "force")
    monkeypatch.setenv("NAVITRAIN_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(gemm_tuning, "_cache", None)
    monkeypatch.setattr(gemm_tuning, "_picked", {})
    tiles = [gemm.TileConfig(64, 64, 16, 4, 4), gemm.TileConfig(32, 32, 8, 4, 4), gemm.TileConfig(64, 32, 16, 4, 4),
             gemm.TileConfig(32, 64, 16, 4, 4), gemm.TileConfig(128, 64, 16, 8, 4)]
    monkeypatch.setattr(gemm_tuning, "CANDIDATES", tiles)
    monkeypatch.setattr(gemm_tuning, "SCREEN_KEEP", keep)
    shape_of = {id(t): f"{t.BM}x{t.BN}" for t in tiles}
    seen, timed = [], []

    def fake_screen(rt, run):
        run()   # the real kernel still runs (and must be right: _check compares the last product)
        seen.append(1)
        return screen[len(seen) - 1]

    def fake_time(rt, run):
        run()
        timed.append(1)
        return float(len(timed))          # the first timed (the screen's fastest) wins

    real_tune = gemm_tuning._tune
    picked = []

    def tune(*args, **kwargs):
        picked.append(real_tune(*args, **kwargs))
        return picked[-1]

    monkeypatch.setattr(gemm_tuning, "_screen", fake_screen)
    monkeypatch.setattr(gemm_tuning, "_time", fake_time)
    monkeypatch.setattr(gemm_tuning, "_tune", tune)
    _check(None, 200, 200, 64, seed=11)
    assert len(seen) == 5
    assert len(timed) == len(timed_expected)
    assert shape_of[id(picked[0])] == timed_expected[0]
