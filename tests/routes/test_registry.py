"""The route registry: built-in routes appear by themselves, fastest first, with clear errors."""
import pytest

from navitrain.routes import Route, registry


def test_builtin_routes_are_registered_in_default_speed_order():
    names = registry.names()
    assert {"native", "cpu"} <= set(names)
    ranks = [registry.get(n).default_rank for n in names]
    assert ranks == sorted(ranks)
    assert names[0] == "native" and names[-1] == "cpu"
    for later in ("nomiopen", "wgpu"):  # added by other modules; they must slot in between when present
        if later in names:
            assert names.index("native") < names.index(later) < names.index("cpu")


def test_get_returns_a_fresh_route_and_unknown_names_are_clear():
    a, b = registry.get("cpu"), registry.get("cpu")
    assert isinstance(a, Route) and a is not b and a.name == "cpu"
    with pytest.raises(ValueError, match=r"unknown route 'warp'; known routes: .*cpu"):
        registry.get("warp")


def test_register_needs_a_name():
    class Nameless(Route):
        summary = ""
        default_rank = 50

        def availability(self):
            raise NotImplementedError

        def prepare(self):
            raise NotImplementedError

    with pytest.raises(TypeError, match="no route name"):
        registry.register(Nameless)
