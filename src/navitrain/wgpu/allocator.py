"""A caching allocator: tensors live in blocks carved out of a few large GPU buffers ("heaps").

Why heaps rather than one buffer per tensor: a kernel is bound to buffers through a bind group, and
creating a bind group costs tens of microseconds. With every tensor inside one of a handful of heaps,
the set of distinct (heap, heap, ...) combinations is tiny and every bind group is cached; the tensor's
place inside its heap is passed to the kernel as an element offset.

Blocks are rounded up to size classes (at most 1/8 waste above 1 MiB) and kept on per-class free lists
when their tensor dies, so a training loop that allocates the same sizes every step reaches a steady
state after its first step: `memory_reserved()` stops growing. `empty_cache()` gives back heaps with no
live block. A tensor larger than a heap gets a dedicated heap of its own, up to the adapter's largest
storage binding; anything larger is refused with an error naming the sizes.

A free list hands out its block of the lowest address (heap, offset) first, so which block an allocation
gets depends only on which blocks are free, not on the order they were freed in: a step that allocates and
frees the same sizes in the same order gets the same addresses every time, which lets eager ops repeat their
recorded work (op_plans.py). (Handing out the last block freed, a training step's addresses rotated from one
step to the next: 39 of MobileNetV3-Small's 707 allocations landed where they had the step before.)

`cap` (NAVITRAIN_WGPU_MEMORY_LIMIT) bounds the bytes held in heaps, so that a machine with more memory
tells whether a model and batch fit a smaller card: past it, torch.OutOfMemoryError as on the card. It
counts heaps (what the GPU really gives out), not tensors, because that is what runs out on the card.
"""
from __future__ import annotations

import heapq
import threading
from dataclasses import dataclass, field

ALIGN = 256  # byte alignment of every block: keeps vec4 loads and every element type aligned
_MiB = 1 << 20


_CLASSES: dict[int, int] = {}


def size_class(nbytes: int) -> int:
    """Round a request up to its class: powers of two up to 1 MiB, then eighths of a power of two."""
    cls = _CLASSES.get(nbytes)
    if cls is None:
        if len(_CLASSES) > 65536:
            _CLASSES.clear()
        cls = _CLASSES[nbytes] = _size_class(nbytes)
    return cls


def _size_class(nbytes: int) -> int:
    n = max(ALIGN, (nbytes + ALIGN - 1) // ALIGN * ALIGN)
    if n <= _MiB:
        return 1 << (n - 1).bit_length()
    step = (1 << (n.bit_length() - 1)) // 8
    return (n + step - 1) // step * step


@dataclass(eq=False)
class Heap:
    buffer: object          # wgpu GPUBuffer
    size: int
    index: int               # stable id used in bind-group cache keys
    top: int = 0             # bump pointer: bytes handed out so far
    live: int = 0            # blocks currently owned by tensors or reserved by a captured graph
    dedicated: bool = False  # holds a single large block
    pins: int = 0            # captured graphs that bind this heap: never given back while > 0


@dataclass(eq=False)
class Block:
    heap: Heap
    offset: int  # bytes from the start of the heap
    size: int    # the block's size class in bytes
    live: bool = field(default=True)
    pool: "GraphPool | None" = None  # the captured graph that owns this block, if any


class GraphPool:
    """The memory of one captured graph (navitrain.wgpu.graphs). Replaying a graph writes to every
    block it used during capture, so those blocks must never go to another tensor while the graph
    lives: blocks allocated or freed during capture belong to the pool, and when their tensors die
    they return to the pool's own free lists (reused only by that graph's capture), not the global
    ones. `release()` (the graph's reset) hands the idle ones back."""

    def __init__(self) -> None:
        self.free: dict[int, list[Block]] = {}
        self.blocks: list[Block] = []


class OutOfMemory(Exception):
    """Raised by the heap factory when the GPU refuses a new buffer."""


def _oom(message: str) -> Exception:
    """torch.OutOfMemoryError where this torch has it (what training code catches), else MemoryError."""
    import torch

    cls = getattr(torch, "OutOfMemoryError", None)
    return cls(message) if cls is not None else MemoryError(message)


class CachingAllocator:
    def __init__(self, create_buffer, destroy_buffer, heap_size: int, max_binding: int, cap: int | None = None):
        self._create = create_buffer      # (nbytes) -> GPUBuffer, raises OutOfMemory
        self._destroy = destroy_buffer    # (GPUBuffer) -> None
        self.heap_size = heap_size
        self.max_binding = max_binding
        self.cap = cap            # bytes the heaps may hold in all (None: as much as the GPU gives)
        self._heaps: list[Heap] = []
        # Per size class, a heap queue of (heap index, offset, block): the lowest address first (see above).
        self._free: dict[int, list[tuple[int, int, Block]]] = {}
        self._next_index = 0
        self._lock = threading.Lock()
        self.allocated = 0       # bytes in live blocks (by size class)
        self.peak_allocated = 0
        self.reserved = 0        # bytes in heaps
        self.on_heap_freed = None  # callback(heap) so the runtime can drop cached bind groups
        self.capturing: GraphPool | None = None  # the pool that allocations go to during a capture
        self.recorder = None  # an op plan being recorded (op_plans.py): told of every malloc and free

    # -- allocation ---------------------------------------------------------------------------
    def malloc(self, nbytes: int) -> Block:
        cls = size_class(nbytes)
        if cls > self.max_binding:
            raise _oom(
                f"a tensor of {nbytes / _MiB:.1f} MiB exceeds this adapter's largest storage binding "
                f"({self.max_binding / _MiB:.0f} MiB); split it or use a smaller batch")
        with self._lock:
            pool = self.capturing
            if pool is not None:
                reserved = pool.free.get(cls)
                if reserved:
                    block = reserved.pop()  # the heap still counts it as live: no heap.live change
                    block.live = True
                    self._account(cls)
                    return block
            free = self._free.get(cls)
            if free:
                block = heapq.heappop(free)[2]
                block.live = True
                block.heap.live += 1
            else:
                block = self._carve(cls)
            if pool is not None:
                block.pool = pool
                pool.blocks.append(block)
            self._account(cls)
        if self.recorder is not None:
            self.recorder.malloc(nbytes, block)
        return block

    def next_place(self, nbytes: int) -> tuple[int, int] | None:
        """(heap index, offset) of the block malloc(nbytes) would hand out now from a free list, or None where
        it would carve new memory or a graph capture is on (op_plans.py looks its plans up by this)."""
        if self.capturing is not None:
            return None
        free = self._free.get(size_class(nbytes))
        if not free:
            return None
        top = free[0]
        return top[0], top[1]

    def _account(self, cls: int) -> None:
        self.allocated += cls
        if self.allocated > self.peak_allocated:
            self.peak_allocated = self.allocated

    def _carve(self, cls: int) -> Block:
        if cls > self.heap_size // 2:
            heap = self._new_heap(cls, dedicated=True)
            heap.top = cls
            heap.live = 1
            return Block(heap, 0, cls)
        for heap in reversed(self._heaps):
            if not heap.dedicated and heap.top + cls <= heap.size:
                block = Block(heap, heap.top, cls)
                heap.top += cls
                heap.live += 1
                return block
        heap = self._new_heap(self.heap_size, dedicated=False, need=cls)
        heap.top = cls
        heap.live = 1
        return Block(heap, 0, cls)

    def _new_heap(self, size: int, dedicated: bool, need: int | None = None) -> Heap:
        if self.cap is not None:
            size = self._within_cap(size, size if need is None else need)
        try:
            buffer = self._create(size)
        except OutOfMemory:
            # Give back every idle heap and idle block, then try once more before failing.
            self._release_idle()
            try:
                buffer = self._create(size)
            except OutOfMemory as exc:
                raise _oom(
                    f"out of GPU memory: asked for a {size / _MiB:.0f} MiB buffer with "
                    f"{self.allocated / _MiB:.0f} MiB allocated by tensors and "
                    f"{self.reserved / _MiB:.0f} MiB reserved ({exc})") from None
        heap = Heap(buffer, size, self._next_index, dedicated=dedicated)
        self._next_index += 1
        self._heaps.append(heap)
        self.reserved += size
        return heap

    def _within_cap(self, size: int, need: int) -> int:
        """The heap size to create under the cap: `size`, or less (down to `need`, the block that must
        fit) when the cap leaves less room; raises torch.OutOfMemoryError when not even `need` fits."""
        if self.reserved + need > self.cap:
            self._release_idle()
        room = self.cap - self.reserved
        if need > room:
            raise _oom(
                f"NAVITRAIN_WGPU_MEMORY_LIMIT: a new {need / _MiB:.1f} MiB block does not fit under the cap of "
                f"{self.cap / _MiB:.0f} MiB: {self.allocated / _MiB:.1f} MiB allocated by tensors, "
                f"{self.reserved / _MiB:.1f} MiB reserved in {len(self._heaps)} heap(s) "
                f"(peak allocated {self.peak_allocated / _MiB:.1f} MiB)")
        return min(size, room // ALIGN * ALIGN)

    # -- release -------------------------------------------------------------------------------
    def free(self, block: Block) -> None:
        with self._lock:
            if not block.live:
                return
            if self.recorder is not None:
                self.recorder.free(block)
            block.live = False
            self.allocated -= block.size
            if block.pool is None and self.capturing is not None:
                # Freed during a capture: the graph may read it on replay (or reuse it), so it joins
                # the pool instead of going to a tensor made after the capture.
                block.pool = self.capturing
                block.pool.blocks.append(block)
            if block.pool is not None:
                block.pool.free.setdefault(block.size, []).append(block)  # stays counted in heap.live
                return
            block.heap.live -= 1
            self._push_free(block)

    def _push_free(self, block: Block) -> None:
        free = self._free.get(block.size)
        if free is None:
            free = self._free[block.size] = []
        heapq.heappush(free, (block.heap.index, block.offset, block))

    def release_pool(self, pool: GraphPool) -> None:
        """A graph is gone: its idle blocks go back to the global free lists, its live ones (tensors
        that outlive the graph) will when their tensors die."""
        with self._lock:
            if self.capturing is pool:
                self.capturing = None
            for block in pool.blocks:
                block.pool = None
            for cls, blocks in pool.free.items():
                for block in blocks:
                    block.heap.live -= 1
                    self._push_free(block)
            pool.free.clear()
            pool.blocks.clear()

    def empty_cache(self) -> None:
        with self._lock:
            self._release_idle()

    def _release_idle(self) -> None:
        idle = [h for h in self._heaps if h.live == 0 and h.pins == 0]
        if not idle:
            return
        idle_ids = {id(h) for h in idle}
        for cls, blocks in list(self._free.items()):
            kept = [entry for entry in blocks if id(entry[2].heap) not in idle_ids]
            if kept:
                heapq.heapify(kept)
                self._free[cls] = kept
            else:
                del self._free[cls]
        for heap in idle:
            self._heaps.remove(heap)
            self.reserved -= heap.size
            if self.on_heap_freed is not None:
                self.on_heap_freed(heap)
            self._destroy(heap.buffer)

    def stats(self) -> dict:
        with self._lock:
            return {
                "allocated_bytes": self.allocated,
                "peak_allocated_bytes": self.peak_allocated,
                "reserved_bytes": self.reserved,
                "heaps": len(self._heaps),
                "free_blocks": sum(len(v) for v in self._free.values()),
            }
