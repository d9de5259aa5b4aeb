"""codegen.ParamBlock: kernel parameters declared by name, read in WGSL and packed on the host from one list."""
from __future__ import annotations

import random
import struct

import pytest
import torch

from navitrain.wgpu.kernels import codegen

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def test_words_follow_the_declaration_order():
    blk = codegen.ParamBlock("n", "off: i32", "size[3]", "eps: f32")
    assert blk.words == 6
    assert blk.wgsl().split("\n")[:6] == [
        "  let n = pu(0u);", "  let off = pi(1u);", "  let size_0 = pu(2u);", "  let size_1 = pu(3u);",
        "  let size_2 = pu(4u);", "  let eps = pf(5u);"]
    assert blk.ref("eps") == "pf(5u)" and blk.ref("size", 2) == "pu(4u)"


def test_pack_matches_the_words():
    rng = random.Random()
    n, off = rng.randrange(2**32), rng.randrange(-2**31, 2**31)
    sizes, eps = [rng.randrange(1, 999) for _ in range(3)], rng.random()
    blk = codegen.ParamBlock("n", "off: i32", "size[3]", "eps: f32")
    raw = blk.pack(eps=eps, size=sizes, off=off, n=n)  # keyword order does not matter
    assert struct.unpack("<Ii3If", raw)[:5] == (n, off, *sizes)
    assert struct.unpack("<Ii3If", raw)[5] == pytest.approx(eps, rel=1e-7)


def test_pack_words_is_pack_by_position():
    rng = random.Random()
    for nb in (0, 1, 3):  # a zero-length array field is no word at all
        blk = codegen.ParamBlock("n", f"batch[{nb}]", "k: i32", "eps: f32")
        batch = [rng.randrange(2**32) for _ in range(nb)]
        n, k, eps = rng.randrange(2**32), rng.randrange(-2**31, 2**31), rng.uniform(-9, 9)
        assert blk.words == 3 + nb
        assert blk.pack_words(n, *batch, k, eps) == blk.pack(n=n, batch=batch, k=k, eps=eps)


def test_negative_unsigned_values_wrap_like_params_u():
    blk = codegen.ParamBlock("a")
    assert struct.unpack("<I", blk.pack(a=-1))[0] == 0xFFFFFFFF


def test_mistakes_are_errors_not_zeros():
    blk = codegen.ParamBlock("a", "b: i32", defaults={"b": 7})
    with pytest.raises(TypeError, match="'a' not given"):
        blk.pack(b=1)
    with pytest.raises(TypeError, match="unknown kernel parameters"):
        blk.pack(a=1, c=2)
    assert struct.unpack("<Ii", blk.pack(a=3)) == (3, 7)
    with pytest.raises(OverflowError):
        blk.pack(a=1, b=2**31)
    with pytest.raises(ValueError, match="named twice"):
        codegen.ParamBlock("a", "a: f32")
    with pytest.raises(ValueError, match="parameter words"):
        codegen.ParamBlock("big[65]")
    with pytest.raises(ValueError, match="3 values for 2 words"):
        codegen.ParamBlock("s[2]").pack(s=[1, 2, 3])
    with pytest.raises(ValueError, match="expected"):
        codegen.ParamBlock("1bad")
    with pytest.raises(KeyError):
        codegen.ParamBlock("a").ref("b")
    with pytest.raises(IndexError):
        codegen.ParamBlock("s[2]").ref("s", 2)


def test_a_kernel_reads_what_the_host_packed():
    """On the adapter (lavapipe in CI): a kernel writes each named parameter out; the host compares."""
    import navitrain.wgpu  # noqa: F401
    from navitrain.wgpu.runtime import runtime
    from navitrain.wgpu.tensor import empty, to_cpu

    blk = codegen.ParamBlock("out_off", "k: i32", "dims[2]", "scale: f32")
    body = blk.wgsl() + """  if (gi == 0u) {
    b0[out_off] = f32(k); b0[out_off + 1u] = f32(dims_0); b0[out_off + 2u] = f32(dims_1);
    b0[out_off + 3u] = scale;
  }"""
    rt = runtime()
    kernel = rt.kernel(("test_param_block",), "test_param_block", 1, codegen.module(["f32"], body, 64))
    out = empty((4,), dtype=torch.float32)
    k, d0, d1 = random.randrange(-1000, 1000), random.randrange(1, 5000), random.randrange(1, 5000)
    scale = random.uniform(-3, 3)
    rt.dispatch(kernel, (out._ws.heap,), blk.pack(out_off=out.elem_offset, k=k, dims=(d0, d1), scale=scale),
                codegen.groups_for(1, 64))
    got = to_cpu(out)
    assert got.tolist()[:3] == [float(k), float(d0), float(d1)]
    assert got[3].item() == pytest.approx(scale, rel=1e-6)


def test_generated_pack_equals_the_checked_pack():
    """pack() is generated per block (keywords bound by Python, one struct call); the checked pack it falls
    back to defines the result: same bytes for random blocks and values, the same errors for mistakes,
    including two array fields whose wrong lengths add up to the right number of words."""
    rng = random.Random()
    for _ in range(50):
        fields, values = [], {}
        for i in range(rng.randrange(1, 8)):
            kind, count = rng.choice(["", ": i32", ": f32"]), rng.choice([None, None, 0, 1, 3])
            fields.append(f"f{i}{'' if count is None else f'[{count}]'}{kind}")
            draw = {"": lambda: rng.randrange(2**32), ": i32": lambda: rng.randrange(-2**31, 2**31),
                    ": f32": lambda: rng.uniform(-1e3, 1e3)}[kind]
            values[f"f{i}"] = draw() if count is None else [draw() for _ in range(count)]
        blk = codegen.ParamBlock(*fields)
        assert blk.pack(**values) == blk._checked_pack(**values) == codegen.ParamBlock.pack(blk, **values)
    blk = codegen.ParamBlock("a", "s[2]", "t[2]: i32", "u", defaults={"u": 5})
    assert blk.pack(a=-1, s=iter([1, 2]), t=(3, -4)) == struct.pack("<III2iI", 2**32 - 1, 1, 2, 3, -4, 5)
    with pytest.raises(ValueError, match="3 values for 2 words"):
        blk.pack(a=1, s=[1, 2, 3], t=[4])
    with pytest.raises(TypeError, match="'a' not given"):
        blk.pack(s=[1, 2], t=[3, 4])
    with pytest.raises(TypeError, match="unknown kernel parameters"):
        blk.pack(a=1, s=[1, 2], t=[3, 4], v=0)
    with pytest.raises(OverflowError):
        blk.pack(a=1, s=[1, 2], t=[2**31, 4])
