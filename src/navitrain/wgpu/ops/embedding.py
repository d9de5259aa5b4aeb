"""Embedding: the lookup (a gather of table rows) and its backward, deterministic without atomics.

The backward sorts the token ids (stable) and lets the first thread of each run of equal ids, per
embedding column, add up that run's gradient rows in their original order and write the table row
once: no float atomics, the same result on every run, and the CPU's order of additions. Rows of
padding_idx and rows no token used stay zero; scale_grad_by_freq divides each sum by its run length.
max_norm (embedding_renorm_) rescales each distinct row once, from the first thread of its run.
"""
from __future__ import annotations

import torch

from navitrain.wgpu.dispatch import implements
from navitrain.wgpu.kernels import codegen, wgsl_math
from navitrain.wgpu.kernels.copy import fill
from navitrain.wgpu.kernels.index_keys import INVALID_KEY, wrapped_keys
from navitrain.wgpu.kernels.indexed_copy import indexed_copy
from navitrain.wgpu.kernels.segment_reduce import segment_reduce
from navitrain.wgpu.kernels.sort import sort_int_keys
from navitrain.wgpu.ops.index_args import as_device
from navitrain.wgpu.runtime import runtime
from navitrain.wgpu.tensor import empty

aten = torch.ops.aten


@implements(aten.embedding.default)
def embedding(weight, indices, padding_idx=-1, scale_grad_by_freq=False, sparse=False):
    if weight.dim() != 2:
        raise RuntimeError("'weight' must be 2-D")
    if indices.dtype not in (torch.int64, torch.int32):
        raise RuntimeError(f"Expected tensor for argument #1 'indices' to have one of the following scalar types: "
                           f"Long, Int; but got {indices.dtype} instead")
    indices = as_device(indices)
    shape = list(indices.shape) + [weight.shape[1]]
    out = empty(shape, weight.dtype)
    nd = indices.dim()
    indexed_copy("gather", shape, out, list(out.stride()), weight, [0] * nd + [weight.stride(1)],
                 [(indices, list(indices.stride()) + [0], weight.shape[0], weight.stride(0))])
    return out


@implements(aten.embedding_dense_backward.default)
def embedding_dense_backward(grad_output, indices, num_weights, padding_idx, scale_grad_by_freq):
    indices = as_device(indices)
    dim = grad_output.shape[-1]
    grad_weight = fill(empty([num_weights, dim], grad_output.dtype), 0)
    n = indices.numel()
    if n == 0 or dim == 0:
        return grad_weight
    grad = aten.reshape.default(grad_output, [n, dim])
    keys = aten.reshape.default(wrapped_keys(aten.reshape.default(indices, [n]), num_weights), [1, n])
    segment_reduce("sum", grad_weight, grad, keys, dim, grad.stride(0), s_shape=[dim], s_out=[1],
                   s_src=[grad.stride(1)], include_self=False, by_freq=scale_grad_by_freq,
                   skip_key=padding_idx if padding_idx >= 0 else None)
    return grad_weight


# K sorted keys, D columns, the table's offset and strides, the sorted keys' offset, max_norm, p.
_RENORM = codegen.ParamBlock("K", "D", "w_off", "row_stride", "col_stride", "keys_off", "max_norm: f32",
                             "norm_p: f32")
_RENORM_PACK = _RENORM.pack_words  # in _RENORM's order: the keyword pack() costs microseconds


def _renorm_source(w_st, norm_kind):
    """The first thread of each run of equal (sorted) ids rescales that row once."""
    # fmax_nan: a row holding NaN has norm NaN (and is left alone, as on the CPU); WGSL's max may drop it.
    acc = {"inf": "fmax_nan(acc, abs(v))", "1": "acc + abs(v)", "2": "acc + v * v",
           "p": "acc + pow_f(abs(v), norm_p)"}[norm_kind]
    norm = {"inf": "acc", "1": "acc", "2": "sqrt(acc)", "p": "pow_f(acc, 1.0 / norm_p)"}[norm_kind]
    body = f"""
{_RENORM.wgsl()}  if (gi >= K) {{ return; }}
  let key = keys[keys_off + gi];
  if (gi > 0u && keys[keys_off + gi - 1u] == key) {{ return; }}
  let row = bitcast<i32>(key ^ 0x80000000u);
  if (row == {INVALID_KEY}) {{ return; }}
  let base = w_off + u32(row) * row_stride;
  var acc = 0.0;
  for (var j = 0u; j < D; j = j + 1u) {{
    let v = {w_st.load('w[base + j * col_stride]', 'f32')};
    acc = {acc};
  }}
  let norm = {norm};
  if (norm > max_norm) {{
    let scale = max_norm / (norm + 1e-7);
    for (var j = 0u; j < D; j = j + 1u) {{
      w[base + j * col_stride] = {w_st.store(f"{w_st.load('w[base + j * col_stride]', 'f32')} * scale")};
    }}
  }}"""
    return codegen.module([w_st.wgsl, "u32"], body, 64, helpers=wgsl_math.helpers(False), names=["w", "keys"])


@implements(aten.embedding_renorm_.default)
def embedding_renorm_(weight, indices, max_norm, norm_type):
    # One thread per distinct id rescales its row: a row is read and scaled once however often it occurs.
    indices = as_device(indices)
    n = indices.numel()
    if n == 0:
        return weight
    rt = runtime()
    keys = aten.reshape.default(wrapped_keys(aten.reshape.default(indices, [n]), weight.shape[0]), [1, n])
    skeys, _ = sort_int_keys(keys)
    p_ = float(norm_type)
    kind = "inf" if p_ == float("inf") else "1" if p_ == 1 else "2" if p_ == 2 else "p"
    w_st = rt.stypes[weight.dtype]
    params = _RENORM_PACK(n, weight.shape[1], weight.elem_offset, weight.stride(0), weight.stride(1),
                          skeys.elem_offset, float(max_norm), p_ if kind == "p" else 0.0)
    kernel = rt.kernel(("embedding_renorm", weight.dtype, kind), "embedding_renorm", 2,
                       lambda: _renorm_source(w_st, kind))
    rt.dispatch(kernel, (weight._ws.heap, skeys._ws.heap), params, codegen.groups_for(n, 64))
    return weight
