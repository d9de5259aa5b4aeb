"""The wgpu device's random number generator: Philox4x32-10, counter-based, reproducible per seed.

State is a 64-bit seed and a 64-bit counter offset, kept on the host: every random op reserves a
range of counters and each GPU thread computes its numbers from (seed, offset + index) alone, so the
same seed gives the same numbers whatever the batching, and `torch.manual_seed(s)` (which calls
`torch.wgpu.manual_seed_all`) resets it. Values differ from the CPU generator's (mt19937 is sequential
and cannot be reproduced in parallel); the distributions are the same.
"""
from __future__ import annotations

import random
import threading

import torch

_DEFAULT_SEED = 67280421310721
_lock = threading.Lock()
_state = {"seed": _DEFAULT_SEED, "offset": 0}


def manual_seed(seed: int) -> None:
    seed = int(seed)
    with _lock:
        _state["seed"] = seed & 0xFFFFFFFFFFFFFFFF
        _state["offset"] = 0


def seed() -> int:
    s = random.getrandbits(63)
    manual_seed(s)
    return s


def initial_seed() -> int:
    return _state["seed"]


def reserve(count: int) -> tuple[int, int]:
    """(seed, first counter) for `count` fresh counters (each gives four 32-bit numbers)."""
    with _lock:
        offset = _state["offset"]
        _state["offset"] = offset + max(1, (count + 3) // 4 * 4)
        return _state["seed"], offset


def position() -> tuple[int, int]:
    """(seed, next counter offset)."""
    with _lock:
        return _state["seed"], _state["offset"]


def rewind(offset: int) -> None:
    """Set the next counter offset (a graph capture gives back the counters it only recorded)."""
    with _lock:
        _state["offset"] = offset


def get_rng_state(device=None) -> torch.Tensor:
    with _lock:
        values = [_state["seed"], _state["offset"]]
    return torch.tensor(values, dtype=torch.int64).view(torch.uint8).clone()


def set_rng_state(new_state: torch.Tensor, device=None) -> None:
    values = new_state.detach().cpu().contiguous().view(torch.int64).tolist()
    if len(values) != 2:
        raise ValueError("a wgpu RNG state is 16 bytes: seed and offset")
    with _lock:
        _state["seed"] = values[0] & 0xFFFFFFFFFFFFFFFF
        _state["offset"] = values[1]


# WGSL: philox(counter_lo, counter_hi, key_lo, key_hi) -> four u32. WGSL has no 32x32->64 multiply,
# so the high word is assembled from 16-bit halves.
WGSL = """
fn mulhilo(a: u32, b: u32) -> vec2<u32> {
  let al = a & 0xffffu; let ah = a >> 16u; let bl = b & 0xffffu; let bh = b >> 16u;
  let ll = al * bl; let hl = ah * bl; let lh = al * bh; let hh = ah * bh;
  let mid = (ll >> 16u) + (hl & 0xffffu) + lh;
  let hi = hh + (hl >> 16u) + (mid >> 16u);
  let lo = (mid << 16u) | (ll & 0xffffu);
  return vec2<u32>(hi, lo);
}
fn philox(c0: u32, c1: u32, k0_in: u32, k1_in: u32) -> vec4<u32> {
  var c = vec4<u32>(c0, c1, 0u, 0u);
  var k0 = k0_in; var k1 = k1_in;
  for (var r = 0u; r < 10u; r = r + 1u) {
    let p0 = mulhilo(0xD2511F53u, c.x);
    let p1 = mulhilo(0xCD9E8D57u, c.z);
    c = vec4<u32>(p1.x ^ c.y ^ k0, p1.y, p0.x ^ c.w ^ k1, p0.y);
    k0 = k0 + 0x9E3779B9u; k1 = k1 + 0xBB67AE85u;
  }
  return c;
}
fn u01(x: u32) -> f32 { return f32(x >> 8u) * (1.0 / 16777216.0); }          // [0, 1)
fn u01_open(x: u32) -> f32 { return (f32(x >> 8u) + 0.5) * (1.0 / 16777216.0); } // (0, 1)
"""
