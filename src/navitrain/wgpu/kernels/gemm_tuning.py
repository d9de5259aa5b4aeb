"""Which GEMM tile to use: an autotuner per adapter and shape class, cached on disk.

The first time a product of a new shape class runs on a hardware adapter, every candidate tile that
fits the adapter is timed on the real operands (one warm-up, then the best of three samples of GPU
time from timestamp queries plus a small charge per extra dispatch; wall time on adapters without
timestamps), and the winner is remembered in `<cache dir>/gemm_tiles.v3.json` under the adapter's name and driver.
Later runs, and later processes, look the choice up. Shape classes bucket M, N and K by powers of two,
so a training run tunes a handful of classes once, during its first step.

Software adapters (lavapipe) and NAVITRAIN_WGPU_TUNE=0 use the built-in defaults instead; those were
picked from sweeps recorded in docs/benchmarks.md. NAVITRAIN_WGPU_TUNE=force tunes even on software
adapters (used by the tests).
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import threading
import time

from navitrain import _env, cache_files
from navitrain.wgpu import op_plans
from navitrain.wgpu.kernels.gemm_config import TileConfig, auto_splits
from navitrain.wgpu.profiling import profile
from navitrain.wgpu.runtime import runtime

log = logging.getLogger("navitrain.wgpu")

# Defaults (software adapters, NAVITRAIN_WGPU_TUNE=0): single-buffered tiles, which were as fast or
# faster in the run-8 sweep and need at most 16.9 KiB of workgroup memory.
LARGE = TileConfig(128, 128, 16, 8, 8, buffers=1)
MEDIUM = TileConfig(64, 64, 16, 8, 8, buffers=1)
SMALL = TileConfig(32, 32, 8, 4, 4)

# Measured on an H100 through Vulkan (docs/benchmarks.md): single-buffered 8x8-per-thread tiles win on
# large products there, double-buffered 4x4 tiles on small ones; other drivers may differ, hence tuning.
CANDIDATES = [
    TileConfig(64, 64, 16, 8, 8, buffers=1),
    TileConfig(128, 128, 8, 8, 8, buffers=1),
    TileConfig(128, 128, 16, 8, 8, buffers=1),
    TileConfig(128, 64, 16, 8, 4),
    TileConfig(64, 64, 16, 4, 4),
    TileConfig(64, 64, 16, 8, 8),
    TileConfig(128, 128, 16, 8, 8),
    TileConfig(64, 64, 8, 4, 4),
    TileConfig(64, 32, 16, 4, 4),    # more, smaller workgroups: mid-size products fill more SMs
    TileConfig(32, 64, 16, 4, 4),
    TileConfig(32, 32, 8, 4, 4),
    TileConfig(128, 64, 16, 8, 8, buffers=1),   # 128 threads: half the workgroups of 128x128
    # BK=32: fewer barriers per FMA, and 128-byte runs along K for operands gathered along K
    # (convolution weight gradients); 34 KiB of workgroup memory at 128x128.
    TileConfig(128, 128, 32, 8, 8, buffers=1),
    TileConfig(128, 64, 32, 8, 8, buffers=1),
    TileConfig(64, 64, 32, 8, 8, buffers=1),
    # The k-row padding of the workgroup tiles removes bank conflicts for operands loaded along K but
    # cost 4-wide tiles up to a quarter of their speed in the H200 sweep (docs/benchmarks.md, run 8).
    TileConfig(64, 64, 16, 4, 4, pad=False),
    TileConfig(128, 64, 16, 8, 4, pad=False),
    # Split-K with as many slices as fill the GPU: products with a small output and a long K
    # (weight gradients, 1024-sized squares on a 132-SM card).
    TileConfig(128, 128, 16, 8, 8, buffers=1, splits=0),
    TileConfig(64, 64, 16, 8, 8, buffers=1, splits=0),
    TileConfig(64, 64, 16, 4, 4, splits=0),
    TileConfig(32, 32, 8, 4, 4, splits=0),
    # A side of a few rows (the 3 input channels of a stem's grad-input): a 32-row tile there computes
    # 29 rows of padding (run 8: 26% of cuBLAS). Only tried where that side is at most 16 (_tune).
    TileConfig(4, 128, 8, 4, 4),
    TileConfig(8, 64, 16, 4, 4),
    TileConfig(128, 4, 8, 4, 4),
    TileConfig(64, 8, 16, 4, 4),
]

# Convolution weight gradients: a fixed number of K slices, deeper than auto_splits' 16-tile minimum,
# for outputs of one or two tiles over tens of thousands of positions (1x1 shortcuts: 64 workgroups of
# 128 threads left the H200 latency-bound at 16-39% of cuBLAS in run 9). Only tried for "conv_wgrad".
WGRAD_SPLITS = [TileConfig(64, 64, 16, 4, 4, splits=s) for s in (32, 128, 512)] + [
    TileConfig(128, 64, 16, 8, 4, splits=s) for s in (32, 128, 512)]

# Grad-input of a layer with a few input channels (a stem's 3): four positions per thread make only
# N*H*W/4 threads (8 warps per SM on an H200 at batch 128), so K may be split too. Only tried for
# "conv_dgrad" in NCHW where that side is at most 16. On the H200 they lost to the unsplit 4-row tile
# (282 vs 262 us, run 10): occupancy was not what held that product at 34-36% of cuBLAS.
THIN_DGRAD_SPLITS = [TileConfig(4, 128, 8, 4, 4, splits=s) for s in (4, 8)] + [TileConfig(8, 64, 16, 4, 4, splits=4)]


# Every convolution pass (issue 23): a 16-wide side for grouped layers of 9-16 channels a group, which
# a 32-wide tile half wastes and 8-wide ones cut in two (RegNet's and ResNeXt's middle stages, when
# the tuner sends them to the implicit GEMM rather than kernels/conv_grouped), and a 64x128 tile for
# stems (64 output channels against 12544-50176 positions a 224 px image, K = 147-363).
CONV_TILES = [TileConfig(16, 128, 8, 4, 4), TileConfig(128, 16, 8, 4, 4), TileConfig(64, 128, 16, 8, 8, buffers=1)]


def _extra_candidates(kind) -> list[TileConfig]:
    """Candidates only some products may use: fixed slice counts for convolution passes that split K."""
    if kind[0] == "conv_wgrad":
        return WGRAD_SPLITS
    if kind[0] == "conv_dgrad" and kind[1:] == (False,):
        return THIN_DGRAD_SPLITS
    return []


def _conv_candidates(kind) -> list[TileConfig]:
    """CONV_TILES, for every convolution pass."""
    return CONV_TILES if str(kind[0]).startswith("conv_") else []


_lock = threading.Lock()
_cache: dict | None = None
_adapter_key: str | None = None


def config_for(M: int, N: int, K: int, batch: int) -> TileConfig:
    """Built-in default by size: big tiles for big problems, smaller ones so small problems still make
    enough workgroups to fill the GPU."""
    tiles_large = -(-M // 128) * -(-N // 128) * batch
    if tiles_large >= 128:
        return LARGE
    if M * N * batch >= 64 * 64 * 32:
        return MEDIUM
    return SMALL


def shape_class(kind, M: int, N: int, K: int, batch: int) -> str:
    def bucket(x):
        return 1 << max(4, min(15, math.ceil(math.log2(max(x, 1)))))
    return f"{kind}|{bucket(M)}x{bucket(N)}x{bucket(K)}|b{bucket(batch) if batch > 1 else 1}"


# v2: kernels changed (interleaved thread layout, split-K candidates); choices timed on the old ones
# do not carry over. v3: candidates timed on the GPU, new split candidates for convolutions; v2's
# wall-clock choices ranked small products by their host cost (run 10).
FILENAME = "gemm_tiles.v3.json"


def _path():
    """The cache file; raises OSError when the cache directory cannot be created."""
    return cache_files.path(FILENAME)


def _shape_error(data) -> str | None:
    """Why `data` is not a tuning table ({adapter: {shape class or choice key: name}}), or None."""
    if not isinstance(data, dict):
        return f"the top level is {type(data).__name__}, not an object"
    for adapter, table in data.items():
        if not isinstance(table, dict):
            return f"the entry for {adapter!r} is {type(table).__name__}, not an object"
        for key, name in table.items():
            if not isinstance(name, str):
                return f"the choice {adapter!r} / {key!r} is {type(name).__name__}, not a name"
    return None


def _read_cache() -> dict:
    """The tuning table on disk. A damaged one (not JSON, or JSON of the wrong shape) is moved aside
    and tuning starts over; one that cannot be read means tuning in memory. Never raises."""
    try:
        path = _path()
        raw = path.read_bytes()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        _say_unwritable(exc)
        return {}
    try:
        data = json.loads(raw.decode("utf-8"))
        why = _shape_error(data)
    except ValueError as exc:  # (UnicodeDecodeError included)
        data, why = None, f"not JSON: {exc}"
    if why is None:
        return data
    try:
        aside = cache_files.move_aside(path)
    except OSError as exc:
        cache_files.say_once(("gemm-tuning", str(path)), (
            f"the GEMM tuning cache {path} is damaged ({why}) and could not be moved aside ({exc}): tiles are "
            f"tuned in memory by this process. Fix: move that file away yourself, or {cache_files.FIX}."))
        return {}
    cache_files.say_once(("gemm-tuning-moved", str(aside)), (
        f"the GEMM tuning cache {path} was damaged ({why}): moved it to {aside.name}; tiles are tuned again"))
    return {}


def _say_unwritable(exc: OSError) -> None:
    cache_files.say_once(("gemm-tuning", getattr(exc, "filename", None)), (
        f"the GEMM tuning cache cannot be kept on disk ({exc}): tiles are tuned in memory by this process "
        f"and tuned again by the next one. Fix: {cache_files.FIX}."))


def _load() -> dict:
    global _cache, _adapter_key
    if _cache is None:
        info = runtime().info
        _adapter_key = f"{info.name} | {info.backend} | {info.driver}"
        _cache = _read_cache()
    return _cache.setdefault(_adapter_key, {})


def _save() -> None:
    """Write the table (atomically: a crash mid-write leaves the old file). An unwritable cache is
    not worth failing a training run for: the choices stay in memory, and that is said once."""
    try:
        path = _path()
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(_cache, indent=1, sort_keys=True))
        os.replace(tmp, path)
    except OSError as exc:
        _say_unwritable(exc)


def _parse(text: str) -> TileConfig | None:
    try:
        for cfg in CANDIDATES + WGRAD_SPLITS + THIN_DGRAD_SPLITS + CONV_TILES + [LARGE, MEDIUM, SMALL]:
            if cfg.name == text:
                return cfg
    except Exception:
        pass
    return None


def _mode() -> str:
    """The tuning mode, "on", "off" or "force"; a malformed value raises naming the variable. Asked on every
    matrix product and convolution: parsing the variable each time cost about as much as the rest of a
    remembered pick (issue 19), so it is parsed only when its text changed."""
    return _env.value_on_hot_path(_env.WGPU_TUNE)


def pick(kind, M: int, N: int, K: int, batch: int, run) -> TileConfig:
    """The tile for this product; tunes (calling run(cfg) on the real operands) on first sight."""
    mode = _mode()
    memo_key = (mode, kind, M, N, K, batch)
    known = _picked.get(memo_key)
    if known is not None:
        return known
    rt = runtime()
    if mode == "off" or (mode == "on" and rt.info.software):
        best = _picked[memo_key] = config_for(M, N, K, batch)
        return best
    key = shape_class(kind, M, N, K, batch)
    with _lock:
        table = _load()
        cached = _parse(table.get(key, ""))
    if cached is not None:
        _picked[memo_key] = cached
        return cached
    if rt.capture is not None:  # timing would run (and record) work inside a graph capture
        return config_for(M, N, K, batch)
    _announce(rt)
    with _tuning(rt):
        best = _tune(rt, M, N, K, batch, run, splits_ok=kind[0] == "mm",
                     extra=_extra_candidates(kind) + _conv_candidates(kind))
    with _lock:
        table[key] = best.name
        _save()
    _picked[memo_key] = best
    return best


_announced = False


def _announce(rt) -> None:
    """Say once per process that the pause ahead is tuning, not a hang: on a new adapter the first
    training step compiles and times ~25 tiles per product shape (86 s for ResNet-18 on an H200)."""
    global _announced
    if not _announced:
        _announced = True
        try:
            where = f"cached in {_path()}"
        except OSError:
            where = "kept in memory: the cache directory cannot be created"
        log.warning("navitrain: timing GEMM tiles for %s (first use of these shapes on this adapter; "
                    "the first steps are slower, the choices are %s). NAVITRAIN_WGPU_TUNE=0 skips this.",
                    rt.info.name, where)


# Tuning a new adapter can take minutes of a first training step (run 14: ~2 min per torchvision model at
# 224 px on an H100, ~100 shape classes): past the first warning, say every PROGRESS_SECONDS of tuning how
# far it got, so that a long first step reads as work and not as a hang.
PROGRESS_SECONDS = 15.0
_progress = {"shapes": 0, "seconds": 0.0, "said": 0.0, "compiles": 0, "compile_seconds": 0.0}


_depth = [0]   # tunings under way in this process, nested ones included


@contextlib.contextmanager
def _tuning(rt):
    """Around one shape's tuning. Times it, and the pipeline compiles inside it (the runtime counts
    them), for the progress messages and tuning_summary(); a tuning inside another (a choice between
    formulations whose runs tune their products) counts as a shape, its time being the outer one's. And
    runs it with kernel collection off: a tuning met inside another's collecting run (_compile_together)
    is timed in full, where its candidates would otherwise stop at kernels not compiled yet and be
    dropped as failures."""
    started, compiles, compile_seconds = time.perf_counter(), rt.compile_count, rt.compile_seconds
    outer = _depth[0] == 0
    _depth[0] += 1
    try:
        with rt.not_collecting():
            yield
    finally:
        _depth[0] -= 1
        p = _progress
        p["shapes"] += 1
        if outer:
            p["seconds"] += time.perf_counter() - started
            p["compiles"] += rt.compile_count - compiles
            p["compile_seconds"] += rt.compile_seconds - compile_seconds
            if p["seconds"] - p["said"] >= PROGRESS_SECONDS:
                p["said"] = p["seconds"]
                log.warning("navitrain: still timing tiles: %d shape%s tuned in %.0f s so far, %.0f s of it "
                            "compiling %d kernels (once per shape on this adapter; later steps and runs use the "
                            "cache)", p["shapes"], "" if p["shapes"] == 1 else "s", p["seconds"],
                            p["compile_seconds"], p["compiles"])


def tuning_summary() -> dict:
    """What tuning cost this process so far: shape classes tuned, seconds, and the kernels compiled for
    it with their seconds (the rest is the candidates' timed runs)."""
    return {k: _progress[k] for k in ("shapes", "seconds", "compiles", "compile_seconds")}


# Choices already made in this process, by exact shape: a training step asks for the same products
# every step, and the table lookup above (shape class, parsing the stored name) costs ~10 us each.
_picked: dict = {}
# Eager ops' plans (op_plans.py) repeat the choices made here: they are dropped when these change (a shape tuned,
# or the cache loaded or replaced).
op_plans.depends_on(lambda: (id(_picked), len(_picked), id(_cache), len(_cache) if _cache else 0))


def pick_choice(key: str, options: dict, default: str) -> str:
    """Which of several ways to compute the same thing is fastest here (e.g. a convolution by implicit
    GEMM or by Winograd), timed once per key and cached like the tiles. `options` maps names to
    zero-argument callables that do the work. Remembered per process like the tiles (_picked): the
    callers ask on every convolution."""
    mode = _mode()
    memo_key = ("choice", mode, key)
    known = _picked.get(memo_key)
    if known is not None:
        return known
    rt = runtime()
    if mode == "off" or (mode == "on" and rt.info.software):
        return default
    with _lock:
        table = _load()
        cached = table.get(key)
    if cached in options:
        _picked[memo_key] = cached
        return cached
    if rt.capture is not None:   # the default stands in, untimed and not remembered
        return default
    _announce(rt)
    timings = []
    with _tuning(rt):
        _compile_together(rt, list(options.values()), lambda run: run())
        for name, run in options.items():
            try:
                timings.append((_time(rt, run), name))
            except Exception as exc:
                log.debug("option %s for %s failed: %s", name, key, exc)
    for seconds, name in sorted(timings):
        log.debug("  %s: %-10s %9.1f us", key, name, seconds * 1e6)
    best = min(timings)[1] if timings else default
    with _lock:
        table[key] = best
        _save()
    _picked[memo_key] = best
    return best


def remembered(exact, decide):
    """decide()'s answer, remembered in this process by `exact` (a hashable of everything the answer
    depends on, the settings read included) beside the tuner's own choices, and forgotten with them. For
    callers that ask on every op (a convolution's formulation): working the answer out each time (the
    shape-class key built, the setting parsed) was 5-15% of a small convolution's eager host time. Inside
    a capture an untuned shape takes its default, which is not remembered."""
    known = _picked.get(exact)
    if known is not None:
        return known
    answer = decide()
    if runtime().capture is None:
        _picked[exact] = answer
    return answer


def choice_by_shape(exact, key, options: dict, default: str) -> str:
    """pick_choice remembered by `exact` (see remembered); `key()` builds the shape-class key only when
    the answer is not remembered yet."""
    return remembered(("by_shape", exact, _env.raw(_env.WGPU_TUNE)),
                      lambda: pick_choice(key(), options, default))


# Screening before timing: every candidate runs once (its kernels compiled together before, see
# _compile_together) and once more under timestamp queries; only those within SCREEN_MARGIN of the fastest
# single call (and at least SCREEN_KEEP of them) get the full best-of-three timing: most of ~25 candidates
# lose by far more than 25%. (Run 15: compiling, not timing, was 78-94% of a long tuning at 224 px.)
SCREEN_MARGIN = 1.25
SCREEN_KEEP = 3


def _screen(rt, run) -> float | None:
    """GPU seconds of one call after a warm-up call; None without timestamp queries (one call's wall time
    is too noisy to drop anything on: then every candidate is timed in full)."""
    run()
    rt.synchronize()
    if getattr(rt, "_timer", None) is None or rt.profile is not None:
        return None
    return _gpu_seconds(rt, run, 1)


def _survivors(screened: list) -> list:
    """The candidates worth timing in full, fastest first: screened is [(seconds or None, candidate)]."""
    if any(seconds is None for seconds, _ in screened):
        return [c for _, c in screened]
    ranked = sorted(screened, key=lambda t: t[0])
    if not ranked:
        return []
    limit = ranked[0][0] * SCREEN_MARGIN
    return [c for k, (seconds, c) in enumerate(ranked) if seconds <= limit or k < SCREEN_KEEP]


def _time(rt, run) -> float:
    """Seconds per call of run(): GPU time from timestamp queries where the adapter has them (best of
    three samples of three calls, see _gpu_seconds), else wall time of repeated calls between
    synchronisations."""
    run()
    rt.synchronize()
    if getattr(rt, "_timer", None) is not None and rt.profile is None:
        return min(_gpu_seconds(rt, run, 3) for _ in range(3))
    reps = 1
    while True:
        t0 = time.perf_counter()
        for _ in range(reps):
            run()
        rt.synchronize()
        elapsed = time.perf_counter() - t0
        if elapsed >= 2e-3 or reps >= 64:
            break
        reps *= 4
    best = elapsed / reps
    for _ in range(2):
        t0 = time.perf_counter()
        for _ in range(reps):
            run()
        rt.synchronize()
        best = min(best, (time.perf_counter() - t0) / reps)
    return best


# Host time an eager step pays for each dispatch beyond an op's first (a split-K product's sum pass,
# say): about half the 25-44 us of a whole small op on the H200 hosts (bench_wgpu_overhead.py), the
# rest being PyTorch's dispatch, which the op pays once.
HOST_SECONDS_PER_EXTRA_DISPATCH = 15e-6


def _gpu_seconds(rt, run, reps: int) -> float:
    """GPU seconds per call of run(), summed over its dispatches, plus the host cost of each dispatch
    past the first. Wall time would rank small products by their host cost: on the H200 a 100 us
    grad-weight timed 370-590 us from Python (run 10), the tiles' differences lost in the noise, and
    in a captured graph only the GPU time is left. GPU time alone, though, picked a split-K 1024^2
    product 6% faster on the GPU whose sum pass doubled its host time in eager mode (run 10)."""
    with profile() as table:
        for _ in range(reps):
            run()
    dispatches = sum(count for count, _ in table.values()) / reps
    gpu = sum(seconds for _, seconds in table.values()) / reps
    return gpu + max(0.0, dispatches - 1) * HOST_SECONDS_PER_EXTRA_DISPATCH


# A run may need several kernels (a split-K product and its sum pass, a convolution's phases): each round
# of collecting reaches one more of them.
COLLECT_ROUNDS = 4


def _compile_together(rt, candidates: list, run) -> None:
    """Compile the kernels every candidate's run needs before any is timed, on several threads
    (NAVITRAIN_WGPU_COMPILE_THREADS): a driver compiles a pipeline in ~0.4 s (run 15, H100), ~25
    candidates one after another were 90% of tuning. Each round runs the candidates with kernel
    collection on: a run stops at its first kernel not compiled yet; runs that get through did real
    work on the operands, as screening would, and are not run again here."""
    threads = _env.integer(_env.WGPU_COMPILE_THREADS) or min(16, os.cpu_count() or 1)
    if threads <= 1:
        return
    from navitrain.wgpu.kernel_cache import KernelNotCompiled

    left = list(candidates)
    for _ in range(COLLECT_ROUNDS):
        pending: dict = {}
        stopped = []
        with rt.collecting_kernels(pending):
            for candidate in left:
                try:
                    run(candidate)
                except KernelNotCompiled:
                    stopped.append(candidate)
                except Exception:   # screening meets it again, and drops the candidate
                    pass
        if not pending or not rt.compile_together(pending, threads):
            return
        left = stopped


def _tune(rt, M, N, K, batch, run, splits_ok: bool = True, extra: list = ()) -> TileConfig:
    candidates = [c for c in CANDIDATES if c.fits(rt.limits)]
    # explicit slice counts (convolutions), where each slice still walks at least 4 tiles of K
    candidates += [c for c in extra if c.fits(rt.limits) and K >= 4 * c.BK * c.splits]
    # Tiles much larger than the problem only add bounds checks; split-K only helps long K.
    candidates = [c for c in candidates if c.BM <= max(32, 2 * M) and c.BN <= max(32, 2 * N)]
    # Thin tiles only for thin products (they would double the tuning time of every other shape).
    candidates = [c for c in candidates if (c.BM >= 32 or M <= 16) and (c.BN >= 32 or N <= 16)]
    # (Convolutions split K themselves: weight gradients by auto_splits, or the extra candidates' counts.)
    candidates = [c for c in candidates if c.splits == 1 or (c in extra) or (
        splits_ok and (K >= 4 * c.BK * c.splits if c.splits else auto_splits(c, M, N, K, batch) > 1))]
    _compile_together(rt, candidates, run)
    screened = []
    for cfg in candidates:
        try:
            screened.append((_screen(rt, lambda: run(cfg)), cfg))
        except Exception as exc:  # a tile the driver rejects is simply not a candidate
            log.debug("GEMM tile %s failed on %dx%dx%d: %s", cfg.name, M, N, K, exc)
    timings = []
    for cfg in _survivors(screened):
        try:
            timings.append((_time(rt, lambda: run(cfg)), cfg))
        except Exception as exc:
            log.debug("GEMM tile %s failed on %dx%dx%d: %s", cfg.name, M, N, K, exc)
    if not timings:
        return config_for(M, N, K, batch)
    timings.sort(key=lambda t: t[0])
    for seconds, cfg in timings:
        log.debug("  %-26s %9.1f us", cfg.name, seconds * 1e6)
    log.info("GEMM %dx%dx%d (batch %d): tile %s (%.3f ms)", M, N, K, batch, timings[0][1].name, timings[0][0] * 1e3)
    return timings[0][1]
