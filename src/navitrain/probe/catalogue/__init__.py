"""The built-in probe catalogue: what a training run needs, one family per module.

Every case builds its inputs on the CPU with navitrain.probe.inputs (seeded, so the device run and the
CPU reference see the same numbers), runs on `device` in `dtype`, and returns the outputs and the
gradients to compare. Cases marked `essential` are the ones navitrain.device() runs before trusting a
route: the two training runs and the operations they are built from.
"""
MODULES = ("tensors", "pointwise", "linalg", "conv", "layers", "training")
