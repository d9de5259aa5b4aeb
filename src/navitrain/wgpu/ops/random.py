"""Random numbers on the device (uniform, normal, bernoulli, integers) and dropout."""
from __future__ import annotations

import torch

from navitrain.wgpu import rng
from navitrain.wgpu.dispatch import implements
from navitrain.wgpu.kernels import codegen, pointwise
from navitrain.wgpu.kernels.copy import copy_into
from navitrain.wgpu.runtime import runtime
from navitrain.wgpu.tensor import WgpuTensor, empty

aten = torch.ops.aten
WG = 256

# Each distribution is a WGSL expression over r (four random u32 for this element) and scalars s0, s1.
_DISTRIBUTIONS = {
    "uniform": ("s0 + (s1 - s0) * u01(r.x)", "f32"),
    "normal": ("s0 + s1 * sqrt(-2.0 * log(u01_open(r.x))) * cos(6.283185307179586 * u01(r.y))", "f32"),
    "bernoulli": ("select(0.0, 1.0, u01(r.x) < s0)", "f32"),
    # Integers in [s0, s0 + s1).
    "randint": ("", "int"),
}


# Philox's key (the seed) and the counter where this launch's stream starts, as two 32-bit words each;
# then the distribution's scalars (floats, or for integers the low end and the span).
_COMMON = ("n", "out_off", "seed[2]", "offset[2]")
_FLOAT_PARAMS = codegen.ParamBlock(*_COMMON, "s0: f32", "s1: f32")
_INT_PARAMS = codegen.ParamBlock(*_COMMON, "s0: i32", "s1")
# A captured graph renews the seed and offset words on each replay (runtime.replay's patches).
_RNG_WORD = next(word for name, _, _, word in _FLOAT_PARAMS.fields if name == "seed")
assert _RNG_WORD == next(word for name, _, _, word in _INT_PARAMS.fields if name == "seed")


# In the blocks' order (n, out_off, seed, offset, s0, s1): the keyword pack() costs microseconds.
_FLOAT_PACK, _INT_PACK = _FLOAT_PARAMS.pack_words, _INT_PARAMS.pack_words


def _params(dist: str) -> codegen.ParamBlock:
    return _INT_PARAMS if _DISTRIBUTIONS[dist][1] == "int" else _FLOAT_PARAMS


def _source(dist: str, out_dtype: torch.dtype) -> str:
    rt = runtime()
    st = rt.stypes[out_dtype]
    expr, kind = _DISTRIBUTIONS[dist]
    if kind == "int":
        # 32 random bits modulo the range: the bias is below range / 2^32, invisible for labels and indices.
        compute = st.compute
        value = f"{compute}(s0) + {compute}(r.x % s1)"
    else:
        value = expr
    body = _params(dist).wgsl() + f"""
  if (gi >= n) {{ return; }}
  let c0 = offset_0 + gi;
  let c1 = offset_1 + select(0u, 1u, c0 < offset_0);
  let r = philox(c0, c1, seed_0, seed_1);
  b0[out_off + gi] = {st.store(value)};"""
    return codegen.module([st.wgsl], body, WG, helpers=rng.WGSL)


def _generate(out: WgpuTensor, dist: str, a, b) -> WgpuTensor:
    n = out.numel()
    if n == 0:
        return out
    target = out if out.is_contiguous() else empty(out.shape, out.dtype)
    seed, offset = rng.reserve(n)
    pack = _INT_PACK if _DISTRIBUTIONS[dist][1] == "int" else _FLOAT_PACK
    params = pack(n, target.elem_offset, seed & 0xFFFFFFFF, seed >> 32, offset & 0xFFFFFFFF,
                  (offset >> 32) & 0xFFFFFFFF, a, b)
    rt = runtime()
    key = ("rand", dist, out.dtype)
    kernel = rt.kernel(key, f"random_{dist}", 1, lambda: _source(dist, out.dtype))
    rt.dispatch(kernel, (target._ws.heap,), params, codegen.groups_for(n, WG), rng_word=_RNG_WORD)
    if target is not out:
        copy_into(out, target)
    return out


@implements(aten.uniform_.default)
def uniform_(x, from_=0.0, to=1.0, *, generator=None):
    return _generate(x, "uniform", from_, to)


@implements(aten.normal_.default)
def normal_(x, mean=0.0, std=1.0, *, generator=None):
    return _generate(x, "normal", mean, std)


@implements(aten.bernoulli_.float)
def bernoulli_(x, p=0.5, *, generator=None):
    return _generate(x, "bernoulli", p, 0.0)


@implements(aten.bernoulli.default)
def bernoulli(x, *, generator=None):
    # Each element is 1 with the probability given by x.
    u = _generate(empty(x.shape, torch.float32), "uniform", 0.0, 1.0)
    return pointwise.run("bernoulli_p", "select(0.0, 1.0, a < b)", [u, x], x.dtype, "f32")


@implements(getattr(aten.random_, "from"))
def random_from(x, from_, to=None, *, generator=None):
    if to is None:
        to = 2**24 if x.dtype.is_floating_point else torch.iinfo(x.dtype).max if x.dtype != torch.bool else 2
    span = int(to) - int(from_)
    if span <= 0 or span > 2**32 - 1 or not -(2**31) <= from_ < 2**31:
        raise NotImplementedError(f"random_ over [{from_}, {to}) on the wgpu device (ranges up to 2^32 are supported)")
    return _generate(x, "randint", int(from_), span)


@implements(aten.random_.to)
def random_to(x, to, *, generator=None):
    return random_from(x, 0, to)


@implements(aten.random_.default)
def random_default(x, *, generator=None):
    top = (2**24 if x.dtype.is_floating_point else 2 if x.dtype == torch.bool
           else min(torch.iinfo(x.dtype).max, 2**31 - 1))
    return random_from(x, 0, top)


@implements(aten.native_dropout.default)
def native_dropout(x, p, train):
    if not train or p == 0:
        return aten.clone.default(x), aten.ones_like.default(x, dtype=torch.bool)
    if p == 1:
        return aten.zeros_like.default(x), aten.zeros_like.default(x, dtype=torch.bool)
    keep = _generate(empty(x.shape, torch.float32), "uniform", 0.0, 1.0)
    mask = pointwise.run("dropout_mask", "a >= s0", [keep], torch.bool, "f32", [p])
    scale = 1.0 / (1.0 - p)
    out = pointwise.run("dropout_apply", "select(0.0, a * s0, b)", [x, mask], x.dtype, "f32", [scale],
                        load_types=("f32", "bool"))
    return out, mask


@implements(aten.native_dropout_backward.default)
def native_dropout_backward(grad, mask, scale):
    # The CPU's grad * mask * scale: a float result for integer and bool grads (scale is a float); a
    # dropped float gradient stays NaN or -0, a dropped integer one is an integer 0 (+0.0).
    dtype = torch.result_type(torch.empty((), dtype=grad.dtype), scale)
    expr = "a * f32(b) * s0" if grad.dtype.is_floating_point else "select(0.0, a, b) * s0"
    return pointwise.run("dropout_backward", expr, [grad, mask], dtype, "f32", [scale], load_types=("f32", "bool"))



@implements(aten.randperm.generator_out)
def randperm_out(n, *, generator=None, out):
    """A random permutation: the order of n uniform keys (argsort is stable, so ties still give a
    permutation). torch.randperm(n, device="wgpu") lands here with an empty `out`."""
    from navitrain.wgpu.ops.views import resize_

    if out.numel() != n:
        resize_(out, [n])
    if n == 0:
        return out
    keys = _generate(empty([n], torch.float32), "uniform", 0.0, 1.0)
    order = aten.sort.default(keys)[1]
    return copy_into(out, order)
