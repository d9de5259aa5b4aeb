"""The wgpu tensor: a torch.Tensor wrapper subclass whose data lives in a GPU heap block.

PyTorch keeps the tensor's metadata (sizes, strides, storage offset, dtype, device "wgpu:0", autograd
state); navitrain keeps the data: `t._ws` is a WgpuStorage (a heap block) shared by all views of one
tensor, and the element a view starts at is `t._ws.base + t.storage_offset()`. Every aten op on these
tensors reaches navitrain.wgpu.dispatch through `__torch_dispatch__`.

The device index is always written explicitly ("wgpu:0"): autograd's engine indexes its per-device
worker queues with it and asserts on the index -1 that a bare "wgpu" would give.
"""
from __future__ import annotations

import copy
from collections import OrderedDict

import torch

from navitrain.wgpu import dtypes as _dtypes
from navitrain.wgpu import process_device
from navitrain.wgpu import runtime as _rt_mod
from navitrain.wgpu.runtime import runtime

DEVICE = torch.device("wgpu", 0)  # the default; this process's own wgpu:N is process_device.CURRENT
# torch.save's location tag on the CPU copy of a wgpu tensor; navitrain.wgpu.serialization reads it back.
SAVED_LOCATION_ATTR = "_navitrain_location"


class WgpuStorage:
    """One heap block holding `nelem` elements of a storage type; freed when the last view dies."""

    __slots__ = ("block", "stype", "nelem", "heap", "base", "__weakref__")

    def __init__(self, block, stype: _dtypes.StorageType, nelem: int):
        self.block = block
        self.stype = stype
        self.nelem = nelem
        self.heap = block.heap
        self.base = block.offset // stype.itemsize  # element index of the block in its heap

    def __del__(self):
        try:
            _free_block(self.block)
        except Exception:  # interpreter shutdown: the device is going away anyway
            pass


class StorageView(WgpuStorage):
    """Another storage's block seen as another dtype (view_as_real / view_as_complex: complex64 element i
    is float32 words 2i, 2i+1): shares the block, keeps its owner alive, never frees the block itself."""

    __slots__ = ("owner",)

    def __init__(self, owner: WgpuStorage, stype: _dtypes.StorageType):
        self.owner = owner
        self.stype = stype
        self.nelem = owner.nelem * owner.stype.itemsize // stype.itemsize

    # Read from the owner each time: a BorrowedStorage owner moves to a block of its own (`own`).
    block = property(lambda self: self.owner.block)
    heap = property(lambda self: self.owner.heap)
    base = property(lambda self: self.owner.block.offset // self.stype.itemsize)

    def __del__(self):
        pass


class BorrowedStorage(WgpuStorage):
    """A captured graph's output memory handed to the caller without a copy (navitrain.wgpu.borrowed):
    frees nothing while `lender` (the graph's loans, which keep that memory alive) is set; before the
    graph writes the memory again, `own` moves it to a copy of its own, which it then frees. Every view
    of it shares this object, so all of them move together."""

    __slots__ = ("lender",)

    def __init__(self, memory: WgpuStorage, lender):
        self.block = memory.block
        self.stype = memory.stype
        self.nelem = memory.nelem
        self.heap = memory.heap
        self.base = memory.base
        self.lender = lender

    def own(self, block) -> None:
        """Point at `block` (holding a copy of the borrowed memory) and own it from now on."""
        self.block = block
        self.heap = block.heap
        self.base = block.offset // self.stype.itemsize
        self.lender = None

    def __del__(self):
        if self.lender is None:
            try:
                _free_block(self.block)
            except Exception:  # interpreter shutdown
                pass


def storage_as(ws: WgpuStorage, dtype: torch.dtype) -> WgpuStorage:
    """`ws`'s block as a storage of `dtype` (the owner itself where it already is that dtype)."""
    owner = ws.owner if isinstance(ws, StorageView) else ws
    if owner.stype.dtype == dtype:
        return owner
    return StorageView(owner, (_rt_mod._runtime or runtime()).stypes[dtype])


def _free_block(block) -> None:
    if _rt_mod._runtime is not None:
        _rt_mod._runtime.allocator.free(block)


def contiguous_strides(size) -> tuple[int, ...]:
    strides = []
    acc = 1
    for s in reversed(tuple(size)):
        strides.append(acc)
        acc *= max(int(s), 1)
    return tuple(reversed(strides))


def new_storage(nelem: int, dtype: torch.dtype) -> WgpuStorage:
    rt = _rt_mod._runtime or runtime()
    st = rt.stypes.get(dtype)
    if st is None:
        raise TypeError(f"dtype {dtype} is not supported on the wgpu device")
    block = rt.allocator.malloc(max(1, nelem) * st.itemsize)  # (rt.malloc's own frame skipped: every op's output)
    return WgpuStorage(block, st, nelem)


class WgpuTensor(torch.Tensor):
    # No __torch_function__ layer: it only adds overhead for a dispatch-level subclass.
    __torch_function__ = torch._C._disabled_torch_function_impl

    def __new__(cls, *args, **kwargs):
        raise TypeError("make wgpu tensors with torch functions: torch.zeros(..., device='wgpu'), x.to('wgpu')")

    # -- where the data is -----------------------------------------------------------------------
    @property
    def elem_offset(self) -> int:
        return self._ws.base + self.storage_offset()

    # -- user-visible behaviour --------------------------------------------------------------
    def tolist(self):
        return to_cpu(self.detach()).tolist()

    def __repr__(self, *, tensor_contents=None):
        cpu = to_cpu(self.detach())
        text = repr(cpu)
        extras = [f"device='{self.device}'"]
        if self.grad_fn is not None:
            extras.append(f"grad_fn=<{type(self.grad_fn).__name__}>")
        elif self.requires_grad:
            extras.append("requires_grad=True")
        text = text[:-1] + ", " + ", ".join(extras) + ")"
        if getattr(self, "_is_param", False):
            text = "Parameter containing:\n" + text
        return text

    def __format__(self, spec):
        # torch.Tensor.__format__ formats 0-d tensors as numbers only for exact torch.Tensor
        # (f"{loss:.3f}"); a one-element read is what it would do on CUDA too.
        if self.dim() == 0:
            return self.item().__format__(spec)
        return object.__format__(self, spec)

    def __reduce_ex__(self, protocol):
        # Saved as a CPU tensor (or Parameter) whose storage is tagged "wgpu:0": torch.load brings it back
        # on wgpu, or wherever map_location says, as for CUDA checkpoints (navitrain.wgpu.serialization).
        cpu = to_cpu(self.detach())
        setattr(cpu.untyped_storage(), SAVED_LOCATION_ATTR, str(process_device.CURRENT))
        if getattr(self, "_is_param", False):
            return (torch._utils._rebuild_parameter, (cpu, self.requires_grad, OrderedDict()))
        if self.requires_grad:
            cpu.requires_grad_(True)
        return cpu.__reduce_ex__(protocol)

    def __deepcopy__(self, memo):
        if id(self) in memo:
            return memo[id(self)]
        with torch.no_grad():
            new = self.clone()
        for key, value in self.__dict__.items():
            if key != "_ws":
                setattr(new, key, copy.deepcopy(value, memo))
        new.requires_grad_(self.requires_grad)
        if self.grad is not None:
            new.grad = copy.deepcopy(self.grad, memo)
        memo[id(self)] = new
        return new

    # Having these two methods makes PyTorch treat the class as a "traceable wrapper subclass", and for
    # those Module._apply (model.to("wgpu")) swaps each Parameter object's contents in place with
    # torch.utils.swap_tensors instead of making new Parameters: tied weights (a GPT's shared embedding
    # and output head) stay one Parameter on the device. There are no inner tensors: the data is ours.
    def __tensor_flatten__(self):
        return [], (self.dtype, self.device)

    @staticmethod
    def __tensor_unflatten__(inner_tensors, ctx, outer_size, outer_stride):
        # Only tracing calls this (torch.compile's fake tensors; see navitrain.wgpu.compile): the fake of a
        # wgpu tensor is a plain FakeTensor on device wgpu:0, so tracing runs aten's meta kernels, as it
        # does for a CUDA tensor, and the traced graph is run on the real wgpu tensors.
        from torch._guards import detect_fake_mode

        mode = detect_fake_mode()
        if mode is None:
            raise NotImplementedError("a wgpu tensor can only be rebuilt from its flattened form by torch.compile "
                                      "tracing (under a fake tensor mode)")
        with mode:
            fake = torch.empty_strided(outer_size, outer_stride, dtype=ctx[0], device=ctx[1])
        # Fakeifying a view of a wgpu tensor (a graph break's resumed code taking `x[:, None]`) rebuilds its base
        # through this and asks the result for its inner tensors: it has none. (Only the flatten half of the
        # protocol: the fake must not be taken for a subclass, which needs both.)
        fake.__tensor_flatten__ = lambda: ([], ctx)
        return fake

    def __coerce_same_metadata_as_tangent__(self, expected_metadata, expected_type=None):
        # A compiled backward expects its incoming gradients to be what tracing saw, a plain tensor on
        # wgpu:0 (see __tensor_unflatten__), and would otherwise try to unflatten this one: hand it the
        # same data as a TracedAsPlain, which does not announce the subclass protocol.
        # PyTorch then restrides a gradient whose layout differs from the traced output's by making a new
        # (plain-looking, hence failing) tensor: give it the layout forward outputs nearly always have, dense
        # (an expanded gradient, that of a sum or a mean, is not).
        if expected_type is None or expected_type is type(self):
            return self
        return as_traced_plain(self if _dense_non_overlapping(self) else self.contiguous())

    # `param.data = other` swaps the TensorImpl's metadata in C++ but not Python attributes: carry the
    # storage across too, or the parameter would keep pointing at its old data.
    @property
    def data(self):
        return torch._C.TensorBase.data.__get__(self)

    @data.setter
    def data(self, new):
        if not isinstance(new, WgpuTensor):
            raise TypeError(f"cannot assign a {new.device} tensor to .data of a wgpu tensor; move it with .to('wgpu')")
        torch._C.TensorBase.data.__set__(self, new)
        self._ws = new._ws


class TracedAsPlain(WgpuTensor):
    """A wgpu tensor handed to torch.compile's runtime where it expects a plain tensor (a compiled
    backward's incoming gradient): without __tensor_flatten__ it is not taken for a traceable subclass."""

    @property
    def __tensor_flatten__(self):
        raise AttributeError("TracedAsPlain is a plain tensor to torch.compile")


_make = torch.Tensor._make_wrapper_subclass


def as_traced_plain(src: WgpuTensor) -> TracedAsPlain:
    """The same data and geometry as `src`, as a TracedAsPlain (a compiled backward's incoming gradient)."""
    plain = _make(TracedAsPlain, src.shape, src.stride(), src.storage_offset(), None, src.dtype,
                  torch.strided, src.device, False, False, None, False, False, None,
                  (_rt_mod._runtime or runtime()).allocator.max_binding)
    plain._ws = src._ws
    return plain


def wrap(storage: WgpuStorage, size, stride, offset: int, dtype: torch.dtype) -> WgpuTensor:
    """A tensor viewing `storage` with the given geometry.

    PyTorch's own storage of a wrapper tensor holds no data; it is given the largest size any storage
    can have on this device so that in-place metadata changes (resize_, set_) pass its bounds checks.
    (Arguments are positional: keyword parsing is a measurable share of a small op's host time.)
    """
    t = _make(WgpuTensor, size, stride, offset, None, dtype, torch.strided, process_device.CURRENT, False, False,
              None, False, False, None, (_rt_mod._runtime or runtime()).allocator.max_binding)
    t._ws = storage
    return t


_ITEMSIZE: dict[torch.dtype, int] = {}


def _itemsize(dtype: torch.dtype) -> int:
    size = _ITEMSIZE.get(dtype)
    if size is None:
        size = _ITEMSIZE[dtype] = torch.empty((), dtype=dtype).element_size()
    return size


_NO_PYTHON_KEY = torch._C.DispatchKeySet(torch._C.DispatchKey.Python)


def set_geometry(t: WgpuTensor, storage: WgpuStorage, size, stride, offset: int) -> None:
    """Change a tensor's storage and geometry in place (resize_, set_): PyTorch's metadata is updated
    with the Python key excluded so the call reaches the generic as_strided_ kernel, not us."""
    t._ws = storage
    with torch._C._ExcludeDispatchKeyGuard(_NO_PYTHON_KEY):
        torch.ops.aten.as_strided_.default(t, size, stride, offset)


# Contiguous geometry (sizes as ints, strides, element count) per size asked for: handlers make their
# outputs with empty() hundreds of times a step, over the same few dozen shapes. Only all-int sizes are
# kept (a size of 0-d tensors or SymInts is worked out each time).
_CONTIGUOUS: dict[tuple, tuple[tuple[int, ...], tuple[int, ...], int]] = {}


def _contiguous_geometry(size) -> tuple[tuple[int, ...], tuple[int, ...], int]:
    key = size if isinstance(size, tuple) else tuple(size)
    geometry = _CONTIGUOUS.get(key)
    if geometry is None:
        shape = tuple(int(s) for s in key)
        nelem = 1
        for s in shape:
            nelem *= s
        geometry = (shape, contiguous_strides(shape), nelem)
        if all(type(s) is int for s in key):
            if len(_CONTIGUOUS) > 4096:
                _CONTIGUOUS.clear()
            _CONTIGUOUS[key] = geometry
    return geometry


def empty(size, dtype: torch.dtype, stride=None) -> WgpuTensor:
    """A new tensor (contiguous unless `stride` is given) with uninitialised contents."""
    if stride is None:
        size, stride, nelem = _contiguous_geometry(size)
    else:
        size = tuple(int(s) for s in size)
        stride = tuple(int(s) for s in stride)
        nelem = 1 + sum((s - 1) * st for s, st in zip(size, stride)) if all(s > 0 for s in size) else 0
    return wrap(new_storage(nelem, dtype), size, stride, 0, dtype)


def empty_fast(size, stride, dtype: torch.dtype, numel: int) -> WgpuTensor:
    """A new tensor with the given contiguous geometry (no checks: the hot path of pointwise ops)."""
    return wrap(new_storage(numel, dtype), size, stride, 0, dtype)


def empty_like(t: torch.Tensor, dtype: torch.dtype | None = None) -> WgpuTensor:
    """Same shape, laid out as PyTorch's empty_like lays it out (`preserved_strides`)."""
    dtype = dtype or t.dtype
    if t.is_contiguous():
        return empty(t.shape, dtype)
    return empty(t.shape, dtype, preserved_strides(t))


_PRESERVED: dict = {}


def preserved_strides(t: torch.Tensor) -> tuple:
    """The strides PyTorch gives a new tensor made like `t` with memory_format=torch.preserve_format
    (empty_like, clone, .to() of another device or dtype): t's own where it is dense and non-overlapping
    (channels_last stays channels_last), else dense in the order of t's strides (a slice of a transposed
    tensor stays transposed), as on the CPU and CUDA."""
    if _dense_non_overlapping(t):
        return tuple(t.stride())
    key = (tuple(t.shape), tuple(t.stride()))
    found = _PRESERVED.get(key)
    if found is None:
        found = tuple(torch.empty_like(torch.empty_strided(key[0], key[1], device="meta")).stride())
        if len(_PRESERVED) > 4096:
            _PRESERVED.clear()
        _PRESERVED[key] = found
    return found


def is_channels_last(t: torch.Tensor) -> bool:
    """A 4-D image laid out NHWC (channels innermost) and not also plain contiguous: the layout that
    convolution kernels walk by channel."""
    return t.dim() == 4 and t.stride(1) == 1 and t.shape[1] > 1 and not t.is_contiguous()


def _dense_non_overlapping(t: torch.Tensor) -> bool:
    pairs = sorted((st, s) for s, st in zip(t.shape, t.stride()) if s != 1)
    expected = 1
    for st, s in pairs:
        if st != expected:
            return False
        expected *= s
    return True


# -- moving data between the CPU and the device -----------------------------------------------
def _span(t: torch.Tensor) -> tuple[int, int]:
    """First and one-past-last storage element a view touches (strides are never negative)."""
    lo = t.storage_offset()
    hi = lo + 1 + sum((s - 1) * st for s, st in zip(t.shape, t.stride()))
    return lo, hi


def to_cpu(t: WgpuTensor) -> torch.Tensor:
    """A CPU copy with the same values, keeping a dense layout (channels_last stays channels_last)."""
    if t.numel() == 0:
        return torch.empty(t.shape, dtype=t.dtype)
    ws = t._ws
    st = ws.stype
    lo, hi = _span(t)
    rt = runtime()
    data = rt.read(ws.heap, (ws.base + lo) * st.itemsize, (hi - lo) * st.itemsize)
    flat = _dtypes.from_storage_bytes(data, st, hi - lo)
    view = flat.as_strided(t.shape, t.stride(), 0)
    if t.is_conj():  # PyTorch's lazy conjugate (torch.conj): the stored values are the conjugate's
        return view.conj_physical()
    if view.is_contiguous() and hi - lo == t.numel():
        return view
    return view.clone(memory_format=torch.preserve_format)   # PyTorch's layout for .cpu() (preserved_strides)


def from_cpu(cpu: torch.Tensor, dtype: torch.dtype | None = None) -> WgpuTensor:
    """A new device tensor holding `cpu`'s values, laid out as PyTorch lays out a copy to another device
    (`preserved_strides`: dense layouts kept, others dense in their stride order)."""
    dtype = dtype or cpu.dtype
    if cpu.dtype != dtype:
        cpu = cpu.to(dtype)
    out = empty(cpu.shape, dtype, None if cpu.is_contiguous() else preserved_strides(cpu))
    if cpu.numel():
        written = write_directly(out, cpu)
        assert written, "a new tensor is dense and starts a block (256-byte aligned): always written directly"
    return out


def host_values_for(dst: WgpuTensor, cpu: torch.Tensor) -> torch.Tensor:
    """`cpu` (broadcastable to dst's shape, any dtype) in dst's dtype and shape."""
    src = cpu.to(dst.dtype) if cpu.dtype != dst.dtype else cpu
    if tuple(src.shape) != tuple(dst.shape):
        src = src.expand(dst.shape)
    return src


def write_directly(dst: WgpuTensor, cpu: torch.Tensor) -> bool:
    """Copy CPU values (already broadcast to dst's shape, any dtype) into the device view `dst` with one
    buffer write, where its layout allows; False where it does not (a general strided view: the copy
    engine's upload_into, navitrain.wgpu.kernels.copy, handles every view)."""
    if dst.numel() == 0:
        return True
    st = dst._ws.stype
    src = host_values_for(dst, cpu)
    # queue.write_buffer moves whole 4-byte words: the span must start on a word, and either end on one
    # or end where its storage ends (the padding then lands in the block's unused tail).
    start = (dst._ws.base + dst.storage_offset()) * st.itemsize
    nbytes = dst.numel() * st.itemsize
    ends_storage = dst.storage_offset() + dst.numel() == dst._ws.nelem
    if start % 4 == 0 and (nbytes % 4 == 0 or ends_storage):
        if dst.is_contiguous():
            runtime().write(dst._ws.heap, start, _dtypes.to_storage_bytes(src.contiguous(), st))
            return True
        if _dense_non_overlapping(dst):
            # A dense permuted layout (channels_last, a transposed result): write the values in the order
            # they lie in memory, with no kernel (none exists for some dtypes, e.g. complex64).
            order = sorted(range(dst.dim()), key=lambda d: -dst.stride(d))
            runtime().write(dst._ws.heap, start, _dtypes.to_storage_bytes(src.permute(order).contiguous(), st))
            return True
    return False


def write_by_read_modify_write(dst: WgpuTensor, src: torch.Tensor) -> None:
    """For a strided view of a dtype no kernel computes in (complex64): read the span the view covers,
    set the view's elements on the CPU, write the span back. Slow, and only reached where CPU
    fallbacks write into such views. `src`: host values in dst's dtype and shape (host_values_for)."""
    st, ws = dst._ws.stype, dst._ws
    lo, hi = _span(dst)
    start, nbytes = (ws.base + lo) * st.itemsize, (hi - lo) * st.itemsize
    if start % 4 or (nbytes % 4 and hi != ws.nelem):
        raise _dtypes.NoKernelForDtype(f"cannot write a strided view of {dst.dtype} at an unaligned offset")
    rt = runtime()
    span = _dtypes.from_storage_bytes(rt.read(ws.heap, start, nbytes), st, hi - lo).clone()
    span.as_strided(dst.shape, dst.stride(), dst.storage_offset() - lo).copy_(src)
    rt.write(ws.heap, start, _dtypes.to_storage_bytes(span, st))
