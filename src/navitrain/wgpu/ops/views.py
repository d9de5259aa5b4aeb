"""View ops: new metadata over the same storage, no kernel. In-place ops on a view write its base."""
from __future__ import annotations

import torch

from navitrain.wgpu.dims import wrap_dim
from navitrain.wgpu.dispatch import implements
from navitrain.wgpu.tensor import WgpuTensor, contiguous_strides, wrap

aten = torch.ops.aten


def view_of(x: WgpuTensor, size, stride, offset: int | None = None) -> WgpuTensor:
    v = wrap(x._ws, size, stride, x.storage_offset() if offset is None else offset, x.dtype)
    if x.is_conj():  # a view of a lazily conjugated complex tensor is conjugated too, as in aten
        torch._C._set_conj(v, True)
    return v


def _infer_size(size, numel: int) -> list[int]:
    size = [int(s) for s in size]
    if -1 in size:
        known = 1
        for s in size:
            if s != -1:
                known *= s
        if known == 0 or numel % known:
            raise RuntimeError(f"shape '{size}' is invalid for input of size {numel}")
        size[size.index(-1)] = numel // known
    n = 1
    for s in size:
        n *= s
    if n != numel:
        raise RuntimeError(f"shape '{size}' is invalid for input of size {numel}")
    return size


def _view_strides(old_size, old_stride, new_size) -> list[int] | None:
    """Strides giving `new_size` over the same memory, or None when a copy is needed (aten's rule)."""
    if not old_size:
        return [1] * len(new_size)
    numel = 1
    for s in old_size:
        numel *= s
    if numel == 0:
        return list(contiguous_strides(new_size))
    new_stride = [0] * len(new_size)
    view_d = len(new_size) - 1
    chunk_base_stride = old_stride[-1]
    tensor_numel = 1
    view_numel = 1
    for tensor_d in range(len(old_size) - 1, -1, -1):
        tensor_numel *= old_size[tensor_d]
        if tensor_d == 0 or (old_size[tensor_d - 1] != 1 and
                             old_stride[tensor_d - 1] != tensor_numel * chunk_base_stride):
            while view_d >= 0 and (view_numel < tensor_numel or new_size[view_d] == 1):
                new_stride[view_d] = view_numel * chunk_base_stride
                view_numel *= new_size[view_d]
                view_d -= 1
            if view_numel != tensor_numel:
                return None
            if tensor_d > 0:
                chunk_base_stride = old_stride[tensor_d - 1]
                tensor_numel = 1
                view_numel = 1
    if view_d != -1:
        return None
    return new_stride


# A training step views the same shapes the same way every time (each Linear layer flattens and
# unflattens its input): the resulting geometry, keyed by (shape, strides, asked size), is worked out
# once. Errors are not kept; None strides (no view possible) are.
_VIEW_GEOMETRY: dict = {}


def _view_geometry(x, size) -> tuple[list[int], list[int] | None]:
    key = (x.shape, x.stride(), tuple(size))
    geometry = _VIEW_GEOMETRY.get(key)
    if geometry is None:
        new_size = _infer_size(size, x.numel())
        geometry = (new_size, _view_strides(list(x.shape), list(x.stride()), new_size))
        if len(_VIEW_GEOMETRY) > 4096:
            _VIEW_GEOMETRY.clear()
        _VIEW_GEOMETRY[key] = geometry
    return geometry


@implements(aten.view.default)
def view(x, size):
    size, stride = _view_geometry(x, size)
    if stride is None:
        raise RuntimeError(
            "view size is not compatible with input tensor's size and stride (at least one dimension spans "
            "across two contiguous subspaces). Use .reshape(...) instead.")
    return view_of(x, size, stride)


@implements(aten._reshape_alias.default)
def _reshape_alias(x, size, stride):
    return view_of(x, size, stride)


@implements(aten.reshape.default, aten._unsafe_view.default)
def reshape(x, size):
    size, stride = _view_geometry(x, size)
    if stride is not None:
        return view_of(x, size, stride)
    return view(aten.clone.default(x, memory_format=torch.contiguous_format), size)


@implements(aten.as_strided.default)
def as_strided(x, size, stride, storage_offset=None):
    return view_of(x, size, stride, storage_offset)


@implements(aten.detach.default, aten.alias.default)
def detach(x):
    return view_of(x, x.shape, x.stride())


@implements(aten.t.default)
def t(x):
    if x.dim() < 2:
        return detach(x)
    return transpose(x, 0, 1)


@implements(aten.transpose.int)
def transpose(x, dim0, dim1):
    nd = x.dim()
    if nd == 0:
        return detach(x)
    d0, d1 = wrap_dim(dim0, nd), wrap_dim(dim1, nd)
    size, stride = list(x.shape), list(x.stride())
    size[d0], size[d1] = size[d1], size[d0]
    stride[d0], stride[d1] = stride[d1], stride[d0]
    return view_of(x, size, stride)


@implements(aten.permute.default)
def permute(x, dims):
    nd = x.dim()
    dims = [wrap_dim(d, nd) for d in dims]
    if sorted(dims) != list(range(nd)):
        raise RuntimeError(f"permute(): dims {dims} is not a permutation of {nd} dims")
    return view_of(x, [x.shape[d] for d in dims], [x.stride(d) for d in dims])


@implements(aten.expand.default)
def expand(x, size, *, implicit=False):
    size = list(size)
    nd, new_nd = x.dim(), len(size)
    if new_nd < nd:
        raise RuntimeError(f"expand: the number of sizes provided ({new_nd}) must be >= the number of dims ({nd})")
    out_size, out_stride = [], []
    for i in range(new_nd):
        j = i - (new_nd - nd)
        want = int(size[i])
        if j < 0:
            if want < 0:
                raise RuntimeError("expand: -1 is not allowed in a leading, non-existing dimension")
            out_size.append(want)
            out_stride.append(0)
            continue
        have = x.shape[j]
        if want == -1:
            want = have
        if have == want:
            out_size.append(have)
            out_stride.append(x.stride(j))
        elif have == 1:
            out_size.append(want)
            out_stride.append(0)
        else:
            raise RuntimeError(f"The expanded size of the tensor ({want}) must match the existing size ({have}) "
                               f"at non-singleton dimension {i}.  Target sizes: {size}.  Tensor sizes: {list(x.shape)}")
    return view_of(x, out_size, out_stride)


@implements(aten.slice.Tensor)
def slice_(x, dim=0, start=None, end=None, step=1):
    d = wrap_dim(dim, x.dim())
    n = x.shape[d]
    start = 0 if start is None else start
    end = n if end is None else end
    if step <= 0:
        raise RuntimeError("slice step must be positive")
    start = start + n if start < 0 else start
    end = end + n if end < 0 else end
    start = min(max(start, 0), n)
    end = min(max(end, start), n)
    size, stride = list(x.shape), list(x.stride())
    size[d] = (end - start + step - 1) // step
    stride[d] = stride[d] * step
    return view_of(x, size, stride, x.storage_offset() + start * x.stride(d))


@implements(aten.select.int)
def select(x, dim, index):
    d = wrap_dim(dim, x.dim())
    n = x.shape[d]
    if not -n <= index < n:
        raise IndexError(f"select(): index {index} out of range for tensor of size {list(x.shape)} at dimension {d}")
    index %= n
    size, stride = list(x.shape), list(x.stride())
    offset = x.storage_offset() + index * stride[d]
    del size[d], stride[d]
    return view_of(x, size, stride, offset)


@implements(aten.unsqueeze.default)
def unsqueeze(x, dim):
    d = wrap_dim(dim, x.dim() + 1)
    size, stride = list(x.shape), list(x.stride())
    new_stride = size[d] * stride[d] if d < x.dim() else 1
    size.insert(d, 1)
    stride.insert(d, new_stride)
    return view_of(x, size, stride)


@implements(aten.squeeze.default, aten.squeeze.dim, aten.squeeze.dims)
def squeeze(x, dim=None):
    nd = x.dim()
    if dim is None:
        dims = set(range(nd))
    elif isinstance(dim, int):
        dims = {wrap_dim(dim, nd)} if nd else set()
    else:
        dims = {wrap_dim(d, nd) for d in dim} if nd else set()
    keep = [i for i in range(nd) if not (i in dims and x.shape[i] == 1)]
    return view_of(x, [x.shape[i] for i in keep], [x.stride(i) for i in keep])


@implements(aten.unbind.int)
def unbind(x, dim=0):
    d = wrap_dim(dim, x.dim())
    return tuple(select(x, d, i) for i in range(x.shape[d]))


@implements(aten.split.Tensor)
def split(x, split_size, dim=0):
    d = wrap_dim(dim, x.dim())
    n = x.shape[d]
    if split_size == 0 and n == 0:
        return (detach(x),)
    return tuple(slice_(x, d, s, min(s + split_size, n)) for s in range(0, max(n, 1), max(split_size, 1)))


@implements(aten.split_with_sizes.default)
def split_with_sizes(x, split_sizes, dim=0):
    d = wrap_dim(dim, x.dim())
    if sum(split_sizes) != x.shape[d]:
        raise RuntimeError(
            f"split_with_sizes expects split_sizes to sum exactly to {x.shape[d]}, but got {list(split_sizes)}")
    out, start = [], 0
    for s in split_sizes:
        out.append(slice_(x, d, start, start + s))
        start += s
    return tuple(out)


@implements(aten.unfold.default)
def unfold(x, dimension, size, step):
    d = wrap_dim(dimension, x.dim())
    n = x.shape[d] if x.dim() else 1
    count = (n - size) // step + 1
    sizes, strides = list(x.shape), list(x.stride())
    base_stride = strides[d] if x.dim() else 1
    if x.dim():
        sizes[d] = count
        strides[d] = base_stride * step
    sizes.append(size)
    strides.append(base_stride)
    return view_of(x, sizes, strides)


@implements(aten.diagonal.default)
def diagonal(x, offset=0, dim1=0, dim2=1):
    d1, d2 = wrap_dim(dim1, x.dim()), wrap_dim(dim2, x.dim())
    n1, n2 = x.shape[d1], x.shape[d2]
    start = x.storage_offset()
    if offset >= 0:
        length = max(min(n1, n2 - offset), 0)
        start += offset * x.stride(d2)
    else:
        length = max(min(n1 + offset, n2), 0)
        start -= offset * x.stride(d1)
    keep = [i for i in range(x.dim()) if i not in (d1, d2)]
    size = [x.shape[i] for i in keep] + [length]
    stride = [x.stride(i) for i in keep] + [x.stride(d1) + x.stride(d2)]
    return view_of(x, size, stride, start)


@implements(aten.resize_.default)
def resize_(x, size, memory_format=None):
    from navitrain.wgpu.kernels.copy import copy_into
    from navitrain.wgpu.tensor import new_storage, set_geometry

    size = [int(s) for s in size]
    if memory_format in (None, torch.contiguous_format, torch.preserve_format):
        stride = list(contiguous_strides(size))
    else:
        stride = list(torch.empty(size, device="meta").to(memory_format=memory_format).stride())
    numel = 1
    for s in size:
        numel *= s
    needed = x.storage_offset() + (1 + sum((s - 1) * st for s, st in zip(size, stride)) if numel else 0)
    if needed <= x._ws.nelem:
        set_geometry(x, x._ws, size, stride, x.storage_offset())
        return x
    # Grow: a new storage keeps the old elements at the front, as resize_ promises.
    old = view_of(x, [x.numel()], [1]) if x.is_contiguous() and x.numel() else None
    storage = new_storage(needed, x.dtype)
    set_geometry(x, storage, size, stride, x.storage_offset())
    if old is not None:
        copy_into(view_of(x, [old.numel()], [1]), old)
    return x


@implements(aten.set_.source_Tensor)
def set_source_tensor(x, source):
    from navitrain.wgpu.tensor import set_geometry

    set_geometry(x, source._ws, list(source.shape), list(source.stride()), source.storage_offset())
    return x


def _inplace_view(view_fn):
    """An in-place metadata op (x.squeeze_(), x.t_(), ...): compute the view, then adopt its geometry."""
    def run(x, *args, **kwargs):
        from navitrain.wgpu.tensor import set_geometry

        v = view_fn(x, *args, **kwargs)
        set_geometry(x, x._ws, list(v.shape), list(v.stride()), v.storage_offset())
        return x
    return run


implements(aten.squeeze_.default, aten.squeeze_.dim, aten.squeeze_.dims)(_inplace_view(squeeze))
implements(aten.unsqueeze_.default)(_inplace_view(unsqueeze))
implements(aten.t_.default)(_inplace_view(t))
implements(aten.transpose_.default)(_inplace_view(transpose))
implements(aten.as_strided_.default)(_inplace_view(as_strided))
implements(aten.detach_.default)(lambda x: x)
