"""navitrain.nomiopen_conv.gemm_conv against aten's own convolution on the CPU (float64 references)."""
from __future__ import annotations

import pytest
import torch
from gemm_conv_cases import arrange, assert_close, conv_cases, reference, tensors
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from navitrain import memory_format
from navitrain.nomiopen_conv import conv_plan, gemm_conv, policy

SWEEP = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
POLICIES = ["auto", "im2col", "winograd2", "winograd4"]


def _run(case, x, w, b, gy, mask):
    y = gemm_conv.convolution(x, w, b, *case.aten_args)
    grads = gemm_conv.convolution_backward(gy, x, w, [w.shape[0]] if b is not None else None, *case.aten_args, mask)
    return y, grads


def _check_against_aten(case, policy_name, mask, rtol):
    x, w, b, gy = tensors(case)
    with policy.use_policy(policy_name):
        y, grads = _run(case, x, w, b, gy, mask)
    y_ref, grads_ref = reference(case, x, w, b, gy, mask)
    assert_close(y, y_ref, rtol, "output")
    for name, got, want, wanted in zip(("grad_input", "grad_weight", "grad_bias"), grads, grads_ref, mask):
        if wanted:
            assert_close(got, want, rtol, name)
            assert got.dtype == torch.float64
        else:
            assert got is None, f"{name} was not asked for"
    return y, grads


@SWEEP
@given(case=conv_cases(), policy_name=st.sampled_from(POLICIES),
       mask=st.sampled_from([[True, True, True], [True, False, False], [False, True, True], [True, True, False]]))
def test_forward_and_backward_match_aten(case, policy_name, mask):
    _check_against_aten(case, policy_name, mask, rtol=1e-10)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=conv_cases(winograd=True), m=st.sampled_from(["winograd2", "winograd4"]))
def test_winograd_paths_match_aten(case, m):
    # 3x3 stride-1 cases, where the Winograd algorithms apply; non-divisible sizes, padding 0..4
    # (the input gradient then needs negative padding, i.e. cropping) and 1d/3d included.
    before = dict(conv_plan.stats)
    _check_against_aten(case, m, [True, True, True], rtol=1e-9)
    used = {k for k, v in conv_plan.stats.items() if v > before.get(k, 0)}
    assert any("winograd" in k for k in used), used


def test_one_by_one_is_a_plain_gemm_on_channels_last_input():
    x = torch.randn(3, 8, 5, 7).contiguous(memory_format=torch.channels_last)
    w = torch.randn(6, 8, 1, 1)
    before = conv_plan.stats["forward:gemm1x1"]
    y = gemm_conv.convolution(x, w, None, [1, 1], [0, 0], [1, 1], False, [0, 0], 1)
    assert conv_plan.stats["forward:gemm1x1"] == before + 1
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert_close(y, torch.ops.aten.convolution(x.double(), w.double(), None, [1], [0], [1], False, [0], 1), 1e-6)


@pytest.mark.parametrize("dtype,rtol", [(torch.float16, 4e-3), (torch.bfloat16, 3e-2)])
@pytest.mark.parametrize("policy_name", ["auto", "im2col", "winograd2"])
@pytest.mark.parametrize("config", [
    dict(groups=1, kernel=3, stride=1), dict(groups=1, kernel=3, stride=2), dict(groups=4, kernel=3, stride=1),
    dict(groups=8, kernel=3, stride=2), dict(groups=1, kernel=1, stride=2), dict(groups=1, kernel=5, stride=1)])
def test_half_precision_is_close_to_float64(dtype, rtol, policy_name, config):
    torch.manual_seed(0)
    x = torch.randn(2, 8, 9, 9)
    w = torch.randn(8, 8 // config["groups"], config["kernel"], config["kernel"]) / config["kernel"]
    b = torch.randn(8)
    args = ([config["stride"]] * 2, [config["kernel"] // 2] * 2, [1, 1], False, [0, 0], config["groups"])
    y_ref = torch.ops.aten.convolution(x.double(), w.double(), b.double(), *args)
    gy = torch.randn(y_ref.shape)
    ref = torch.ops.aten.convolution_backward(gy.double(), x.double(), w.double(), [8], *args, [True, True, True])
    with policy.use_policy(policy_name):
        y = gemm_conv.convolution(x.to(dtype), w.to(dtype), b.to(dtype), *args)
        grads = gemm_conv.convolution_backward(gy.to(dtype), x.to(dtype), w.to(dtype), [8], *args, [True, True, True])
    assert y.dtype == dtype and all(g.dtype == dtype for g in grads)
    assert_close(y, y_ref, rtol, "output")
    for name, got, want in zip(("grad_input", "grad_weight", "grad_bias"), grads, ref):
        assert_close(got, want, rtol, name)


def test_winograd4_in_float32_is_accurate():
    # F(4x4, 3x3) loses a few bits; it must stay within ~1e-5 of float64 at realistic widths.
    torch.manual_seed(1)
    x = torch.randn(2, 64, 12, 12).relu()
    w = torch.randn(48, 64, 3, 3) / 24
    gy = torch.randn(2, 48, 12, 12)
    args = ([1, 1], [1, 1], [1, 1], False, [0, 0], 1)
    y_ref = torch.ops.aten.convolution(x.double(), w.double(), None, *args)
    ref = torch.ops.aten.convolution_backward(gy.double(), x.double(), w.double(), None, *args, [True, True, False])
    with policy.use_policy("winograd4"):
        y = gemm_conv.convolution(x, w, None, *args)
        grads = gemm_conv.convolution_backward(gy, x, w, None, *args, [True, True, False])
    assert_close(y, y_ref, 2e-5, "output")
    assert_close(grads[0], ref[0], 2e-5, "grad_input")
    assert_close(grads[1], ref[1], 2e-5, "grad_weight")


@pytest.mark.parametrize("x_layout,w_layout,dtype,expected", [
    ("contiguous", "contiguous", torch.float32, torch.contiguous_format),
    ("channels_last", "contiguous", torch.float32, torch.channels_last),
    ("contiguous", "channels_last", torch.float32, torch.channels_last),
    ("channels_last", "channels_last", torch.float64, torch.contiguous_format),  # cuDNN: never NHWC for double
    ("strided", "contiguous", torch.float32, torch.contiguous_format),
])
def test_output_and_gradients_take_cudnn_memory_format(x_layout, w_layout, dtype, expected):
    x = arrange(torch.randn(2, 4, 6, 6, dtype=dtype), x_layout)
    w = arrange(torch.randn(5, 4, 3, 3, dtype=dtype), w_layout)
    y = gemm_conv.convolution(x, w, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1)
    gi, gw, _ = gemm_conv.convolution_backward(torch.randn_like(y), x, w, None, [1, 1], [1, 1], [1, 1], False,
                                               [0, 0], 1, [True, True, False])
    for t in (y, gi, gw):
        assert t.is_contiguous(memory_format=expected)
    if dtype == torch.float32:  # aten on the CPU (oneDNN) applies the same rule
        ref = torch.ops.aten.convolution(x, w, None, [1], [1], [1], False, [0], 1)
        assert ref.is_contiguous(memory_format=expected)


def _cpp_suggest_memory_format(t: torch.Tensor) -> tuple:
    # C++ Tensor::suggest_memory_format() shows in the strides of upsample_nearest's output, which
    # aten allocates in the input's suggested memory format.
    upsample = torch.ops.aten.upsample_nearest2d if t.dim() == 4 else torch.ops.aten.upsample_nearest3d
    return upsample(t, list(t.shape[2:])).stride()


@settings(max_examples=80, deadline=None)
@given(sizes=st.lists(st.sampled_from([1, 1, 2, 3]), min_size=4, max_size=5), data=st.data())
def test_suggest_memory_format_matches_cpp(sizes, data):
    order = data.draw(st.permutations(range(len(sizes))))
    t = torch.randn([sizes[i] for i in order]).permute([order.index(i) for i in range(len(sizes))])
    ours = memory_format.suggest_memory_format(t)
    assert torch.empty(t.shape, memory_format=ours).stride() == _cpp_suggest_memory_format(t)


def test_workspace_cap_chunks_the_batch_without_changing_results(monkeypatch):
    torch.manual_seed(2)
    x = torch.randn(5, 6, 10, 10, dtype=torch.float64)
    w = torch.randn(7, 6, 3, 3, dtype=torch.float64)
    gy = torch.randn(5, 7, 10, 10, dtype=torch.float64)
    args = ([1, 1], [1, 1], [1, 1], False, [0, 0], 1)
    seen = []
    real = policy.batch_chunks

    def spy(n, per_image):
        chunks = real(n, per_image)
        seen.append((n, per_image, chunks))
        return chunks

    monkeypatch.setattr(policy, "batch_chunks", spy)
    results = {}
    for cap in ("512", "0"):  # 0 MiB: one image at a time
        monkeypatch.setenv("NAVITRAIN_CONV_WORKSPACE_MB", cap)
        for name in ("im2col", "winograd4"):
            with policy.use_policy(name):
                y = gemm_conv.convolution(x, w, None, *args)
                grads = gemm_conv.convolution_backward(gy, x, w, None, *args, [True, True, False])
            results[cap, name] = (y, *grads[:2])
    for name in ("im2col", "winograd4"):
        for a, b in zip(results["512", name], results["0", name]):
            assert_close(a, b, 1e-12)
    assert any(len(chunks) == 5 for _, _, chunks in seen)  # one image per chunk under the zero cap
    assert any(len(chunks) == 1 for _, _, chunks in seen)


def test_batch_chunks_stay_under_the_cap(monkeypatch):
    monkeypatch.setenv("NAVITRAIN_CONV_WORKSPACE_MB", "3")
    chunks = policy.batch_chunks(10, 2**20)
    assert chunks == [(0, 3), (3, 6), (6, 9), (9, 10)]
    assert policy.batch_chunks(4, 100 * 2**20) == [(0, 1), (1, 2), (2, 3), (3, 4)]  # >cap per image: one by one
    monkeypatch.setenv("NAVITRAIN_CONV_WORKSPACE_MB", "lots")
    with pytest.raises(ValueError, match="NAVITRAIN_CONV_WORKSPACE_MB"):
        policy.batch_chunks(4, 1)


def test_split_k_weight_gradient_matches(monkeypatch):
    # Split-K only triggers on GPUs; force it to check the sliced reduction itself.
    torch.manual_seed(3)
    x = torch.randn(4, 5, 8, 8, dtype=torch.float64)
    gy = torch.randn(4, 6, 8, 8, dtype=torch.float64)
    w = torch.randn(6, 5, 3, 3, dtype=torch.float64)
    args = ([1, 1], [1, 1], [1, 1], False, [0, 0], 1)
    ref = torch.ops.aten.convolution_backward(gy, x, w, None, *args, [False, True, False])[1]
    monkeypatch.setattr(policy, "split_k", lambda device, rows, a, b: 4)
    for name in ("im2col", "winograd2", "winograd4"):
        with policy.use_policy(name):
            got = gemm_conv.convolution_backward(gy, x, w, None, *args, [False, True, False])[1]
        assert_close(got, ref, 1e-10, name)


def test_tune_policy_times_candidates_once_and_reuses_the_choice():
    x = torch.randn(2, 8, 12, 12)
    w = torch.randn(8, 8, 3, 3)
    conv_plan.tuned.clear()
    with policy.use_policy("tune"):
        y1 = gemm_conv.convolution(x, w, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1)
        assert len(conv_plan.tuned) == 1
        (choice, times), = conv_plan.tuned.values()
        assert set(times) == {"im2col", "winograd2", "winograd4"} and choice in times
        y2 = gemm_conv.convolution(x, w, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1)
        assert len(conv_plan.tuned) == 1
    ref = torch.ops.aten.convolution(x.double(), w.double(), None, [1], [1], [1], False, [0], 1)
    assert_close(y1, ref, 1e-5)
    assert torch.equal(y1, y2)


def test_auto_policy_prefers_winograd_for_wide_layers_and_im2col_for_thin_or_half():
    names = ["im2col", "winograd2", "winograd4"]
    wide = torch.empty(128, 256, 8, 8)
    assert conv_plan._heuristic(names, "forward", wide, 256, (8, 8), (3, 3)) == "winograd4"
    assert conv_plan._heuristic(names, "weight_grad", wide, 256, (8, 8), (3, 3)) == "winograd4"
    stem = torch.empty(128, 3, 32, 32)
    assert conv_plan._heuristic(names, "forward", stem, 64, (32, 32), (3, 3)) == "im2col"
    assert conv_plan._heuristic(names, "forward", wide.half(), 256, (8, 8), (3, 3)) == "im2col"


def test_policy_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("NAVITRAIN_CONV_ALGO", "Im2Col")
    assert policy.current() == "im2col"
    with policy.use_policy("winograd2"):
        assert policy.current() == "winograd2"
    assert policy.current() == "im2col"
    monkeypatch.setenv("NAVITRAIN_CONV_ALGO", "fastest")
    with pytest.raises(ValueError, match="NAVITRAIN_CONV_ALGO"):
        policy.current()
    with pytest.raises(ValueError, match="unknown convolution policy"):
        policy.set_policy("fastest")


@pytest.mark.parametrize("x_shape,w_shape,kwargs,message", [
    ((2, 5, 8, 8), (4, 3, 3, 3), {}, "to have 3 channels"),
    ((5, 8, 8), (4, 5, 3, 3), {}, "Expected 4-dimensional input"),
    ((2, 3, 2, 2), (4, 3, 5, 5), {}, "Kernel size can't be greater"),
    ((2, 4, 5, 5), (4, 3, 3, 3), dict(transposed=True, stride=[2, 2], output_padding=[2, 2]), "output padding"),
    ((2, 4, 5, 5), (4, 2, 3, 3), dict(groups=3), "groups=3"),
])
def test_invalid_arguments_raise_like_aten(x_shape, w_shape, kwargs, message):
    args = dict(stride=[1, 1], padding=[0, 0], dilation=[1, 1], transposed=False, output_padding=[0, 0], groups=1)
    args.update(kwargs)
    with pytest.raises(RuntimeError):
        torch.ops.aten.convolution(torch.randn(x_shape), torch.randn(w_shape), None, **args)
    with pytest.raises(RuntimeError, match=message):
        gemm_conv.convolution(torch.randn(x_shape), torch.randn(w_shape), None, **args)


def test_empty_batch_gives_empty_output_and_zero_gradients():
    x = torch.randn(0, 3, 8, 8)
    w = torch.randn(4, 3, 3, 3)
    b = torch.randn(4)
    y = gemm_conv.convolution(x, w, b, [1, 1], [1, 1], [1, 1], False, [0, 0], 1)
    assert y.shape == (0, 4, 8, 8)
    gi, gw, gb = gemm_conv.convolution_backward(y, x, w, [4], [1, 1], [1, 1], [1, 1], False, [0, 0], 1,
                                                [True, True, True])
    assert gi.shape == x.shape and not gw.any() and not gb.any()


@pytest.mark.parametrize("m", [2, 4])
def test_winograd_matrices_compute_a_1d_correlation(m):
    # Y = A^T [(G g) * (B^T d)] must equal y_i = sum_k d_{i+k} g_k for any tile d and kernel g.
    from navitrain.nomiopen_conv.winograd import matrices_1d

    bt, g_mat, at = matrices_1d(m)
    torch.manual_seed(m)
    d, g = torch.randn(m + 2, dtype=torch.float64), torch.randn(3, dtype=torch.float64)
    direct = torch.stack([(d[i:i + 3] * g).sum() for i in range(m)])
    torch.testing.assert_close(at @ ((g_mat @ g) * (bt @ d)), direct, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("min_pixels", [1, 10**9])  # per-image GEMMs always / never
@pytest.mark.parametrize("kernel,stride,padding,transposed", [
    (3, 1, 1, False), (3, 2, 1, False), (1, 1, 0, False), (1, 2, 0, False), (4, 2, 1, True), (3, 2, 1, True)])
def test_nchw_paths_on_both_sides_of_the_per_image_gemm_threshold(monkeypatch, min_pixels, kernel, stride, padding,
                                                                  transposed):
    from navitrain.nomiopen_conv import gemm

    monkeypatch.setattr(gemm, "MIN_PIXELS_PER_IMAGE_GEMM", min_pixels)
    torch.manual_seed(kernel * 10 + stride)
    x = torch.randn(3, 6, 7, 7, dtype=torch.float64)
    w = torch.randn(6 if transposed else 5, 4 if transposed else 6, kernel, kernel, dtype=torch.float64)
    args = ([stride] * 2, [padding] * 2, [1, 1], transposed, [stride - 1] * 2 if transposed else [0, 0], 1)
    b = torch.randn(w.shape[1] if transposed else w.shape[0], dtype=torch.float64)
    y_ref = torch.ops.aten.convolution(x, w, b, *args)
    gy = torch.randn_like(y_ref)
    ref = torch.ops.aten.convolution_backward(gy, x, w, [b.numel()], *args, [True, True, True])
    with policy.use_policy("im2col"):
        y = gemm_conv.convolution(x, w, b, *args)
        grads = gemm_conv.convolution_backward(gy, x, w, [b.numel()], *args, [True, True, True])
    assert_close(y, y_ref, 1e-10, "output")
    for name, got, want in zip(("grad_input", "grad_weight", "grad_bias"), grads, ref):
        assert_close(got, want, 1e-10, name)


def test_transposed_1x1_with_dilation_and_output_padding():
    # Found by a long sweep: stride 1, dilation 2 and output_padding 1 give a 1x1 problem with padding at
    # the end only, which is not a plain GEMM over the input grid.
    from gemm_conv_cases import Case

    case = Case(nd=2, batch=1, groups=1, in_per_group=2, out_per_group=2, kernel=[1, 1], stride=[1, 1],
                padding=[0, 0], dilation=[1, 2], transposed=True, output_padding=[0, 1], spatial=[1, 1], bias=True,
                layout="strided", weight_layout="contiguous", seed=0)
    for name in POLICIES:
        _check_against_aten(case, name, [True, True, True], rtol=1e-10)
