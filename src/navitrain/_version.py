"""navitrain's version, in a module of its own: the code that reports it (doctor, probe fingerprints,
bench records, the CLI) imports it from here, not from the package facade, which imports downward only.
pyproject.toml reads it from here too (setuptools dynamic version)."""
__version__ = "0.1.0"

# The oldest torch navitrain is tested with (pyproject's `torch>=2.11`): the doctor warns below it and
# the wgpu device refuses to start below it.
MIN_TORCH = (2, 11)
