"""`profile()`: GPU time per kernel. Lives below the package facade so that engines (the GEMM tuner
times its candidates with it) can use it without importing `navitrain.wgpu`, which imports everything."""
from __future__ import annotations

import contextlib

from navitrain.wgpu import runtime as _runtime_mod


@contextlib.contextmanager
def profile():
    """Time every kernel on the GPU:

        with navitrain.wgpu.profile() as table:
            train_step()
        # table: kernel name -> [dispatch count, GPU seconds]; matrix products and convolutions are
        # keyed "name@(grid)" so that shapes stay apart

    With the adapter's timestamp queries each dispatch runs in a compute pass of its own stamped at
    both ends (GPU time only); without them each dispatch is submitted and waited for alone, and the
    seconds include the submit round trip."""
    rt = _runtime_mod.runtime()
    rt.synchronize()
    rt.profile = {}
    try:
        yield rt.profile
    finally:
        rt.synchronize()
        rt.profile = None
