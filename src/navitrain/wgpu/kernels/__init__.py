"""Kernel engines: WGSL generation and launch for whole families of ops (pointwise, reductions, GEMM,
convolution, copies, ...). They work on WgpuTensors and know nothing of aten: the `@implements`
handlers in `navitrain.wgpu.ops` sit on top of them, and nothing here imports a handler."""
