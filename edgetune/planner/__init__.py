"""Where to fine-tune: SALF and the baselines behind one interface, plus the cost model."""

from __future__ import annotations

from importlib import import_module
from typing import Any

from edgetune.planner.base import CutScores, Planner, PlanningInputs, choose_cut
from edgetune.planner.baselines import AutoFreezePlanner, FullPlanner, GradNormPlanner, RandomPlanner, TopKPlanner
from edgetune.planner.cost import ArchSummary, Budget, CostConfig, CutCost, TunerCost, estimate_all, estimate_cut
from edgetune.planner.plan import PLAN_SCHEMA_VERSION, CutRow, Plan, PlanError
from edgetune.planner.salf import SALFConfig, SALFPlanner
from edgetune.planner_registry import PLANNER_CLASSES


def _load_planners() -> dict[str, type[Planner]]:
    """The classes :data:`edgetune.planner_registry.PLANNER_CLASSES` names, each checked to bear its key as name."""
    planners: dict[str, type[Planner]] = {}
    for name, where in PLANNER_CLASSES.items():
        module, _, cls_name = where.partition(":")
        cls = getattr(import_module(module), cls_name)
        if cls.name != name:
            raise RuntimeError(f"planner registry: {where} is named {cls.name!r}, registered as {name!r}")
        planners[name] = cls
    return planners


PLANNERS: dict[str, type[Planner]] = _load_planners()


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
