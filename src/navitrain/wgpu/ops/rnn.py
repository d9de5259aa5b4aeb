"""LSTM and GRU cells: PyTorch's fused cell ops as one wgpu kernel per step, forward and backward.

For a device other than the CPU, PyTorch's `aten::lstm` / `aten::gru` (and LSTMCell / GRUCell)
decompose into per-step matrix products plus `_thnn_fused_lstm_cell` / `_thnn_fused_gru_cell`, which
take the two gate pre-activations (x W_ih^T, h W_hh^T) and the biases and do everything else in one
pass. PyTorch has CUDA kernels for them only, so without these handlers even the CPU fallback fails.

Layouts, as in PyTorch's CUDA kernels (gates are [B, k*H], gate-major within a row):
- LSTM gates i, f, g, o. Workspace [B, 4H]: the activated gates, which backward needs.
- GRU gates r, z, n. Workspace [B, 5H]: r, z, n activated, hx, and the hidden part of n
  (h W_hn^T + b_hn), which backward needs because n = tanh(x_n + r * h_n).
Each kernel runs one thread per (batch row, hidden unit) and computes in f32; operands are loaded and
stored through their storage types, so float16/bfloat16 cells (autocast) compute in f32 too.

NaN propagation: WGSL's clamp/min/max of NaN are implementation-defined (wgsl_math's sigmoid_f and
tanh_f clamp), so the activations here test for NaN on the bits and never clamp.
"""
from __future__ import annotations

import torch

from navitrain.wgpu.dims import contiguous
from navitrain.wgpu.dispatch import implements
from navitrain.wgpu.dtypes import NoKernelForDtype
from navitrain.wgpu.kernels import codegen
from navitrain.wgpu.kernels.reduction import reduce
from navitrain.wgpu.ops import rnn_by_ops as by_ops
from navitrain.wgpu.runtime import runtime
from navitrain.wgpu.tensor import empty

aten = torch.ops.aten
WG = 256

# exp(-|x|) is at most 1, so neither form overflows; +-inf give exactly 0/1 and NaN stays NaN.
_ACTIVATIONS = """
fn rnn_sigmoid(x: f32) -> f32 {
  if (is_nan(x)) { return x; }
  let e = exp(-abs(x));
  let s = 1.0 / (1.0 + e);
  return select(e * s, s, x >= 0.0);
}
fn rnn_tanh(x: f32) -> f32 {
  if (is_nan(x)) { return x; }
  // Beyond 15, tanh is 1 in f32; the built-in may overflow through exp there on some drivers.
  if (abs(x) > 15.0) { return select(-1.0, 1.0, x > 0.0); }
  return tanh(x);
}
"""


# A cell kernel's parameters: threads, H (hidden units), then each bound tensor's offset, in binding
# order (which tensors are bound depends on the call: one block per kernel variant, with its packer,
# which takes the words in that order).
_BLOCKS: dict[tuple, tuple] = {}


def _launch(name: str, ins: dict, outs: dict, body: str, threads: int, hidden: int) -> None:
    """One cell kernel over `threads` (batch row, hidden unit) pairs. `ins`/`outs` map names to
    tensors (None for an absent optional input, which reads as 0.0); the body reads `ld_<name>(i)` and
    writes `st_<name>(i, v)` with element indices relative to each tensor's start."""
    rt = runtime()
    present = [(n, contiguous(t)) for n, t in ins.items() if t is not None] + list(outs.items())
    if not all(t.is_contiguous() for t in outs.values()):
        raise ValueError(f"{name}: outputs must be contiguous")
    absent = [n for n, t in ins.items() if t is None]
    for _, t in present:
        if not rt.stypes[t.dtype].has_kernels or not t.dtype.is_floating_point:
            raise NoKernelForDtype(f"{name}: no wgpu kernel for {t.dtype}")
    key = ("rnn", name, tuple((n, t.dtype) for n, t in present), tuple(absent))
    cached = _BLOCKS.get(key)
    if cached is None:
        block = codegen.ParamBlock("threads", "H", *(f"{n}_off" for n, _ in present))
        cached = _BLOCKS[key] = (block, block.pack_words)
    block, pack = cached

    def source():
        fns = []
        for k, (n, t) in enumerate(present):
            st = rt.stypes[t.dtype]
            ref = f"b{k}[{block.ref(f'{n}_off')} + i]"
            if n in outs:
                fns.append(f"fn st_{n}(i: u32, v: f32) {{ {ref} = {st.store('v')}; }}")
            else:
                fns.append(f"fn ld_{n}(i: u32) -> f32 {{ return {st.load(ref, 'f32')}; }}")
        fns += [f"fn ld_{n}(i: u32) -> f32 {{ return 0.0; }}" for n in absent]
        types = [rt.stypes[t.dtype].wgsl for _, t in present]
        return codegen.module(types, block.wgsl() + body, WG, helpers=_ACTIVATIONS + "\n".join(fns) + "\n")

    kernel = rt.kernel(key, f"rnn_{name}", len(present), source)
    params = pack(threads, hidden, *(t.elem_offset for _, t in present))
    rt.dispatch(kernel, tuple(t._ws.heap for _, t in present), params, codegen.groups_for(threads, WG))


def _has_kernels(dtype: torch.dtype) -> bool:
    """float dtypes the cell kernels compute in; others (float64) take ops/rnn_by_ops.py."""
    return dtype.is_floating_point and runtime().stypes[dtype].has_kernels


def _check_gates(name: str, gates, state, k: int) -> tuple[int, int]:
    if gates.dim() != 2 or state.dim() != 2 or gates.shape[0] != state.shape[0] or gates.shape[1] != k * state.shape[1]:
        raise RuntimeError(f"{name}: gates of shape {tuple(gates.shape)} do not fit a state of shape "
                           f"{tuple(state.shape)} ({k} gates per hidden unit)")
    return state.shape[0], state.shape[1]


# Thread (b, j): its gates sit at b*kH + g*H + j, its state at b*H + j, its bias at g*H + j.
_PROLOGUE = """
  if (gi >= threads) { return; }
  let b = gi / H; let j = gi % H;
"""

_LSTM_FORWARD = _PROLOGUE + """
  let g = b * 4u * H + j;
  let ig = rnn_sigmoid(ld_x(g) + ld_h(g) + ld_bx(j) + ld_bh(j));
  let fg = rnn_sigmoid(ld_x(g + H) + ld_h(g + H) + ld_bx(j + H) + ld_bh(j + H));
  let cg = rnn_tanh(ld_x(g + 2u * H) + ld_h(g + 2u * H) + ld_bx(j + 2u * H) + ld_bh(j + 2u * H));
  let og = rnn_sigmoid(ld_x(g + 3u * H) + ld_h(g + 3u * H) + ld_bx(j + 3u * H) + ld_bh(j + 3u * H));
  let cy = fg * ld_cx(gi) + ig * cg;
  st_cy(gi, cy);
  st_hy(gi, og * rnn_tanh(cy));
  st_ws(g, ig); st_ws(g + H, fg); st_ws(g + 2u * H, cg); st_ws(g + 3u * H, og);
"""


@implements(aten._thnn_fused_lstm_cell.default)
def fused_lstm_cell(input_gates, hidden_gates, cx, input_bias=None, hidden_bias=None):
    B, H = _check_gates("_thnn_fused_lstm_cell", input_gates, cx, 4)
    dtype = input_gates.dtype
    if not _has_kernels(dtype):
        return by_ops.lstm_cell(input_gates, hidden_gates, cx, input_bias, hidden_bias)
    hy, cy, ws = empty([B, H], dtype), empty([B, H], dtype), empty([B, 4 * H], dtype)
    lstm_forward_into(input_gates, hidden_gates, cx, input_bias, hidden_bias, hy, cy, ws)
    return hy, cy, ws


def lstm_forward_into(input_gates, hidden_gates, cx, input_bias, hidden_bias, hy, cy, ws) -> None:
    """The LSTM cell into given contiguous outputs (ops/rnn_layers.py writes straight into its
    per-step slices)."""
    B, H = cx.shape
    if B * H:
        _launch("lstm_forward", {"x": input_gates, "h": hidden_gates, "cx": cx, "bx": input_bias, "bh": hidden_bias},
                {"hy": hy, "cy": cy, "ws": ws}, _LSTM_FORWARD, B * H, H)


# d tanh(c) / dc = 1 - tanh(c)^2, d sigmoid = s (1 - s); the gate gradients are pre-activation.
_LSTM_BACKWARD = _PROLOGUE + """
  let g = b * 4u * H + j;
  let ig = ld_ws(g); let fg = ld_ws(g + H); let cg = ld_ws(g + 2u * H); let og = ld_ws(g + 3u * H);
  let ghy = ld_ghy(gi);
  let tc = rnn_tanh(ld_cy(gi));
  let gc = ghy * og * (1.0 - tc * tc) + ld_gcy(gi) + ld_gcs(gi);
  st_gx(g, gc * cg * ig * (1.0 - ig));
  st_gx(g + H, gc * ld_cx(gi) * fg * (1.0 - fg));
  st_gx(g + 2u * H, gc * ig * (1.0 - cg * cg));
  st_gx(g + 3u * H, ghy * tc * og * (1.0 - og));
  st_gcx(gi, gc * fg);
"""


@implements(aten._thnn_fused_lstm_cell_backward_impl.default)
def fused_lstm_cell_backward_impl(grad_hy, grad_cy, cx, cy, workspace, has_bias):
    B, H = _check_gates("_thnn_fused_lstm_cell_backward_impl", workspace, cx, 4)
    dtype = workspace.dtype
    if not _has_kernels(dtype):
        grad_gates, grad_cx = by_ops.lstm_cell_backward(grad_hy, grad_cy, cx, cy, workspace)
        return grad_gates, grad_cx, (grad_gates.sum(0) if has_bias else None)
    grad_gates, grad_cx = empty([B, 4 * H], dtype), empty([B, H], dtype)
    lstm_backward_into(grad_hy, grad_cy, cx, cy, workspace, grad_gates, grad_cx)
    grad_bias = reduce(grad_gates, [0], False, "sum", dtype) if has_bias else None
    return grad_gates, grad_cx, grad_bias


def lstm_backward_into(grad_hy, grad_cy, cx, cy, workspace, grad_gates, grad_cx, grad_cy_extra=None) -> None:
    """The LSTM cell's backward into given contiguous outputs; absent (None) output grads are 0.
    `grad_cy_extra` is added to grad_cy (a packed sequence's final c, taken at its last step)."""
    B, H = cx.shape
    if B * H:
        _launch("lstm_backward", {"ghy": grad_hy, "gcy": grad_cy, "gcs": grad_cy_extra, "cx": cx, "cy": cy,
                                  "ws": workspace},
                {"gx": grad_gates, "gcx": grad_cx}, _LSTM_BACKWARD, B * H, H)


_GRU_FORWARD = _PROLOGUE + """
  let g = b * 3u * H + j;
  let rg = rnn_sigmoid(ld_x(g) + ld_h(g) + ld_bx(j) + ld_bh(j));
  let zg = rnn_sigmoid(ld_x(g + H) + ld_h(g + H) + ld_bx(j + H) + ld_bh(j + H));
  let hn = ld_h(g + 2u * H) + ld_bh(j + 2u * H);
  let ng = rnn_tanh(ld_x(g + 2u * H) + ld_bx(j + 2u * H) + rg * hn);
  let hx = ld_hx(gi);
  st_hy(gi, ng + zg * (hx - ng));
  let w = b * 5u * H + j;
  st_ws(w, rg); st_ws(w + H, zg); st_ws(w + 2u * H, ng); st_ws(w + 3u * H, hx); st_ws(w + 4u * H, hn);
"""


@implements(aten._thnn_fused_gru_cell.default)
def fused_gru_cell(input_gates, hidden_gates, hx, input_bias=None, hidden_bias=None):
    B, H = _check_gates("_thnn_fused_gru_cell", input_gates, hx, 3)
    dtype = input_gates.dtype
    if not _has_kernels(dtype):
        return by_ops.gru_cell(input_gates, hidden_gates, hx, input_bias, hidden_bias)
    hy, ws = empty([B, H], dtype), empty([B, 5 * H], dtype)
    gru_forward_into(input_gates, hidden_gates, hx, input_bias, hidden_bias, hy, ws)
    return hy, ws


def gru_forward_into(input_gates, hidden_gates, hx, input_bias, hidden_bias, hy, ws) -> None:
    B, H = hx.shape
    if B * H:
        _launch("gru_forward", {"x": input_gates, "h": hidden_gates, "hx": hx, "bx": input_bias, "bh": hidden_bias},
                {"hy": hy, "ws": ws}, _GRU_FORWARD, B * H, H)


# hy = n + z (hx - n), n = tanh(x_n + r h_n): the input and hidden gate gradients differ only in n's
# (d/dx_n = gn, d/dh_n = gn * r).
_GRU_BACKWARD = _PROLOGUE + """
  let w = b * 5u * H + j;
  let rg = ld_ws(w); let zg = ld_ws(w + H); let ng = ld_ws(w + 2u * H); let hx = ld_ws(w + 3u * H);
  let hn = ld_ws(w + 4u * H);
  let ghy = ld_ghy(gi);
  let gz = ghy * (hx - ng) * zg * (1.0 - zg);
  let gn = ghy * (1.0 - zg) * (1.0 - ng * ng);
  let gr = gn * hn * rg * (1.0 - rg);
  let g = b * 3u * H + j;
  st_gx(g, gr); st_gx(g + H, gz); st_gx(g + 2u * H, gn);
  st_gh(g, gr); st_gh(g + H, gz); st_gh(g + 2u * H, gn * rg);
  st_ghx(gi, ghy * zg + ld_gnext(gi));
"""


def gru_backward_into(grad_hy, workspace, grad_next, grad_x, grad_h, grad_hx) -> None:
    """The GRU cell's backward into given contiguous outputs; `grad_next` (or None), added to the
    gradient of hx, is the gradient the layer's output at the previous step receives from above."""
    B, H = grad_hx.shape
    if B * H:
        _launch("gru_backward", {"ghy": grad_hy, "ws": workspace, "gnext": grad_next},
                {"gx": grad_x, "gh": grad_h, "ghx": grad_hx}, _GRU_BACKWARD, B * H, H)


@implements(aten._thnn_fused_gru_cell_backward.default)
def fused_gru_cell_backward(grad_hy, workspace, has_bias):
    B, H = _check_gates("_thnn_fused_gru_cell_backward", workspace, grad_hy, 5)
    dtype = workspace.dtype
    if not _has_kernels(dtype):
        grad_x, grad_h, grad_hx = by_ops.gru_cell_backward(grad_hy, workspace)
        return (grad_x, grad_h, grad_hx) + ((grad_x.sum(0), grad_h.sum(0)) if has_bias else (None, None))
    grad_x, grad_h, grad_hx = empty([B, 3 * H], dtype), empty([B, 3 * H], dtype), empty([B, H], dtype)
    gru_backward_into(grad_hy, workspace, None, grad_x, grad_h, grad_hx)
    if not has_bias:
        return grad_x, grad_h, grad_hx, None, None
    return (grad_x, grad_h, grad_hx, reduce(grad_x, [0], False, "sum", dtype),
            reduce(grad_h, [0], False, "sum", dtype))


# pack_padded_sequence: PyTorch's own kernel (CompositeExplicitAutograd) is device-generic -- it reads
# the lengths, which live on the CPU, slices the input per length and cats the slices -- but the
# dispatcher offers it to a PrivateUse1 tensor only through __torch_dispatch__. Its backward,
# _pack_padded_sequence_backward, is CompositeImplicitAutograd and needs nothing here.
_COMPOSITE_EXPLICIT = torch._C.DispatchKeySet(torch._C.DispatchKey.CompositeExplicitAutograd)


@implements(aten._pack_padded_sequence.default)
def pack_padded_sequence(input, lengths, batch_first):
    return aten._pack_padded_sequence.default.redispatch(_COMPOSITE_EXPLICIT, input, lengths, batch_first)
