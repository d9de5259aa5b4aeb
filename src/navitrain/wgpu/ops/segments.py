"""torch.segment_reduce over contiguous segments (lengths or offsets) and its backward.

kernels/segment_reduce.py reduces scattered keys after sorting them; here the segments are already runs of
the data along `axis`, so one thread per output element (outer, segment, inner) walks its segment in
order, exactly as the CPU's loop does, and the backward is the same walk writing the data's gradient.
Lengths become offsets first (a cumulative sum on the GPU), so both forms share one kernel.

Every step is rounded to the data's dtype, as the CPU computes float16/bfloat16 segments in that dtype
(each partial sum, the mean's division, the gradient's products). max/min follow the CPU: a NaN value
wins and stays; an empty segment gives `initial`, else -inf/+inf (max/min), 0 (sum), 1 (prod), NaN (mean).
The max/min gradient is shared among the elements equal to the result (or NaN), divided by their count
only where it is positive: the CPU's loop does exactly that.
"""
from __future__ import annotations

import torch

from navitrain.wgpu.dims import contiguous, wrap_dim
from navitrain.wgpu.dispatch import implements
from navitrain.wgpu.dtypes import NoKernelForDtype
from navitrain.wgpu.kernels import codegen
from navitrain.wgpu.runtime import runtime
from navitrain.wgpu.tensor import empty, to_cpu

aten = torch.ops.aten

WG = 64
REDUCTIONS = ("sum", "mean", "max", "min", "prod")

# `total` threads over [outer, segs, inner]; data is [outer, size, inner]; offsets [outer, segs + 1].
_SEG_P = codegen.ParamBlock("total", "segs", "inner", "size", "data_off", "offs_off", "out_off", "grad_off",
                            "gin_off", "initial: f32", "has_initial", defaults={"grad_off": 0, "gin_off": 0})

_HEAD = """
  if (gi >= total) { return; }
  let i = gi % inner; let s = (gi / inner) % segs; let o = gi / (inner * segs);
  let start = u32(OFFS(o * (segs + 1u) + s));
  let end = u32(OFFS(o * (segs + 1u) + s + 1u));
  let seg_len = end - start;
  let at_data = o * size * inner + i;   // + j * inner for element j of the axis"""


def _start_value(reduce: str) -> str:
    if reduce == "max":
        return "bitcast<f32>(0xff800000u)"
    if reduce == "min":
        return "bitcast<f32>(0x7f800000u)"
    return "1.0" if reduce == "prod" else "0.0"


def _forward_body(reduce: str, rnd) -> str:
    step = {
        "sum": f"acc = {rnd('acc + v')};", "mean": f"acc = {rnd('acc + v')};",
        "prod": f"acc = {rnd('acc * v')};",
        # std::max(acc, v) is (acc < v) ? v : acc, so a NaN acc stays; lavapipe ignores NaN in `<`.
        "max": "acc = select(select(acc, v, acc < v && !is_nan(acc)), v, is_nan(v));",
        "min": "acc = select(select(acc, v, v < acc && !is_nan(acc)), v, is_nan(v));",
    }[reduce]
    finish = ""
    if reduce == "mean":
        finish = f"""
  if (seg_len == 0u && has_initial == 0u) {{ acc = bitcast<f32>(0x7fc00000u); }}
  else if (seg_len > 0u && !is_nan(acc)) {{ acc = {rnd('acc / f32(seg_len)')}; }}"""
    return f"""
  var acc = select({_start_value(reduce)}, {rnd('initial')}, has_initial != 0u);
  for (var j = start; j < end; j = j + 1u) {{
    let v = DATA(at_data + j * inner);
    {step}
  }}{finish}
  STORE_OUT(gi, acc);"""


def _backward_body(reduce: str, rnd) -> str:
    if reduce in ("max", "min"):
        return f"""
  if (seg_len == 0u) {{ return; }}
  let res = OUT(gi); let g = GRAD(gi);
  var count = 0u;
  for (var j = start; j < end; j = j + 1u) {{
    let v = DATA(at_data + j * inner);
    if (is_nan(v) || (v == res && !is_nan(res))) {{ count = count + 1u; }}
  }}
  for (var j = start; j < end; j = j + 1u) {{
    let v = DATA(at_data + j * inner);
    if (is_nan(v) || (v == res && !is_nan(res))) {{
      // the CPU divides only a positive gradient by the count (and only when two or more share it)
      STORE_GIN(at_data + j * inner, select(g, {rnd('g / f32(count)')}, count >= 2u && g > 0.0 && !is_nan(g)));
    }}
  }}"""
    if reduce in ("sum", "mean"):
        g = "GRAD(gi)" if reduce == "sum" else rnd("GRAD(gi) / f32(seg_len)")
        return f"""
  if (seg_len == 0u) {{ return; }}
  let g = {g};
  for (var j = start; j < end; j = j + 1u) {{ STORE_GIN(at_data + j * inner, g); }}"""
    return f"""
  if (seg_len == 0u) {{ return; }}
  let g = GRAD(gi);
  let gv = {rnd('g * OUT(gi)')};
  let first = select(1.0, {rnd('initial')}, has_initial != 0u);
  for (var j = start; j < end; j = j + 1u) {{
    let v = DATA(at_data + j * inner);
    if (is_nan(v) || v == 0.0) {{   // the product of the others, computed explicitly as on the CPU
      var others = first;
      for (var k = start; k < end; k = k + 1u) {{
        if (k != j) {{ others = {rnd('others * DATA(at_data + k * inner)')}; }}
      }}
      STORE_GIN(at_data + j * inner, {rnd('g * others')});
    }} else {{
      STORE_GIN(at_data + j * inner, {rnd('gv / v')});
    }}
  }}"""


def _source(reduce: str, backward: bool, dtype: torch.dtype) -> str:
    rt = runtime()
    st, ist = rt.stypes[dtype], rt.stypes[torch.int64]
    rnd = lambda e: st.load(st.store(f"({e})"), "f32")
    body = _HEAD + (_backward_body(reduce, rnd) if backward else _forward_body(reduce, rnd))
    body = (body.replace("STORE_GIN(", "store_gin(").replace("STORE_OUT(", "store_out(")
            .replace("OFFS(", "i32_of_offset(")
            .replace("DATA(", "load_data(").replace("OUT(", "load_out(").replace("GRAD(", "load_grad("))
    names = ["data", "offs", "outs", "grads", "gin"] if backward else ["data", "offs", "outs"]
    helpers = f"""
fn i32_of_offset(k: u32) -> i32 {{ return {ist.load('offs[k + P_OFFS]', 'i32')}; }}
fn load_data(k: u32) -> f32 {{ return {st.load('data[k + P_DATA]', 'f32')}; }}
fn load_out(k: u32) -> f32 {{ return {st.load('outs[k + P_OUT]', 'f32')}; }}
"""
    if backward:
        helpers += f"fn load_grad(k: u32) -> f32 {{ return {st.load('grads[k + P_GRAD]', 'f32')}; }}\n"
        helpers += f"fn store_gin(k: u32, v: f32) {{ gin[k + P_GIN] = {st.store('v')}; }}\n"
    else:
        helpers += f"fn store_out(k: u32, v: f32) {{ outs[k + P_OUT] = {st.store('v')}; }}\n"
    for marker, field in (("P_OFFS", "offs_off"), ("P_DATA", "data_off"), ("P_OUT", "out_off"),
                          ("P_GRAD", "grad_off"), ("P_GIN", "gin_off")):
        helpers = helpers.replace(marker, _SEG_P.ref(field))
    types = [st.wgsl, ist.wgsl, st.wgsl] + ([st.wgsl, st.wgsl] if backward else [])
    return codegen.module(types, _SEG_P.wgsl() + body, WG, helpers=helpers, names=names)


def _check_dtype(data):
    if data.dtype == torch.float64:
        raise NoKernelForDtype("segment_reduce: float64 has no wgpu kernels")  # the counted CPU fallback
    if not data.dtype.is_floating_point:
        name = {torch.int64: "Long", torch.int32: "Int", torch.bool: "Bool"}.get(data.dtype, str(data.dtype))
        raise NotImplementedError(f"\"_segment_reduce_cpu\" not implemented for '{name}'")


def _offsets_from(lengths=None, offsets=None):
    """Offsets [outer, segs + 1] (int64, contiguous) from either form."""
    if offsets is not None:
        return contiguous(aten._to_copy.default(offsets, dtype=torch.int64))
    ends = aten.cumsum.default(lengths, -1, dtype=torch.int64)
    zeros = aten.zeros.default(list(lengths.shape[:-1]) + [1], dtype=torch.int64, device=lengths.device)
    return contiguous(aten.cat.default([zeros, ends], -1))


def _launch(reduce, backward, data, offs, out, initial, grad=None, gin=None):
    axis = offs.dim() - 1
    segs = offs.shape[-1] - 1
    outer = 1
    for s in data.shape[:axis]:
        outer *= s
    inner = 1
    for s in data.shape[axis + 1:]:
        inner *= s
    total = outer * segs * inner
    if total == 0:
        return
    rt = runtime()
    key = ("segment_reduce_runs", reduce, backward, data.dtype)
    kernel = rt.kernel(key, f"segment_{reduce}{'_backward' if backward else ''}", 5 if backward else 3,
                       lambda: _source(reduce, backward, data.dtype))
    extra = {"grad_off": grad.elem_offset, "gin_off": gin.elem_offset} if backward else {}
    params = _SEG_P.pack(total=total, segs=segs, inner=inner, size=data.shape[axis], data_off=data.elem_offset,
                         offs_off=offs.elem_offset, out_off=out.elem_offset,
                         initial=float(initial) if initial is not None else 0.0,
                         has_initial=int(initial is not None), **extra)
    heaps = (data._ws.heap, offs._ws.heap, out._ws.heap) + ((grad._ws.heap, gin._ws.heap) if backward else ())
    rt.dispatch(kernel, heaps, params, codegen.groups_for(total, WG))


def _reduction(reduce):
    if reduce not in REDUCTIONS:
        raise RuntimeError(f"unsupported reduction given! {reduce}")
    return reduce


@implements(aten.segment_reduce.default)
def segment_reduce(data, reduce, *, lengths=None, indices=None, offsets=None, axis=0, unsafe=False, initial=None):
    axis = wrap_dim(axis, data.dim())
    if indices is not None:
        raise RuntimeError("segment_reduce(): indices based reduction is not supported yet.")
    if lengths is None and offsets is None:
        raise RuntimeError("segment_reduce(): Either lengths or offsets must be defined.")
    reduce = _reduction(reduce)
    _check_dtype(data)
    form = offsets if offsets is not None else lengths
    if data.dim() < form.dim():
        raise RuntimeError("segment_reduce(): data has fewer dimensions than " + ("offsets" if offsets is not None
                                                                                  else "lengths"))
    if axis != form.dim() - 1:
        name = "offsets" if offsets is not None else "lengths"
        raise RuntimeError(f"segment_reduce(): Expected axis to be the last dimension of {name} but got {axis}.")
    if offsets is None and not unsafe and lengths.numel():
        # The CPU's two checks, read back together (one sync).
        bad_min = aten.lt.Scalar(aten.min.default(lengths), 0)
        bad_sum = aten.any.default(aten.ne.Scalar(aten.sum.dim_IntList(lengths, [-1]), data.shape[axis]))
        flags = to_cpu(aten.stack.default([bad_min, bad_sum])).tolist()
        if flags[0]:
            raise RuntimeError("lengths contains negative value!")
        if flags[1]:
            raise RuntimeError("segment_reduce(): Expected all rows of lengths along axis to sum to "
                               "data.size(lengths.dim()-1) when !unsafe.")
    data = contiguous(data)
    offs = _offsets_from(lengths, offsets)
    shape = list(data.shape)
    shape[axis] = offs.shape[-1] - 1
    out = empty(shape, data.dtype)
    _launch(reduce, False, data, offs, out, initial)
    return out


@implements(aten._segment_reduce_backward.default)
def segment_reduce_backward(grad, output, data, reduce, *, lengths=None, offsets=None, axis=0, initial=None):
    wrap_dim(axis, data.dim())
    if lengths is None and offsets is None:
        raise RuntimeError("segment_reduce(): Either lengths or offsets must be defined.")
    reduce = _reduction(reduce)
    _check_dtype(data)
    data, grad, output = contiguous(data), contiguous(grad), contiguous(output)
    offs = _offsets_from(lengths, offsets)
    gin = aten.zeros.default(list(data.shape), dtype=grad.dtype, device=grad.device)
    _launch(reduce, True, data, offs, output, initial, grad=grad, gin=gin)
    return gin
