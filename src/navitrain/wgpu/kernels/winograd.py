"""Winograd F(2x2, 3x3) convolution on the GPU, for stride-1, undilated, ungrouped 3x3 layers.

A 2x2 block of outputs of a 3x3 convolution needs 36 multiply-adds per (input, output) channel pair
done directly, 16 in Winograd's transformed domain. The layer becomes:
  U[xi, oc, c] = (G g G^T)[xi]          weights, 4x4 per channel pair           (small)
  V[xi, c, p]  = (B^T d B)[xi]          each 4x4 input patch p (tiles overlap by 2)
  M[xi]        = U[xi] @ V[xi]          16 independent GEMMs -- the tuned GEMM kernel
  y            = A^T M A                each tile's 2x2 outputs (+ bias)
so the arithmetic shrinks 2.25x at the cost of two memory-bound transforms. The grad-input of such a
layer is the same computation on grad-output with the weights transposed and rotated by 180 degrees.
The handler (wgpu/ops/conv.py) takes this route when NAVITRAIN_WGPU_CONV=winograd, or where the tuner
timed it faster than the implicit GEMM for the layer's shape class.
Transform matrices (Lavin & Gray, 2015):
  B^T = [[1,0,-1,0],[0,1,1,0],[0,-1,1,0],[0,1,0,-1]]; G = [[1,0,0],[.5,.5,.5],[.5,-.5,.5],[0,0,1]];
  A^T = [[1,1,1,0],[0,1,-1,-1]].
"""
from __future__ import annotations

import torch

from navitrain.wgpu.kernels import codegen, gemm
from navitrain.wgpu.runtime import runtime
from navitrain.wgpu.tensor import WgpuTensor, empty

WG = 256

# Parameter blocks of the three passes. Weights: thread (oc, c) of `threads`; w is read at
# w_off + oc * w_s_oc + c * w_s_c + kh * s2 + kw * s3 (the grad-input passes w's strides swapped and
# rotate = 1: tap (i, j) read at (2 - i, 2 - j)).
_WEIGHT_P = codegen.ParamBlock("threads", "C", "OC", "w_off", "w_s_oc", "w_s_c", "s2", "s3", "u_off", "rotate")
# Input: x's 4x4 patches over TH x TW tiles per image (P tiles in all), starting `pad` before the image.
_INPUT_P = codegen.ParamBlock("C", "P", "TH", "TW", "H: i32", "W: i32", "pad: i32", "x_off", "x_s[4]", "v_off")
# Output: each tile's 2x2 outputs into y (OH x OW, cut at the edges), plus bias[oc] when bound.
_OUTPUT_P = codegen.ParamBlock("OC", "P", "TH", "TW", "OH", "OW", "y_off", "y_s[4]", "bias_off", "m_off",
                               defaults={"bias_off": 0})


def eligible(x: torch.Tensor, w: torch.Tensor, stride, dilation, groups, transposed: bool) -> bool:
    return (not transposed and groups == 1 and tuple(stride) == (1, 1) and tuple(dilation) == (1, 1)
            and w.dim() == 4 and w.shape[2] == 3 and w.shape[3] == 3 and x.dim() == 4
            and x.dtype == torch.float32 and w.dtype == torch.float32)


def _weight_source() -> str:
    # thread (oc, c): g[3][3] -> U[xi][oc][c]
    body = _WEIGHT_P.wgsl() + """
  if (gi >= threads) { return; }
  let oc = gi / C; let c = gi % C;
  let wb = w_off + oc * w_s_oc + c * w_s_c;
  var g: array<f32, 9>;
  for (var i = 0u; i < 3u; i = i + 1u) { for (var j = 0u; j < 3u; j = j + 1u) {
    let kh = select(i, 2u - i, rotate == 1u); let kw = select(j, 2u - j, rotate == 1u);
    g[i * 3u + j] = b1[wb + kh * s2 + kw * s3]; } }
  var t: array<f32, 12>;
  for (var j = 0u; j < 3u; j = j + 1u) {
    t[j] = g[j]; t[3u + j] = 0.5 * (g[j] + g[3u + j] + g[6u + j]);
    t[6u + j] = 0.5 * (g[j] - g[3u + j] + g[6u + j]); t[9u + j] = g[6u + j]; }
  let ub = u_off + oc * C + c; let plane = OC * C;
  for (var r = 0u; r < 4u; r = r + 1u) {
    let r0 = t[r * 3u]; let r1 = t[r * 3u + 1u]; let r2 = t[r * 3u + 2u];
    b0[ub + (r * 4u) * plane] = r0;
    b0[ub + (r * 4u + 1u) * plane] = 0.5 * (r0 + r1 + r2);
    b0[ub + (r * 4u + 2u) * plane] = 0.5 * (r0 - r1 + r2);
    b0[ub + (r * 4u + 3u) * plane] = r2; }"""
    return codegen.module(["f32", "f32"], body, WG)


# The input and output transforms are generated as straight-line code over scalar variables: the
# loops over small local arrays they were first written with are the pattern that held a WGSL GEMM at
# 1.6% of cuBLAS (docs/benchmarks.md), and these two passes move most of a Winograd layer's bytes.
def _input_source() -> str:
    # thread (c, p): the 4x4 patch at (n, 2*th - pad, 2*tw - pad) -> V[xi][c][p], V = B^T d B
    lines = [_INPUT_P.wgsl(), """
  if (gi >= C * P) { return; }
  let c = gi / P; let p = gi % P;
  let n = p / (TH * TW); let r = p % (TH * TW);
  let h0 = i32(r / TW) * 2 - pad; let w0 = i32(r % TW) * 2 - pad;
  let xb = x_off + n * x_s_0 + c * x_s_1; let sh = x_s_2; let sw = x_s_3;"""]
    w = lines.append
    for i in range(4):
        w(f"  let vh{i} = h0 + {i} >= 0 && h0 + {i} < H; let rb{i} = xb + u32(max(h0 + {i}, 0)) * sh;")
    for j in range(4):
        w(f"  let vw{j} = w0 + {j} >= 0 && w0 + {j} < W; let cw{j} = u32(max(w0 + {j}, 0)) * sw;")
    for i in range(4):
        for j in range(4):
            w(f"  var d{i}{j} = 0.0; if (vh{i} && vw{j}) {{ d{i}{j} = b1[rb{i} + cw{j}]; }}")
    for j in range(4):  # t = B^T d (rows)
        w(f"  let t0{j} = d0{j} - d2{j}; let t1{j} = d1{j} + d2{j}; let t2{j} = d2{j} - d1{j}; "
          f"let t3{j} = d1{j} - d3{j};")
    w("  let vb = v_off + c * P + p; let plane = C * P;")
    for a in range(4):  # V = t B (columns)
        for q, expr in enumerate((f"t{a}0 - t{a}2", f"t{a}1 + t{a}2", f"t{a}2 - t{a}1", f"t{a}1 - t{a}3")):
            w(f"  b0[vb + {a * 4 + q}u * plane] = {expr};")
    return codegen.module(["f32", "f32"], "\n".join(lines), WG)


def _output_source(store, has_bias: bool) -> str:
    # thread (oc, p): M[xi][oc][p] -> y[n, oc, 2th + i, 2tw + j] (+ bias[oc]), y = A^T m A
    bias = " + b2[bias_off + oc]" if has_bias else ""
    lines = [_OUTPUT_P.wgsl(), """
  if (gi >= OC * P) { return; }
  let oc = gi / P; let p = gi % P;
  let n = p / (TH * TW); let r = p % (TH * TW);
  let oh = (r / TW) * 2u; let ow = (r % TW) * 2u;
  let mb = m_off + oc * P + p; let plane = OC * P;"""]
    w = lines.append
    for k in range(16):
        w(f"  let m{k} = b1[mb + {k}u * plane];")
    for j in range(4):  # t = A^T m (rows)
        w(f"  let t0{j} = m{j} + m{4 + j} + m{8 + j}; let t1{j} = m{4 + j} - m{8 + j} - m{12 + j};")
    w("  let yb = y_off + n * y_s_0 + oc * y_s_1; let sh = y_s_2; let sw = y_s_3;")
    for i in range(2):  # y = t A (columns)
        w(f"  if (oh + {i}u < OH) {{")
        w(f"    b0[yb + (oh + {i}u) * sh + ow * sw] = {store(f't{i}0 + t{i}1 + t{i}2{bias}')};")
        w(f"    if (ow + 1u < OW) {{ b0[yb + (oh + {i}u) * sh + (ow + 1u) * sw] = "
          f"{store(f't{i}1 - t{i}2 - t{i}3{bias}')}; }}")
        w("  }")
    types = ["f32", "f32"] + (["f32"] if has_bias else [])
    return codegen.module(types, "\n".join(lines), WG)


def conv3x3(x: WgpuTensor, w: WgpuTensor, bias: WgpuTensor | None, padding: int, out: WgpuTensor,
            rotate: bool = False) -> WgpuTensor:
    """out = conv2d(x, w, bias, stride 1, padding) for 3x3 w [OC, C, 3, 3], by F(2x2, 3x3).
    With rotate, w is read as [C_in, C_out] transposed and rotated 180 degrees (grad-input)."""
    rt = runtime()
    N, C, H, W = x.shape
    OC = w.shape[1] if rotate else w.shape[0]
    OH, OW = out.shape[2], out.shape[3]
    TH, TW = (OH + 1) // 2, (OW + 1) // 2
    P = N * TH * TW
    U = empty([16, OC, C], torch.float32)
    V = empty([16, C, P], torch.float32)
    M = empty([16, OC, P], torch.float32)
    # Weights: U[xi][oc][c] from w[oc][c] (or w[c][oc] rotated for grad-input).
    s = w.stride()
    # rotate: w is [C_out_of_forward = our C, OC, 3, 3], so element (oc, c) is w[c, oc]
    s_oc, s_c = (s[1], s[0]) if rotate else (s[0], s[1])
    params = _WEIGHT_P.pack(threads=OC * C, C=C, OC=OC, w_off=w.elem_offset, w_s_oc=s_oc, w_s_c=s_c,
                            s2=s[2], s3=s[3], u_off=U.elem_offset, rotate=int(rotate))
    k = rt.kernel(("wino_w",), "winograd_weights", 2, _weight_source)
    rt.dispatch(k, (U._ws.heap, w._ws.heap), params, codegen.groups_for(OC * C, WG))
    # Input tiles.
    params = _INPUT_P.pack(C=C, P=P, TH=TH, TW=TW, H=H, W=W, pad=padding, x_off=x.elem_offset, x_s=x.stride(),
                           v_off=V.elem_offset)
    k = rt.kernel(("wino_in",), "winograd_input", 2, _input_source)
    rt.dispatch(k, (V._ws.heap, x._ws.heap), params, codegen.groups_for(C * P, WG))
    # 16 GEMMs.
    gemm.gemm(U, V, M)
    # Output tiles.
    st = rt.stypes[out.dtype]
    params = _OUTPUT_P.pack(OC=OC, P=P, TH=TH, TW=TW, OH=OH, OW=OW, y_off=out.elem_offset, y_s=out.stride(),
                            bias_off=bias.elem_offset if bias is not None else 0, m_off=M.elem_offset)
    k = rt.kernel(("wino_out", out.dtype, bias is not None), "winograd_output", 3 if bias is not None else 2,
                  lambda: _output_source(st.store, bias is not None))
    heaps = (out._ws.heap, M._ws.heap) + ((bias._ws.heap,) if bias is not None else ())
    rt.dispatch(k, heaps, params, codegen.groups_for(OC * P, WG))
    return out
