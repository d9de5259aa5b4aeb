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

Packed sequences (aten::lstm.data / gru.data) and anything but 3-D same-dtype float wgpu tensors keep
PyTorch's decomposition, which reaches the cell kernels in ops/rnn.py. The recurrence node has no
double backward (as cuDNN's RNNs).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from navitrain.wgpu import gemm, pointwise
from navitrain.wgpu.ops import rnn as cells
from navitrain.wgpu.ops.views import view_of
from navitrain.wgpu.reduction import reduce
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


def _contig(t):
    return t if t.is_contiguous() else aten.clone.default(t, memory_format=torch.contiguous_format)


class _Recurrence(torch.autograd.Function):
    """One layer and direction of an LSTM (c0 given) or GRU (c0 None) over precomputed input gates
    gi [T, B, kH]: returns the outputs [T, B, P] and the final h (and c)."""

    @staticmethod
    def forward(ctx, gi, h0, c0, w_hh, b_hh, w_hr, reverse: bool):
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
        ctx.save_for_backward(h0, c0, w_hh, b_hh, w_hr, out, ws, cs, hraw)
        ctx.reverse = reverse
        # Copies, not views of `out`/`cs`: outputs of a custom node that alias each other or saved
        # tensors would trip autograd's view/in-place checks.
        return out, aten.clone.default(h), (aten.clone.default(c) if lstm else None)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, d_out, d_hT, d_cT):
        h0, c0, w_hh, b_hh, w_hr, out, ws, cs, hraw = ctx.saved_tensors
        lstm = c0 is not None
        T, B, P = out.shape
        G = w_hh.shape[0]
        H = G // (4 if lstm else 3)
        dtype = out.dtype
        d_out = _contig(d_out)
        dg_x = empty([T, B, G], dtype)              # gradient of the input gates
        dg_h = dg_x if lstm else empty([T, B, G], dtype)   # of the hidden gates (the same for an LSTM)
        dh_all = empty([T, B, P], dtype)            # total gradient of each step's output h
        order = list(range(T)) if ctx.reverse else list(range(T - 1, -1, -1))   # backward's order
        first = order[0]
        pointwise.run("add", "a + b", [_step(d_out, first), _contig(d_hT)], dtype, "f32", out=_step(dh_all, first))
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
                cells.lstm_backward_into(dh_cell, dc, c_prev, _step(cs, t), _step(ws, t), _step(dg_x, t), dc_prev)
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
        return dg_x, dh0, (dc if lstm else None), dw_hh, db_hh, dw_hr, None


def _fast(input, tensors) -> bool:
    return (input.dim() == 3 and input.shape[0] > 0 and input.shape[1] > 0 and input.dtype.is_floating_point
            and all(isinstance(t, WgpuTensor) and t.dtype == input.dtype for t in tensors))


def _layers(lstm, input, h0s, c0s, params, has_biases, num_layers, dropout, train, bidirectional, batch_first):
    directions = 2 if bidirectional else 1
    per = len(params) // (num_layers * directions)   # w_ih, w_hh[, b_ih, b_hh][, w_hr]
    has_proj = per == (5 if has_biases else 3)
    x = input.transpose(0, 1) if batch_first else input
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
            out, h, c = _Recurrence.apply(gi, h0, c0, w_hh, b_hh, w_hr, d == 1)
            outs.append(out)
            h_n.append(h)
            c_n.append(c)
        x = outs[0] if directions == 1 else torch.cat(outs, 2)
        if dropout and train and layer < num_layers - 1:
            x = F.dropout(x, dropout, True)
    output = x.transpose(0, 1) if batch_first else x
    return output, torch.stack(h_n), (torch.stack(c_n) if lstm else None)


def lstm_input(input, hx, params, has_biases, num_layers, dropout, train, bidirectional, batch_first):
    if not _fast(input, [*hx, *params]):
        return aten.lstm.input.decompose(input, hx, params, has_biases, num_layers, dropout, train, bidirectional,
                                         batch_first)
    return _layers(True, input, hx[0], hx[1], params, has_biases, num_layers, dropout, train, bidirectional,
                   batch_first)


def gru_input(input, hx, params, has_biases, num_layers, dropout, train, bidirectional, batch_first):
    if not _fast(input, [hx, *params]):
        return aten.gru.input.decompose(input, hx, params, has_biases, num_layers, dropout, train, bidirectional,
                                        batch_first)
    output, h_n, _ = _layers(False, input, hx, None, params, has_biases, num_layers, dropout, train, bidirectional,
                             batch_first)
    return output, h_n


_lib = torch.library.Library("aten", "IMPL")
_lib.impl("lstm.input", lstm_input, "AutogradPrivateUse1")
_lib.impl("gru.input", gru_input, "AutogradPrivateUse1")
