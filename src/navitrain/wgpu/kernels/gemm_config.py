"""What a GEMM launch is configured by: the tile (`TileConfig`) and how K is cut into slices.

Both the kernels (gemm.py) and the tuner that picks among tiles (gemm_tuning.py) need these; keeping
them here lets the dependency run one way, gemm -> gemm_tuning -> gemm_config.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TileConfig:
    BM: int = 64
    BN: int = 64
    BK: int = 8
    TM: int = 4
    TN: int = 4
    buffers: int = 2   # 2: next tile's loads overlap this tile's FMAs (double-buffered workgroup memory)
    splits: int = 1    # >1: K is cut into this many slices run by separate workgroups, then summed;
                       # 0: as many slices as fill the GPU (auto_splits), for long K and a small output
    # True: a thread's vec4 groups of rows (and of columns) are spread a thread-row (column) apart, so
    # the 32 threads of a warp read 32 consecutive vec4s of the B tile (no bank conflicts) and write
    # neighbouring columns of C. False: each thread owns one contiguous TMxTN block (the first design;
    # kept so that sweeps can compare the two).
    interleave: bool = True
    # True: each k-row of the workgroup tiles is padded by one vec4 (see gemm_source); False only for sweeps.
    pad: bool = True

    @property
    def name(self) -> str:
        return f"{self.BM}x{self.BN}x{self.BK}/{self.TM}x{self.TN}" + ("" if self.buffers == 2 else "/b1") + (
            f"/s{self.splits}" if self.splits > 1 else "/sA" if self.splits == 0 else "") + (
            "" if self.interleave else "/blk") + ("" if self.pad else "/np")

    @property
    def shared_bytes(self) -> int:
        return self.buffers * self.BK * (self.BM + self.BN + (8 if self.pad else 0)) * 4

    @property
    def threads(self) -> int:
        return (self.BM // self.TM) * (self.BN // self.TN)

    def fits(self, limits: dict) -> bool:
        """Whether the adapter can run it (threads per workgroup, workgroup memory)."""
        return (self.threads <= int(limits.get("max-compute-invocations-per-workgroup", 256))
                and self.shared_bytes <= int(limits.get("max-compute-workgroup-storage-size", 16384)))

    def check(self) -> None:
        if self.TN % 4 or self.BN % self.TN or self.BM % self.TM or self.TM % 4:
            raise ValueError(f"invalid GEMM tile {self}")
        if (self.BM * self.BK) % self.threads or (self.BK * self.BN) % self.threads:
            raise ValueError(f"GEMM tile {self}: tile loads do not divide among {self.threads} threads")


# Split-K with splits=0 aims at this many workgroups (a couple per SM on big GPUs), each still walking at
# least MIN_K_STEPS steps of K so that the partial products stay a small share of the work.
TARGET_WORKGROUPS = 256
MIN_K_STEPS = 16


def k_slices(K: int, splits: int, BK: int) -> tuple[int, int]:
    """(slice length, number of slices) for cutting K about `splits` ways into whole BK tiles."""
    kslice = -(-K // max(1, splits))
    kslice = -(-kslice // BK) * BK
    return kslice, -(-K // kslice)


def auto_splits(cfg: TileConfig, M: int, N: int, K: int, batch: int) -> int:
    """How many K slices a product needs to make ~TARGET_WORKGROUPS workgroups (1: no split)."""
    tiles = -(-M // cfg.BM) * -(-N // cfg.BN) * batch
    return max(1, min(-(-TARGET_WORKGROUPS // tiles), K // (cfg.BK * MIN_K_STEPS)))
