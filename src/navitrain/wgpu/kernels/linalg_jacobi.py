"""What the two cyclic-Jacobi engines (kernels/linalg_eigh.py: two-sided, symmetric eigenproblems;
kernels/linalg_svd.py: one-sided, SVD) share: their sizing, the round-robin order of the pairs, the rotation
angle, the power-of-two scaling of the input and the end-of-sweep test, as Python helpers and WGSL pieces.

Both run one workgroup per matrix and keep the matrix in workgroup memory; each builds its own body from
these pieces, so a fix to, say, the angle formula reaches both.
"""
from __future__ import annotations

from navitrain.wgpu import kernel_limits
from navitrain.wgpu.runtime import runtime


def padded(n: int) -> int:
    """The order a kernel is compiled for: n rounded up to even (the round-robin needs pairs; the extra
    index is a dummy that never rotates)."""
    return max(2, n + (n & 1))


def workgroup(order: int) -> int:
    """Threads per matrix: a small matrix leaves most of 256 idle on every barrier."""
    return 64 if order <= 16 else 256


def fits_workgroup_memory(source: str) -> bool:
    """Whether a generated kernel's workgroup arrays fit this device's workgroup memory."""
    room = int(runtime().limits.get("max-compute-workgroup-storage-size", 16384))
    return kernel_limits.workgroup_bytes(source) <= room


def workgroup_vars(half: int) -> str:
    """The rotations of one round (one slot per disjoint pair) and the flags and statuses the scaling and
    the sweep loop below use."""
    return (f"var<workgroup> rot_p: array<u32, {half}>;\nvar<workgroup> rot_q: array<u32, {half}>;\n"
            f"var<workgroup> rot_c: array<f32, {half}>;\nvar<workgroup> rot_s: array<f32, {half}>;\n"
            "var<workgroup> flag_bad: atomic<u32>;\nvar<workgroup> flag_max: atomic<u32>;\n"
            "var<workgroup> flag_rot: atomic<u32>;\nvar<workgroup> status_bad: u32;\n"
            "var<workgroup> status_rot: u32;\nvar<workgroup> exponent: i32;\n")


# jacobi_pair: round `round` of a sweep over m (even) indices pairs slot 0 with index m - 1 and slot s > 0
# with the two indices s steps either side of `round` on a circle of m - 1: every pair once per sweep, the
# m/2 pairs of one round disjoint (so their rotations commute). Returned ordered (lo, hi).
# jacobi_tangent: tan of the rotation angle that zeroes the pair, from theta = (a_qq - a_pp) / (2 a_pq)
# (or its one-sided analogue), the smaller of the two roots for stability.
HELPERS = """
fn jacobi_pair(round: u32, slot: u32, m: u32) -> vec2<u32> {
  var p = round;
  var q = m - 1u;
  if (slot != 0u) {
    p = (round + slot) % (m - 1u);
    q = (round + m - 1u - slot) % (m - 1u);
  }
  return vec2<u32>(min(p, q), max(p, q));
}

fn jacobi_tangent(theta: f32) -> f32 {
  var t = 0.5 / theta;  // theta^2 would overflow: tan of the angle is 1/(2 theta) to float32
  if (abs(theta) < 1e18) {
    t = select(1.0, -1.0, theta < 0.0) / (abs(theta) + sqrt(1.0 + theta * theta));
  }
  return t;
}
"""

# Opens the body: flags cleared before any thread reports into them.
CLEAR_FLAGS = """
  if (lid == 0u) { atomicStore(&flag_bad, 0u); atomicStore(&flag_max, 0u); atomicStore(&flag_rot, 0u); }
  workgroupBarrier();
"""

# After the load loop, whose threads kept `local_bad` (a non-finite entry seen) and `local_max` (the largest
# |entry|'s bits): `bad` and `shift`, the power of two bringing the largest |entry| into [1, 2) (0 for a
# zero or subnormal-only matrix), uniform over the workgroup. Scaling by it is exact and keeps the sums of
# squares and rotation formulas clear of overflow.
SCALE_EXPONENT = """
  if (local_bad != 0u) { atomicOr(&flag_bad, 1u); }
  atomicMax(&flag_max, local_max);
  workgroupBarrier();
  if (lid == 0u) {
    status_bad = atomicLoad(&flag_bad);
    exponent = i32((atomicLoad(&flag_max) >> 23u) & 0xffu) - 127;
    if (exponent == -127) { exponent = 0; }
  }
  let bad = workgroupUniformLoad(&status_bad) != 0u;
  let shift = workgroupUniformLoad(&exponent);
"""

# Closes a sweep: a sweep in which no pair rotated ends the loop (flag_rot is set by each rotation).
END_OF_SWEEP = """
    if (lid == 0u) {
      status_rot = atomicLoad(&flag_rot);
      atomicStore(&flag_rot, 0u);
    }
    if (workgroupUniformLoad(&status_rot) == 0u) { break; }
"""
