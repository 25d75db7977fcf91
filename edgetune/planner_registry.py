"""The planners by name, and where each one's class lives: the one declaration of which planners exist.

Torch-free, so that code that must not load the planner (the command line's ``--planner`` flag) reads the names
here; :data:`edgetune.planner.PLANNERS` loads the classes from it.
"""

from __future__ import annotations

PLANNER_CLASSES: dict[str, str] = {
    "salf": "edgetune.planner.salf:SALFPlanner",
    "topk": "edgetune.planner.baselines:TopKPlanner",
    "gradnorm": "edgetune.planner.baselines:GradNormPlanner",
    "autofreeze": "edgetune.planner.baselines:AutoFreezePlanner",
    "random": "edgetune.planner.baselines:RandomPlanner",
    "full": "edgetune.planner.baselines:FullPlanner",
}
"""Planner name -> ``module:class``; the class's ``name`` is the key (``edgetune.planner`` checks it)."""

PLANNER_NAMES: tuple[str, ...] = tuple(PLANNER_CLASSES)
