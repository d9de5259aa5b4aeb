"""benchmarks/max_batch.py's search: the largest batch that fits, by doubling then bisection, with few tries."""
import importlib.util
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "max_batch.py"
_spec = importlib.util.spec_from_file_location("max_batch", _PATH)
max_batch = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(max_batch)


@pytest.mark.parametrize("limit,most", [(0, 64), (1, 64), (37, 64), (64, 64), (100, 64), (63, 100), (1000, 300)])
def test_largest_batch_finds_the_edge(limit, most):
    tried = []

    def fits(n):
        tried.append(n)
        return {"fits": n <= limit, "peak_bytes": n}

    batch, result = max_batch.largest_batch(fits, most)
    assert batch == min(limit, most)
    assert result.get("peak_bytes") == (batch or None)
    assert len(tried) <= 2 * most.bit_length() + 1 and len(set(tried)) == len(tried)


@pytest.mark.parametrize("limit,start", [(0, 8), (3, 8), (8, 8), (9, 8), (500, 16), (1000, 2000)])
def test_largest_batch_from_a_later_start(limit, start):
    tried = []

    def fits(n):
        tried.append(n)
        return {"fits": n <= limit}

    batch, _ = max_batch.largest_batch(fits, 600, start)
    assert batch == min(limit, 600)
    assert len(set(tried)) == len(tried)
