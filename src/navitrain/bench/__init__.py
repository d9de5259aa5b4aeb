"""Workloads, per-route timing and charts behind `navitrain bench` (and the speeds `navitrain advise` uses).

Submodules import torch; this package file does not, so `import navitrain.bench` stays cheap.
"""
