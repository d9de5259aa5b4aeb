"""Whether a wgpu device keeps float32 subnormals in arithmetic (issue: NVIDIA's Vulkan driver does not).

WGSL and naga give no way to ask for denormal preservation, and some drivers flush: on an H100 (Vulkan
driver 580) x * 1 is 0 for every subnormal x, 1 / 5e-39 is inf and 1e-30 * 1e-10 is 0, as on a CPU under
torch.set_flush_denormal(True) (flush to zero and denormals are zero). Copies keep the bits; only
arithmetic flushes. Lavapipe keeps subnormals.

One tiny kernel answers it, run once per device and cached. It needs only wgpu, not torch or the
navitrain.wgpu runtime, so `navitrain doctor` runs it in its torch-free Vulkan child as well.
"""
from __future__ import annotations

import struct
import threading
import weakref

# 2^-128 (the smallest normal / 4) and 1.0 come from a buffer, not constants, so no compiler folds the
# products at compile time (and so keeps the subnormals the driver would flush at run time). Word 0:
# a subnormal operand times 1 (flushed if the driver treats subnormal inputs as zero or flushes results);
# word 1: 2^-100 * 2^-28, two normals whose product is subnormal (flushed if results are).
_PROBE_WGSL = """
@group(0) @binding(0) var<storage, read_write> words: array<u32, 4>;
@compute @workgroup_size(1)
fn main() {
  let subnormal = bitcast<f32>(words[0]);
  let one = bitcast<f32>(words[1]);
  let small = bitcast<f32>(words[2]);
  let tiny = bitcast<f32>(words[3]);
  words[0] = bitcast<u32>(subnormal * one);
  words[1] = bitcast<u32>(small * tiny);
}
"""
_SUBNORMAL_BITS = 0x00200000        # 2^-128
_ONE_BITS = 0x3F800000
_SMALL_BITS, _TINY_BITS = 0x0D800000, 0x31800000   # 2^-100, 2^-28

_lock = threading.Lock()
_answers: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def probe(device) -> bool:
    """Run the probe kernel on a wgpu device: True if it flushed either subnormal to zero."""
    import wgpu

    usage = wgpu.BufferUsage
    data = struct.pack("<4I", _SUBNORMAL_BITS, _ONE_BITS, _SMALL_BITS, _TINY_BITS)
    buffer = device.create_buffer_with_data(data=data, usage=usage.STORAGE | usage.COPY_SRC)
    try:
        pipeline = device.create_compute_pipeline(
            label="navitrain-float-modes", layout="auto",
            compute={"module": device.create_shader_module(code=_PROBE_WGSL), "entry_point": "main"})
        bind_group = device.create_bind_group(
            layout=pipeline.get_bind_group_layout(0),
            entries=[{"binding": 0, "resource": {"buffer": buffer, "offset": 0, "size": 16}}])
        encoder = device.create_command_encoder()
        compute = encoder.begin_compute_pass()
        compute.set_pipeline(pipeline)
        compute.set_bind_group(0, bind_group)
        compute.dispatch_workgroups(1)
        compute.end()
        device.queue.submit([encoder.finish()])
        times_one, product = struct.unpack("<2I", bytes(device.queue.read_buffer(buffer, 0, 8)))
    finally:
        buffer.destroy()
    # both products are exactly 2^-128 where subnormals survive; a flushed one is +-0
    return (times_one & 0x7FFFFFFF) == 0 or (product & 0x7FFFFFFF) == 0


def flushes_subnormals(device) -> bool:
    """probe(device), once per device object (the answer cannot change while the device lives)."""
    with _lock:
        answer = _answers.get(device)
        if answer is None:
            answer = _answers[device] = probe(device)
        return answer
