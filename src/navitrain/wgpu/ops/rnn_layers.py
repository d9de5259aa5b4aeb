"""nn.LSTM / nn.GRU as whole layers: aten::lstm.input and aten::gru.input at the AutogradPrivateUse1 key.

PyTorch's decomposition for a device other than the CPU runs, per time step, two GEMMs (input and
hidden projections) and the fused cell; its autograd then runs, per step, the cell's backward, four
GEMMs and adds the step's weight gradients into the running sums. Here, per layer and direction:

    forward:  G_x = X W_ih^T + b_ih for all T steps as one GEMM (F.linear, differentiated by PyTorch);
              then per step one GEMM (h W_hh^T) and one fused cell kernel writing h, c and the
              workspace straight into [T, ...] buffers (and, with proj_size, one GEMM h W_hr^T);
    backward: per step one fused cell-backward kernel and one GEMM (dgates W_hh, with the output's
              gradient at the previous step added in the GEMM's epilogue); then dW_hh, db_hh and
              dW_hr over all steps as one GEMM/reduction each. dG_x flows back into F.linear, whose
              backward is one GEMM for dX and one for dW_ih.

Packed sequences (aten::lstm.data / gru.data) run the same way over a padded [T, B] grid (_Packing).
Inputs of mixed dtypes, or of a dtype without kernels (float64), keep PyTorch's C++ composite, which
reaches the cell ops in ops/rnn.py. Not OpOverload.decompose: that prefers the Python decomposition
(torch/_decomp) once it is imported, and torch 2.11's one_layer_lstm returns hx.squeeze(1) of a
[1, B, H] state, so h_n came out [L*D, 1, B, H] for B > 1 (the H100 run 12 with torch 2.11; 2.13 squeezes
dim 0). The recurrence node has no double backward (as cuDNN's RNNs).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from navitrain.wgpu.dims import contiguous
from navitrain.wgpu.kernels import gemm, pointwise
from navitrain.wgpu.kernels.reduction import reduce
from navitrain.wgpu.ops import rnn as cells
from navitrain.wgpu.ops.views import view_of
from navitrain.wgpu.tensor import WgpuTensor, contiguous_strides, empty

aten = torch.ops.aten


def _t(w: WgpuTensor) -> WgpuTensor:
    """The transpose of a 2-D tensor, as a view."""
    return view_of(w, [w.shape[1], w.shape[0]], [w.stride(1), w.stride(0)])


def _step(x: WgpuTensor, t: int) -> WgpuTensor:
    """x[t] of a contiguous [T, ...] tensor, as a view (no dispatch)."""
    inner = list(x.shape[1:])
    return view_of(x, inner, contiguous_strides(inner), x.storage_offset() + t * math.prod(inner))


def _rows(x: WgpuTensor) -> WgpuTensor:
    """A contiguous [T, B, N] tensor as [T*B, N] (a view)."""
    return view_of(x, [x.shape[0] * x.shape[1], x.shape[2]], [x.shape[2], 1])


def _mm(a, b, out, add=None):
    """out = a @ b (+ add, in the GEMM's epilogue)."""
    if add is None:
        return gemm.gemm(a, b, out)
    return gemm.gemm(a, b, out, 1.0, 1.0, add, cin_strides=(add.stride(0), add.stride(1), 0))


class _Recurrence(torch.autograd.Function):
    """One layer and direction of an LSTM (c0 given) or GRU (c0 None) over precomputed input gates
    gi [T, B, kH]: returns the outputs [T, B, P] and the final h (and c). `last` (int64 [B], or
    None for the last step): row t*B + b of [T*B, ...] holding sequence b's final state, for
    sequences of different lengths (packed)."""

    @staticmethod
    def forward(ctx, gi, h0, c0, w_hh, b_hh, w_hr, reverse: bool, last):
        lstm = c0 is not None
        T, B, G = gi.shape
        H = G // (4 if lstm else 3)
        P = h0.shape[1]
        dtype = gi.dtype
        out = empty([T, B, P], dtype)
        ws = empty([T, B, (4 if lstm else 5) * H], dtype)
        cs = empty([T, B, H], dtype) if lstm else None
        hraw = empty([T, B, H], dtype) if w_hr is not None else None
        w_hh_t = _t(w_hh)
        h, c = h0, c0
        for t in (range(T - 1, -1, -1) if reverse else range(T)):
            hg = _mm(h, w_hh_t, empty([B, G], dtype))
            h_out = _step(out, t)
            h_cell = h_out if hraw is None else _step(hraw, t)
            if lstm:
                c_out = _step(cs, t)
                cells.lstm_forward_into(_step(gi, t), hg, c, None, b_hh, h_cell, c_out, _step(ws, t))
                c = c_out
            else:
                cells.gru_forward_into(_step(gi, t), hg, h, None, b_hh, h_cell, _step(ws, t))
            if hraw is not None:
                _mm(h_cell, _t(w_hr), h_out)
            h = h_out
        ctx.save_for_backward(h0, c0, w_hh, b_hh, w_hr, out, ws, cs, hraw, last)
        ctx.reverse = reverse
        if last is not None:
            h = aten.index_select.default(_rows(out), 0, last)
            c = aten.index_select.default(_rows(cs), 0, last) if lstm else None
            return out, h, c
        # Copies, not views of `out`/`cs`: outputs of a custom node that alias each other or saved
        # tensors would trip autograd's view/in-place checks.
        return out, aten.clone.default(h), (aten.clone.default(c) if lstm else None)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, d_out, d_hT, d_cT):
        h0, c0, w_hh, b_hh, w_hr, out, ws, cs, hraw, last = ctx.saved_tensors
        lstm = c0 is not None
        T, B, P = out.shape
        G = w_hh.shape[0]
        H = G // (4 if lstm else 3)
        dtype = out.dtype
        d_out = contiguous(d_out)
        dc_at = None   # per-step extra gradient of c (a packed sequence's final c enters at its last step)
        if last is not None:
            # The final states' gradients enter at each sequence's last step, not at the last step.
            d_out = aten.index_add.default(_rows(d_out), 0, last, d_hT).view(T, B, P)
            d_hT = None
            if lstm:
                dc_at = aten.index_add.default(aten.zeros.default([T * B, cs.shape[2]], dtype=dtype, device=out.device),
                                               0, last, d_cT).view(T, B, cs.shape[2])
                d_cT = None
        dg_x = empty([T, B, G], dtype)              # gradient of the input gates
        dg_h = dg_x if lstm else empty([T, B, G], dtype)   # of the hidden gates (the same for an LSTM)
        dh_all = empty([T, B, P], dtype)            # total gradient of each step's output h
        order = list(range(T)) if ctx.reverse else list(range(T - 1, -1, -1))   # backward's order
        first = order[0]
        if d_hT is None:
            aten.copy_.default(_step(dh_all, first), _step(d_out, first))
        else:
            pointwise.run("add", "a + b", [_step(d_out, first), contiguous(d_hT)], dtype, "f32",
                          out=_step(dh_all, first))
        dc = d_cT
        for t in order:
            prev = t + 1 if ctx.reverse else t - 1
            has_prev = 0 <= prev < T
            dh = _step(dh_all, t)
            dh_cell = dh if hraw is None else _mm(dh, w_hr, empty([B, H], dtype))
            d_prev = _step(dh_all, prev) if has_prev else empty([B, P], dtype)
            if lstm:
                c_prev = _step(cs, prev) if has_prev else c0
                dc_prev = empty([B, H], dtype)
                cells.lstm_backward_into(dh_cell, dc, c_prev, _step(cs, t), _step(ws, t), _step(dg_x, t), dc_prev,
                                         None if dc_at is None else _step(dc_at, t))
                dc = dc_prev
                _mm(_step(dg_x, t), w_hh, d_prev, _step(d_out, prev) if has_prev else None)
            else:
                dh_direct = empty([B, H], dtype)   # through hy = n + z (hx - n), plus the output's gradient
                cells.gru_backward_into(dh_cell, _step(ws, t), _step(d_out, prev) if has_prev else None,
                                        _step(dg_x, t), _step(dg_h, t), dh_direct)
                _mm(_step(dg_h, t), w_hh, d_prev, dh_direct)
            dh0 = d_prev
        # Weight gradients of all steps at once: the hidden state each step read, in time order.
        h_prev = empty([T, B, P], dtype)
        if T > 1:
            inner = view_of(out, [T - 1, B, P], [B * P, P, 1], out.storage_offset() + (B * P if ctx.reverse else 0))
            dst = view_of(h_prev, [T - 1, B, P], [B * P, P, 1], h_prev.storage_offset() + (0 if ctx.reverse else B * P))
            aten.copy_.default(dst, inner)
        aten.copy_.default(_step(h_prev, T - 1 if ctx.reverse else 0), h0)
        dw_hh = _mm(_t(_rows(dg_h)), _rows(h_prev), empty([G, P], dtype))
        db_hh = reduce(_rows(dg_h), [0], False, "sum", dtype) if b_hh is not None else None
        dw_hr = _mm(_t(_rows(dh_all)), _rows(hraw), empty([P, H], dtype)) if w_hr is not None else None
        return dg_x, dh0, (dc if lstm else None), dw_hh, db_hh, dw_hr, None, None


def _fast(input, tensors, dim: int = 3) -> bool:
    """Inputs the whole-layer path takes; anything else (float64 included) keeps PyTorch's decomposition."""
    return (input.dim() == dim and all(n > 0 for n in input.shape[:-1]) and cells._has_kernels(input.dtype)
            and all(isinstance(t, WgpuTensor) and t.dtype == input.dtype for t in tensors))


class _Packing:
    """Where the rows of a packed sequence (batch_sizes: CPU int64, non-increasing) sit in a padded
    time-major [T, B] grid, as device index tensors:
    - rows: the padded row t*B + b of each packed row, in packed order (padded -> packed: one gather);
    - source: for each padded row, its packed row, or N (a zero row) for padding (packed -> padded);
    - last: the padded row of each sequence's last step (its final state);
    - flip: for each padded row, the row of the same sequence reversed within its own length (padding
      stays put), an involution: the reverse direction runs forward over flipped rows."""

    _cache: dict = {}

    def __init__(self, batch_sizes: torch.Tensor, device):
        bs = batch_sizes.to(torch.int64)
        T, B, N = bs.shape[0], int(bs[0]), int(bs.sum())
        lengths = (bs[None, :] > torch.arange(B)[:, None]).sum(1)
        step = torch.repeat_interleave(torch.arange(T), bs)
        rows = step * B + (torch.arange(N) - (torch.cumsum(bs, 0) - bs)[step])
        source = torch.full((T * B,), N, dtype=torch.int64)
        source[rows] = torch.arange(N)
        t, b = torch.arange(T)[:, None], torch.arange(B)[None, :]
        flip = (torch.where(t < lengths[None, :], lengths[None, :] - 1 - t, t) * B + b).flatten()
        self.T, self.B = T, B
        self.rows, self.source, self.flip = (v.to(device) for v in (rows, source, flip))
        self.last = ((lengths - 1) * B + torch.arange(B)).to(device)

    @classmethod
    def of(cls, batch_sizes, device) -> "_Packing":
        key = (str(device), *batch_sizes.tolist())   # batch_sizes live on the CPU: no device read
        packing = cls._cache.get(key)
        if packing is None:
            if len(cls._cache) > 64:
                cls._cache.clear()
            packing = cls._cache[key] = cls(batch_sizes, device)
        return packing


def _rows_of(x, index):
    """x [T, B, F] -> x.view(T*B, F).index_select(0, index).view(T, B, F) (differentiable)."""
    T, B, Fn = x.shape
    return x.reshape(T * B, Fn).index_select(0, index).view(T, B, Fn)


def _layers(lstm, x, h0s, c0s, params, has_biases, num_layers, dropout, train, bidirectional, packing=None):
    """x: time-major [T, B, I] (padded for packed sequences, with `packing`)."""
    directions = 2 if bidirectional else 1
    per = len(params) // (num_layers * directions)   # w_ih, w_hh[, b_ih, b_hh][, w_hr]
    has_proj = per == (5 if has_biases else 3)
    last = None if packing is None else packing.last
    h_n, c_n = [], []
    for layer in range(num_layers):
        outs = []
        for d in range(directions):
            i = layer * directions + d
            p = params[i * per:(i + 1) * per]
            b_ih, b_hh = (p[2], p[3]) if has_biases else (None, None)
            w_hr = p[-1] if has_proj else None
            gi = F.linear(x, p[0], b_ih).contiguous()     # every step's input projection: one GEMM
            h0, c0, w_hh = h0s[i], (c0s[i] if lstm else None), p[1]
            if gi.dtype != w_hh.dtype:
                # Under autocast the projection comes out in the half type: run the recurrence in it
                # too, as CUDA's autocast runs its RNNs (differentiable casts, so grads return in f32).
                h0, c0, w_hh, b_hh, w_hr = (None if v is None else v.to(gi.dtype) for v in (h0, c0, w_hh, b_hh, w_hr))
            # Sequences of different lengths run backwards over their own steps: flip each within
            # its length, run forwards, flip the outputs back.
            flip = packing is not None and d == 1
            if flip:
                gi = _rows_of(gi, packing.flip)
            out, h, c = _Recurrence.apply(gi, h0, c0, w_hh, b_hh, w_hr, d == 1 and not flip, last)
            outs.append(_rows_of(out, packing.flip) if flip else out)
            h_n.append(h)
            c_n.append(c)
        x = outs[0] if directions == 1 else torch.cat(outs, 2)
        if dropout and train and layer < num_layers - 1:
            x = F.dropout(x, dropout, True)
    return x, torch.stack(h_n), (torch.stack(c_n) if lstm else None)


def _run(lstm, input, h0s, c0s, params, has_biases, num_layers, dropout, train, bidirectional, batch_first):
    x = input.transpose(0, 1) if batch_first else input
    out, h_n, c_n = _layers(lstm, x, h0s, c0s, params, has_biases, num_layers, dropout, train, bidirectional)
    return (out.transpose(0, 1) if batch_first else out), h_n, c_n


def _run_packed(lstm, data, batch_sizes, h0s, c0s, params, has_biases, num_layers, dropout, train, bidirectional):
    """Packed sequences as a padded [T, B] grid: the steps past a sequence's end compute on zeros and
    are never read (the outputs are gathered back from the real rows, each sequence's final state
    from its last step), so values and gradients are those of PyTorch's per-step packed loop. Dropout
    between layers draws its mask over the padded grid."""
    packing = _Packing.of(batch_sizes, data.device)
    T, B = packing.T, packing.B
    x = torch.cat([data, data.new_zeros(1, data.shape[1])]).index_select(0, packing.source).view(T, B, -1)
    out, h_n, c_n = _layers(lstm, x, h0s, c0s, params, has_biases, num_layers, dropout, train, bidirectional, packing)
    return out.reshape(T * B, -1).index_select(0, packing.rows), h_n, c_n


def _composite(op, *args):
    """op's C++ CompositeImplicitAutograd kernel (see the module docstring: never the Python one)."""
    return op._op_dk(torch._C.DispatchKey.CompositeImplicitAutograd, *args)


def lstm_input(input, hx, params, has_biases, num_layers, dropout, train, bidirectional, batch_first):
    if not _fast(input, [*hx, *params]):
        return _composite(aten.lstm.input, input, hx, params, has_biases, num_layers, dropout, train, bidirectional,
                                         batch_first)
    return _run(True, input, hx[0], hx[1], params, has_biases, num_layers, dropout, train, bidirectional, batch_first)


def gru_input(input, hx, params, has_biases, num_layers, dropout, train, bidirectional, batch_first):
    if not _fast(input, [hx, *params]):
        return _composite(aten.gru.input, input, hx, params, has_biases, num_layers, dropout, train, bidirectional,
                                        batch_first)
    return _run(False, input, hx, None, params, has_biases, num_layers, dropout, train, bidirectional, batch_first)[:2]


def lstm_data(data, batch_sizes, hx, params, has_biases, num_layers, dropout, train, bidirectional):
    if not _fast(data, [*hx, *params], dim=2):
        return _composite(aten.lstm.data, data, batch_sizes, hx, params, has_biases, num_layers, dropout, train,
                                        bidirectional)
    return _run_packed(True, data, batch_sizes, hx[0], hx[1], params, has_biases, num_layers, dropout, train,
                       bidirectional)


def gru_data(data, batch_sizes, hx, params, has_biases, num_layers, dropout, train, bidirectional):
    if not _fast(data, [hx, *params], dim=2):
        return _composite(aten.gru.data, data, batch_sizes, hx, params, has_biases, num_layers, dropout, train,
                                       bidirectional)
    return _run_packed(False, data, batch_sizes, hx, None, params, has_biases, num_layers, dropout, train,
                       bidirectional)[:2]


def pack_padded_sequence_backward(grad, input_size, batch_sizes, batch_first):
    """PyTorch's composite copies one time step at a time (T ops); here the packed gradient's rows go
    to their padded places in one gather (a zero row for the padding)."""
    packing = _Packing.of(batch_sizes, grad.device)
    T, B = packing.T, packing.B
    rest = list(grad.shape[1:])
    flat = grad.reshape(grad.shape[0], -1)
    padded = torch.cat([flat, flat.new_zeros(1, flat.shape[1])]).index_select(0, packing.source).view([T, B] + rest)
    steps = input_size[1] if batch_first else input_size[0]
    if steps > T:   # the padded input was longer than its longest sequence
        padded = torch.cat([padded, padded.new_zeros([steps - T, B] + rest)])
    return padded.transpose(0, 1) if batch_first else padded


_lib = torch.library.Library("aten", "IMPL")
_lib.impl("lstm.input", lstm_input, "AutogradPrivateUse1")
_lib.impl("gru.input", gru_input, "AutogradPrivateUse1")
_lib.impl("lstm.data", lstm_data, "AutogradPrivateUse1")
_lib.impl("gru.data", gru_data, "AutogradPrivateUse1")
_lib.impl("_pack_padded_sequence_backward", pack_padded_sequence_backward, "AutogradPrivateUse1")
