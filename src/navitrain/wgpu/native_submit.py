"""Opening and submitting the runtime's batches of dispatches through wgpu-native's C functions.

An eager training step submits a batch every few dispatches (so the GPU works while Python records
the rest), and wgpu-py's wrappers around the five calls a batch takes (create an encoder, begin and end
a compute pass, finish, submit) and the parameter upload cost ~80 us of host time per batch, about
half of it Python: descriptor structs and label strings built anew, wrapper objects made and later
released from __del__. Here the descriptors are built once and the native handles are released right
after use. The calls still go through wgpu-py's error-capturing proxies (`libf`), so a validation
error raises the same exception it did through the wrappers.
"""
from __future__ import annotations


def native_api():
    """(ffi, lib, libf) of wgpu-py's wgpu-native backend, or None (other wgpu builds)."""
    try:
        from wgpu.backends.wgpu_native._api import ffi, lib, libf

        libf.wgpuDeviceCreateCommandEncoder  # noqa: B018 - existence checks
        libf.wgpuQueueWriteBuffer  # noqa: B018
        return ffi, lib, libf
    except Exception:  # pragma: no cover - other wgpu builds
        return None


class OpenPass:
    """A compute pass begun natively; `end()` ends and releases it (the runtime's `_pass` protocol)."""

    __slots__ = ("raw", "_submitter")

    def __init__(self, raw, submitter: NativeSubmitter):
        self.raw = raw
        self._submitter = submitter

    def end(self) -> None:
        raw, self.raw = self.raw, None
        if raw is not None:
            s = self._submitter
            try:
                s.libf.wgpuComputePassEncoderEnd(raw)
            finally:
                s.lib.wgpuComputePassEncoderRelease(raw)


class NativeSubmitter:
    """One device's encoder, pass, upload and submit calls, with their descriptors made once."""

    def __init__(self, api, device, queue, param_buffer, arena: bytearray):
        ffi, self.lib, self.libf = api
        self._device = device._internal
        self._queue = queue._internal
        self._param_buffer = param_buffer._internal
        # The arena is written in place and never resized, so one pointer into it stays valid (and, while
        # it is exported, Python refuses to resize it).
        self._arena = ffi.from_buffer(arena)
        self._labels = [ffi.new("char[]", b"navitrain-batch"), ffi.new("char[]", b"navitrain-pass"),
                        ffi.new("char[]", b"navitrain-commands")]
        self._encoder_desc = ffi.new("WGPUCommandEncoderDescriptor *")
        self._pass_desc = ffi.new("WGPUComputePassDescriptor *")
        self._commands_desc = ffi.new("WGPUCommandBufferDescriptor *")
        for desc, label in zip((self._encoder_desc, self._pass_desc, self._commands_desc), self._labels):
            desc.label.data = label
            desc.label.length = len(ffi.string(label))
        self._commands = ffi.new("WGPUCommandBuffer[1]")

    def create_encoder(self):
        return self.libf.wgpuDeviceCreateCommandEncoder(self._device, self._encoder_desc)

    def begin_pass(self, encoder) -> OpenPass:
        return OpenPass(self.libf.wgpuCommandEncoderBeginComputePass(encoder, self._pass_desc), self)

    def upload_params(self, nbytes: int) -> None:
        """Arena bytes [0, nbytes) into the parameter buffer (ordered before the next submission)."""
        self.libf.wgpuQueueWriteBuffer(self._queue, self._param_buffer, 0, self._arena, nbytes)

    def finish(self, encoder):
        """The encoder's command buffer; the encoder is released either way."""
        try:
            return self.libf.wgpuCommandEncoderFinish(encoder, self._commands_desc)
        finally:
            self.lib.wgpuCommandEncoderRelease(encoder)

    def submit(self, commands) -> None:
        """Submit one command buffer and release it."""
        self._commands[0] = commands
        try:
            self.libf.wgpuQueueSubmit(self._queue, 1, self._commands)
        finally:
            self.lib.wgpuCommandBufferRelease(commands)
