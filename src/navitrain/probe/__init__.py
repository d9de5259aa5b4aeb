"""navitrain.probe: run operator cases in crash-isolated child processes on every route, compare them
with the CPU, remember the answers per machine, and pick the route navitrain.device() trains on.

Write your own cases with the `case` decorator (see docs/probe.md):

    import navitrain.probe

    @navitrain.probe.case("my-layer")
    def my_layer(device):
        x = torch.randn(8, 16).to(device)   # made on the CPU: the same numbers on every device
        return MyLayer().to(device)(x)

Importing this package does not import torch.
"""
from navitrain.probe.cases import Case, Unsupported, case

__all__ = ["Case", "Unsupported", "case"]
