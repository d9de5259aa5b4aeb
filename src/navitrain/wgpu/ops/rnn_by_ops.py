"""The fused LSTM/GRU cell ops spelled with ordinary aten ops, for dtypes without wgpu kernels (float64).

PyTorch has no CPU kernel for `_thnn_fused_lstm_cell` / `_thnn_fused_gru_cell`, so the counted CPU
fallback cannot run them; written this way, each piece (add, sigmoid, tanh, mul, cat) falls back on
its own, counted as usual, and the results are the CPU's. Same workspace layouts as ops/rnn.py.
"""
from __future__ import annotations

import torch


def _biased(gates, *biases):
    for b in biases:
        if b is not None:
            gates = gates + b
    return gates


def lstm_cell(input_gates, hidden_gates, cx, input_bias, hidden_bias):
    i, f, g, o = _biased(input_gates + hidden_gates, input_bias, hidden_bias).chunk(4, 1)
    i, f, g, o = i.sigmoid(), f.sigmoid(), g.tanh(), o.sigmoid()
    cy = f * cx + i * g
    return o * cy.tanh(), cy, _cat([i, f, g, o])


def lstm_cell_backward(grad_hy, grad_cy, cx, cy, workspace):
    i, f, g, o = workspace.chunk(4, 1)
    tc = cy.tanh()
    ghy = grad_hy if grad_hy is not None else cy.new_zeros(cy.shape)
    gc = ghy * o * (1 - tc * tc)
    if grad_cy is not None:
        gc = gc + grad_cy
    gates = _cat([gc * g * i * (1 - i), gc * cx * f * (1 - f), gc * i * (1 - g * g), ghy * tc * o * (1 - o)])
    return gates, gc * f


def gru_cell(input_gates, hidden_gates, hx, input_bias, hidden_bias):
    xr, xz, xn = _biased(input_gates, input_bias).chunk(3, 1)
    hr, hz, hn = _biased(hidden_gates, hidden_bias).chunk(3, 1)
    r, z = (xr + hr).sigmoid(), (xz + hz).sigmoid()
    n = (xn + r * hn).tanh()
    return n + z * (hx - n), _cat([r, z, n, hx, hn])


def gru_cell_backward(grad_hy, workspace):
    r, z, n, hx, hn = workspace.chunk(5, 1)
    gz = grad_hy * (hx - n) * z * (1 - z)
    gn = grad_hy * (1 - z) * (1 - n * n)
    gr = gn * hn * r * (1 - r)
    return _cat([gr, gz, gn]), _cat([gr, gz, gn * r]), grad_hy * z


def _cat(parts):
    return torch.cat(parts, 1)
