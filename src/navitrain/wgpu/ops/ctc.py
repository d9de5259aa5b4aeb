"""CTC loss (aten._ctc_loss and _ctc_loss_backward, both overloads), PyTorch's CPU algorithm on the GPU.

Forward: the alpha recursion of LossCTC.cpp in log space, one workgroup per batch item; its threads
share the states s of the extended target (blank, l1, blank, l2, ..., blank) and step through time
with a barrier between steps (log_alpha [N, T, 2 * max_target + 1] is the op's second output, so
the steps read the previous row from it). Each state: log(exp(a1 - m) + exp(a2 - m) + exp(a3 - m)) + m
+ log_prob, m the largest (0 when all are -inf), as the CPU computes it; the loss is -log(alpha of the
last two states). Backward: the beta recursion likewise into a scratch [N, T, S], then one thread per
(t, n, c) sums alpha * beta over the states labelled c (log-add in the CPU's descending order) and
writes (exp(lp) - exp(lcab + nll - lp)) * grad; zero_infinity zeroes the items whose loss is inf,
steps past an input's length get 0. The lengths are read back once (they size log_alpha, and the
CPU and CUDA kernels read them on the host too).
"""
from __future__ import annotations

import torch

from navitrain.wgpu.dispatch import cpu_fallback, implements
from navitrain.wgpu.kernels import codegen
from navitrain.wgpu.runtime import runtime
from navitrain.wgpu.tensor import empty

aten = torch.ops.aten
WG = 128
_NEG_INF = "bitcast<f32>(0xff800000u)"

_PARAMS = codegen.ParamBlock(
    "N", "T", "C", "S", "blank", "zero_infinity", "lp_off", "lpT", "lpN", "lpC", "tg_off", "tg_stride",
    "meta_off", "a_off", "b_off", "nll_off", "go_off", "go_stride", "out_off")

_HELPERS = f"""
fn is_neg_inf(x: f32) -> bool {{ return bitcast<u32>(x) == 0xff800000u; }}
fn larger(a: f32, b: f32) -> f32 {{ return select(a, b, b > a); }}  // std::max(a, b) of the CPU's loop
// log(exp(x1 - m) + exp(x2 - m) + exp(x3 - m)) + m, m the largest (0 when all are -inf)
fn log_add3(x1: f32, x2: f32, x3: f32) -> f32 {{
  var m = larger(larger(x1, x2), x3);
  if (is_neg_inf(m)) {{ m = 0.0; }}
  let total = exp(x1 - m) + exp(x2 - m) + exp(x3 - m);
  if (total == 0.0 && !is_nan(total)) {{ return {_NEG_INF}; }}
  return log(total) + m;
}}
"""


def _prime(tg_st, meta_st) -> str:
    """WGSL fn: the extended target's label at state s of batch item b (blank at even states)."""
    return f"""
fn prime(b: u32, s: u32) -> u32 {{
  if (s % 2u == 0u) {{ return {_PARAMS.ref("blank")}; }}
  let offset = u32({meta_st.load(f"b3[{_PARAMS.ref('meta_off')} + 2u * {_PARAMS.ref('N')} + b]", "i32")});
  return u32({tg_st.load(f"b2[{_PARAMS.ref('tg_off')} + offset + (s / 2u) * {_PARAMS.ref('tg_stride')}]", "i32")});
}}
"""


def _item(meta_st) -> str:
    return f"""
  let il = {meta_st.load("b3[meta_off + b]", "i32")};
  let tl = {meta_st.load("b3[meta_off + N + b]", "i32")};
  let states = u32(2 * tl + 1);
  let row = b * T * S;"""


def _lp(lp_st, t: str, c: str) -> str:
    return lp_st.load(f"b1[lp_off + ({t}) * lpT + b * lpN + ({c}) * lpC]", "f32")


def _alpha_source(lp_st, tg_st, meta_st) -> str:
    body = f"""
  let b = group;
  if (b >= N) {{ return; }}{_item(meta_st)}
  for (var i = lid; i < T * S; i = i + {WG}u) {{ b0[a_off + row + i] = {_NEG_INF}; }}
  storageBarrier();
  if (lid == 0u && il > 0) {{
    b0[a_off + row] = {_lp(lp_st, "0u", "blank")};
    if (tl > 0) {{ b0[a_off + row + 1u] = {_lp(lp_st, "0u", "prime(b, 1u)")}; }}
  }}
  for (var t = 1u; t < T; t = t + 1u) {{
    storageBarrier();
    if (i32(t) < il) {{
      for (var s = lid; s < states; s = s + {WG}u) {{
        let prev = a_off + row + (t - 1u) * S;
        let label = prime(b, s);
        let a1 = b0[prev + s];
        var a2 = {_NEG_INF}; var a3 = {_NEG_INF};
        if (s > 0u) {{ a2 = b0[prev + s - 1u]; }}
        if (s > 1u && prime(b, s - 2u) != label) {{ a3 = b0[prev + s - 2u]; }}
        b0[a_off + row + t * S + s] = log_add3(a1, a2, a3) + {_lp(lp_st, "t", "label")};
      }}
    }}
  }}
  storageBarrier();
  if (lid == 0u) {{
    var ll = 0.0;
    if (il == 0) {{ ll = select({_NEG_INF}, 0.0, tl == 0); }}
    else if (tl == 0) {{ ll = b0[a_off + row + u32(il - 1) * S]; }}
    else {{
      let last = a_off + row + u32(il - 1) * S + u32(2 * tl);
      ll = log_add3(b0[last], b0[last - 1u], {_NEG_INF});
    }}
    b4[nll_off + b] = -ll;
  }}"""
    types = ["f32", lp_st.wgsl, tg_st.wgsl, meta_st.wgsl, "f32"]
    return codegen.module(types, _PARAMS.wgsl() + body, WG, helpers=_HELPERS + _prime(tg_st, meta_st))


def _beta_source(lp_st, tg_st, meta_st) -> str:
    body = f"""
  let b = group;
  if (b >= N) {{ return; }}{_item(meta_st)}
  for (var i = lid; i < T * S; i = i + {WG}u) {{ b0[b_off + row + i] = {_NEG_INF}; }}
  storageBarrier();
  if (lid == 0u && il > 0) {{
    let t = u32(il - 1);
    b0[b_off + row + t * S + u32(2 * tl)] = {_lp(lp_st, "t", "blank")};
    if (tl > 0) {{ b0[b_off + row + t * S + u32(2 * tl - 1)] = {_lp(lp_st, "t", "prime(b, u32(2 * tl - 1))")}; }}
  }}
  for (var step = 1u; step < T; step = step + 1u) {{
    storageBarrier();
    let t = i32(T) - 1 - i32(step);  // T - 2 down to 0; only t <= il - 2 has work
    if (t <= il - 2) {{
      for (var s = lid; s < states; s = s + {WG}u) {{
        let next = b_off + row + u32(t + 1) * S;
        let label = prime(b, s);
        let b1v = b0[next + s];
        var b2v = {_NEG_INF}; var b3v = {_NEG_INF};
        if (i32(s) < 2 * tl) {{ b2v = b0[next + s + 1u]; }}
        if (i32(s) < 2 * tl - 1 && prime(b, s + 2u) != label) {{ b3v = b0[next + s + 2u]; }}
        b0[b_off + row + u32(t) * S + s] = log_add3(b1v, b2v, b3v) + {_lp(lp_st, "u32(t)", "label")};
      }}
    }}
  }}"""
    types = ["f32", lp_st.wgsl, tg_st.wgsl, meta_st.wgsl]
    return codegen.module(types, _PARAMS.wgsl() + body, WG, helpers=_HELPERS + _prime(tg_st, meta_st))


def _grad_source(lp_st, tg_st, meta_st, go_st, out_st) -> str:
    body = f"""
  if (gi >= T * N * C) {{ return; }}
  let c = gi % C; let b = (gi / C) % N; let t = gi / (C * N);{_item(meta_st)}
  let nll = b6[nll_off + b];
  let out_at = out_off + gi;
  if ((zero_infinity != 0u && is_inf(nll) && nll > 0.0) || i32(t) >= il) {{
    b0[out_at] = {out_st.store("0.0")};
    return;
  }}
  let at = row + t * S;
  var lcab = {_NEG_INF};
  if (i32(t) == il - 1) {{  // the CPU's initialisation: only the last two states, assigned
    if (c == blank) {{ lcab = b4[a_off + at + u32(2 * tl)] + b5[b_off + at + u32(2 * tl)]; }}
    if (tl > 0 && prime(b, u32(2 * tl - 1)) == c) {{
      lcab = b4[a_off + at + u32(2 * tl - 1)] + b5[b_off + at + u32(2 * tl - 1)];
    }}
  }} else {{
    for (var s = i32(states) - 1; s >= 0; s = s - 1) {{
      if (prime(b, u32(s)) != c) {{ continue; }}
      let lab = b4[a_off + at + u32(s)] + b5[b_off + at + u32(s)];
      if (is_neg_inf(lcab)) {{ lcab = lab; }}
      else {{ let m = larger(lcab, lab); lcab = log(exp(lcab - m) + exp(lab - m)) + m; }}
    }}
  }}
  let lp = {_lp(lp_st, "t", "c")};
  let gr = {go_st.load("b7[go_off + b * go_stride]", "f32")};
  b0[out_at] = {out_st.store("(exp(lp) - exp(lcab + nll - lp)) * gr")};"""
    types = [out_st.wgsl, lp_st.wgsl, tg_st.wgsl, meta_st.wgsl, "f32", "f32", "f32", go_st.wgsl]
    return codegen.module(types, _PARAMS.wgsl() + body, 256, helpers=_HELPERS + _prime(tg_st, meta_st))


def _lengths(v) -> list[int]:
    if isinstance(v, torch.Tensor):
        return [int(x) for x in v.cpu().tolist()]  # one read-back: they size log_alpha
    return [int(x) for x in v]


def _setup(log_probs, targets, input_lengths, target_lengths, blank):
    """Checked lengths, the [3N] int64 meta tensor (input lengths, target lengths, target offsets),
    the targets as laid out for the kernels, their stride, and the extended target size S."""
    T, N, C = log_probs.shape
    il, tl = _lengths(input_lengths), _lengths(target_lengths)
    if len(il) != N or len(tl) != N:
        raise RuntimeError(f"ctc_loss: expected input_lengths and target_lengths of size {N}, got {len(il)} and "
                           f"{len(tl)}")
    if not 0 <= blank < C:
        raise RuntimeError("blank must be in label range")
    if any(x < 0 or x > T for x in il):
        raise RuntimeError(f"Expected input_lengths to have value at most {T}, but got {max(il)}")
    if targets.dim() == 1:
        targets = aten.clone.default(targets, memory_format=torch.contiguous_format)
        offsets, pos = [], 0
        for length in tl:
            offsets.append(pos)
            pos += length
        max_target, stride = max(tl, default=0), 1
    else:
        offsets = [b * targets.stride(0) for b in range(N)]
        max_target, stride = targets.shape[1], targets.stride(1)
        if any(x > max_target for x in tl):
            raise RuntimeError(f"Expected tensor to have size at least {max(tl)} at dimension 1, but got size "
                               f"{max_target} for argument #2 'targets'")
    meta = torch.tensor(il + tl + offsets, dtype=torch.int64).to(log_probs.device)
    return targets, meta, stride, 2 * max_target + 1


def _values(log_probs, targets, meta, stride, S, blank, zero_infinity=False) -> dict:
    T, N, C = log_probs.shape
    return dict(N=N, T=T, C=C, S=S, blank=blank, zero_infinity=int(bool(zero_infinity)),
                lp_off=log_probs.elem_offset, lpT=log_probs.stride(0), lpN=log_probs.stride(1),
                lpC=log_probs.stride(2), tg_off=targets.elem_offset, tg_stride=stride, meta_off=meta.elem_offset,
                a_off=0, b_off=0, nll_off=0, go_off=0, go_stride=0, out_off=0)


def _supported(log_probs, targets) -> bool:
    return (log_probs.dtype == torch.float32 and log_probs.dim() == 3
            and targets.dtype in (torch.int64, torch.int32) and targets.dim() in (1, 2))


def _forward(log_probs, targets, input_lengths, target_lengths, blank, zero_infinity):
    T, N, _ = log_probs.shape
    targets, meta, stride, S = _setup(log_probs, targets, input_lengths, target_lengths, blank)
    log_alpha = empty([N, T, S], torch.float32)
    nll = empty([N], torch.float32)
    if N == 0 or T == 0:
        if T == 0 and N:
            tl = meta[N:2 * N]
            return aten.where.ScalarOther(aten.eq.Scalar(tl, 0), 0.0, float("inf")).to(torch.float32), log_alpha
        return nll, log_alpha
    rt = runtime()
    sts = [rt.stypes[d] for d in (log_probs.dtype, targets.dtype, torch.int64)]
    kernel = rt.kernel(("ctc_alpha", targets.dtype), "ctc_alpha", 5, lambda: _alpha_source(*sts))
    values = dict(_values(log_probs, targets, meta, stride, S, blank), a_off=log_alpha.elem_offset,
                  nll_off=nll.elem_offset)
    rt.dispatch(kernel, (log_alpha._ws.heap, log_probs._ws.heap, targets._ws.heap, meta._ws.heap, nll._ws.heap),
                _PARAMS.pack(**values), codegen.grid(N))
    return nll, log_alpha


def _backward(grad, log_probs, targets, input_lengths, target_lengths, nll, log_alpha, blank, zero_infinity):
    T, N, C = log_probs.shape
    targets, meta, stride, S = _setup(log_probs, targets, input_lengths, target_lengths, blank)
    out = empty([T, N, C], torch.float32)
    if out.numel() == 0:
        return out
    rt = runtime()
    sts = [rt.stypes[d] for d in (log_probs.dtype, targets.dtype, torch.int64)]
    log_beta = empty([N, T, S], torch.float32)
    log_alpha = aten.clone.default(log_alpha, memory_format=torch.contiguous_format)
    nll = aten.clone.default(nll, memory_format=torch.contiguous_format)
    values = dict(_values(log_probs, targets, meta, stride, S, blank, zero_infinity), a_off=log_alpha.elem_offset,
                  b_off=log_beta.elem_offset, nll_off=nll.elem_offset, go_off=grad.elem_offset,
                  go_stride=grad.stride(0) if grad.dim() else 0, out_off=out.elem_offset)
    beta = rt.kernel(("ctc_beta", targets.dtype), "ctc_beta", 4, lambda: _beta_source(*sts))
    rt.dispatch(beta, (log_beta._ws.heap, log_probs._ws.heap, targets._ws.heap, meta._ws.heap),
                _PARAMS.pack(**values), codegen.grid(N))
    go_st, out_st = rt.stypes[grad.dtype], rt.stypes[torch.float32]
    kernel = rt.kernel(("ctc_grad", targets.dtype, grad.dtype), "ctc_grad", 8,
                       lambda: _grad_source(*sts, go_st, out_st))
    rt.dispatch(kernel, (out._ws.heap, log_probs._ws.heap, targets._ws.heap, meta._ws.heap, log_alpha._ws.heap,
                         log_beta._ws.heap, nll._ws.heap, grad._ws.heap), _PARAMS.pack(**values),
                codegen.groups_for(out.numel(), 256))
    return out


@implements(aten._ctc_loss.default, aten._ctc_loss.Tensor)
def ctc_loss(log_probs, targets, input_lengths, target_lengths, blank=0, zero_infinity=False):
    if not _supported(log_probs, targets):
        op = aten._ctc_loss.Tensor if isinstance(input_lengths, torch.Tensor) else aten._ctc_loss.default
        return cpu_fallback(op, (log_probs, targets, input_lengths, target_lengths, blank, zero_infinity), {})
    return _forward(log_probs, targets, input_lengths, target_lengths, blank, zero_infinity)


@implements(aten._ctc_loss_backward.default, aten._ctc_loss_backward.Tensor)
def ctc_loss_backward(grad, log_probs, targets, input_lengths, target_lengths, neg_log_likelihood, log_alpha, blank,
                      zero_infinity=False):
    if not (_supported(log_probs, targets) and grad.dtype == torch.float32):
        op = aten._ctc_loss_backward.Tensor if isinstance(input_lengths, torch.Tensor) else \
            aten._ctc_loss_backward.default
        return cpu_fallback(op, (grad, log_probs, targets, input_lengths, target_lengths, neg_log_likelihood,
                                 log_alpha, blank, zero_infinity), {})
    return _backward(grad, log_probs, targets, input_lengths, target_lengths, neg_log_likelihood, log_alpha, blank,
                     zero_infinity)
