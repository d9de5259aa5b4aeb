"""navitrain doctor: what is wrong with this machine's GPU training stack, and which route to use.

    facts = navitrain.doctor.collect()          # or collect("/some/tree", overrides={...})
    findings = navitrain.doctor.diagnose(facts) # errors first, the route recommendation included

Torch-free: torch and Vulkan are examined in child processes, so a broken stack is reported, never fatal.
"""
from __future__ import annotations

from navitrain.doctor import roads as _roads  # noqa: F401  (registers the other-roads rule)
from navitrain.doctor.collect import FACT_NAMES, collect
from navitrain.doctor.knowledge import Finding, internal_error, run_rules

__all__ = ["FACT_NAMES", "Finding", "collect", "diagnose", "recommendation"]


def diagnose(facts: dict) -> list[Finding]:
    """All findings for a fact set: the route recommendation first, then errors, warnings, info, ok."""
    from navitrain.doctor.recommend import recommend
    from navitrain.doctor.situation import Situation

    findings = run_rules(facts)
    try:
        route = recommend(Situation(facts if isinstance(facts, dict) else {}))
    except Exception as exc:  # pragma: no cover - kept as a row, like every rule
        return findings + [internal_error("recommend", exc)]
    return [route] + findings


def recommendation(findings: list[Finding]) -> Finding | None:
    """The route recommendation among the findings."""
    return next((f for f in findings if f.route), None)
