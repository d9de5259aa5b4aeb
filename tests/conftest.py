"""Suite-wide test settings."""
import os

import pytest


# Tests never read or write the user's real cache.
@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("NAVITRAIN_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "navitrain-cache"))
    yield


def pytest_report_header(config):
    return f"navitrain CI={os.environ.get('CI', '')}"
