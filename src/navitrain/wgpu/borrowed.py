"""A captured graph's outputs lent to the caller instead of copied (navitrain.wgpu.compile).

A replay writes its outputs into the same memory every time. Copying each of them out (a forward's
outputs include every activation saved for the backward) cost a kernel per output per step, and the
backward, given those copies, copied them again into its own static inputs. Instead each replay hands
out tensors whose storage *borrows* the graph's memory (tensor.BorrowedStorage), and before the graph
writes that memory again, every borrowing storage still alive gets a copy of its own (`Loans.call_back`).
Those that died by then (activations the backward consumed, gradients the optimizer consumed) cost
nothing, and a borrowed output fed to another graph is read where it is.
"""
from __future__ import annotations

import weakref

import torch

from navitrain.wgpu import runtime as _rt_mod
from navitrain.wgpu.kernels.copy import copy_into
from navitrain.wgpu.tensor import BorrowedStorage, WgpuStorage, wrap


class Loans:
    """The memory one captured graph overwrites on replay (`keep` holds it alive) and the storages that
    borrow it now. Borrowers keep this object, not the graph, alive: a graph dropped for a new capture
    frees its idle memory while what it lent stays valid (nothing writes it any more)."""

    __slots__ = ("keep", "out", "__weakref__")

    def __init__(self, keep) -> None:
        self.keep = keep
        self.out: list[weakref.ref] = []

    def lend(self, memory: WgpuStorage) -> BorrowedStorage:
        """A storage borrowing `memory` until the next `call_back`."""
        storage = BorrowedStorage(memory, self)
        self.out.append(weakref.ref(storage))
        return storage

    def pin(self, memory: WgpuStorage) -> BorrowedStorage:
        """A storage at `memory` that is never called back: another graph that reads this memory in place
        holds it (its static input), keeping the memory alive."""
        return BorrowedStorage(memory, self)

    def call_back(self) -> int:
        """Give every storage still borrowing a copy of its own; the memory may be written after this.
        Returns how many were copied."""
        if not self.out:
            return 0
        live = [s for s in (ref() for ref in self.out) if s is not None and s.lender is self]
        for storage in live:
            give_own_copy(storage)
        self.out = []   # only now: after a failure (out of memory) the rest are still called back next time
        return len(live)


def lender_of(ws: WgpuStorage) -> Loans | None:
    """The loans a storage borrows from now (None: memory of its own, or a caller's)."""
    return ws.lender if isinstance(ws, BorrowedStorage) else None


def give_own_copy(storage: BorrowedStorage) -> None:
    """Copy the borrowed memory into a new block (on the GPU, queued before whatever writes it next) and
    re-point the storage there. The copy moves 32-bit words, exact for every dtype's bits."""
    rt = _rt_mod._runtime or _rt_mod.runtime()
    nbytes = storage.nelem * storage.stype.itemsize
    words = (nbytes + 3) // 4   # blocks are 256-byte aligned and sized: the rounded-up tail is inside both
    block = rt.malloc(max(4, words * 4))
    if words:
        stype = rt.stypes[torch.int32]
        copy_into(_words(block, words, stype), _words(storage.block, words, stype))
    storage.own(block)


class _WordView(WgpuStorage):
    """A block seen as int32 words, for the copy; owns nothing."""

    __slots__ = ()

    def __init__(self, block, words: int, stype) -> None:
        self.block = block
        self.stype = stype
        self.nelem = words
        self.heap = block.heap
        self.base = block.offset // 4

    def __del__(self):
        pass


def _words(block, words: int, stype):
    return wrap(_WordView(block, words, stype), (words,), (1,), 0, torch.int32)
