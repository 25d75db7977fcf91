"""Where to fine-tune: SALF and the baselines behind one interface, plus the cost model."""

from __future__ import annotations

from typing import Any

from edgetune.planner.base import CutScores, Planner, PlanningInputs, choose_cut
from edgetune.planner.baselines import AutoFreezePlanner, FullPlanner, GradNormPlanner, RandomPlanner, TopKPlanner
from edgetune.planner.cost import ArchSummary, Budget, CostConfig, CutCost, TunerCost, estimate_all, estimate_cut
from edgetune.planner.plan import PLAN_SCHEMA_VERSION, CutRow, Plan, PlanError
from edgetune.planner.salf import SALFConfig, SALFPlanner

PLANNERS: dict[str, type[Planner]] = {
    cls.name: cls for cls in (SALFPlanner, TopKPlanner, GradNormPlanner, AutoFreezePlanner, RandomPlanner, FullPlanner)
}


def get_planner(name: str, **params: Any) -> Planner:
    """Instantiate a registered planner by name with its config parameters."""
    try:
        cls = PLANNERS[name]
    except KeyError:
        raise ValueError(f"unknown planner {name!r}; choose one of {', '.join(PLANNERS)}") from None
    return cls(**params)


__all__ = [
    "PLANNERS",
    "PLAN_SCHEMA_VERSION",
    "ArchSummary",
    "AutoFreezePlanner",
    "Budget",
    "CostConfig",
    "CutCost",
    "CutRow",
    "CutScores",
    "FullPlanner",
    "GradNormPlanner",
    "Plan",
    "PlanError",
    "Planner",
    "PlanningInputs",
    "RandomPlanner",
    "SALFConfig",
    "SALFPlanner",
    "TopKPlanner",
    "TunerCost",
    "choose_cut",
    "estimate_all",
    "estimate_cut",
    "get_planner",
]
