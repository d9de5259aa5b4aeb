"""The wgpu:N this process drives, at the bottom of the package so that the runtime (which opens that
adapter) and the tensors (which report it) can read it without importing the registration code above them.

One adapter per process (as torchrun runs one rank per GPU): the runtime opens adapter N of
adapters.device_order when it starts, and every wgpu tensor of the process reports this device.
`navitrain.wgpu.device` sets it: wgpu:0 once register() has named the device, then set_device(N) or a
first `device="wgpu:N"` may change it until the runtime starts.
"""
from __future__ import annotations

import torch

CURRENT: torch.device = None  # type: ignore[assignment]  (wgpu:0 once device.register() named the device)
