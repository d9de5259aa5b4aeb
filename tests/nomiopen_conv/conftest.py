"""Settings for the operator tests."""
import pytest

from navitrain.nomiopen_conv import plan_cache


@pytest.fixture(autouse=True)
def _fresh_conv_plans():
    # Convolution plans are cached per shape; tests that monkeypatch thresholds or policy helpers
    # must see plans built under their settings, and must not leave such plans to later tests.
    plan_cache.clear()
    yield
    plan_cache.clear()
