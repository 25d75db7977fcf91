"""The planner interface every method shares (SALF and the baselines).

A planner scores every cut k = 0..L (higher is better; NaN = not allowed).
The shared :meth:`Planner.plan` then prices every cut with the cost model,
drops the cuts over budget, takes the best-scoring cut that fits (ties go to
the cheaper, higher cut) and writes the full cost-benefit table into the Plan.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import numpy as np

from edgetune.backbones import Backbone
from edgetune.data import LabelMap, TextDataset
from edgetune.planner.cost import ArchSummary, Budget, CostConfig, TunerCost, estimate_all
from edgetune.planner.plan import CutRow, Plan, PlanError
from edgetune.tokenization import TextEncoder


@dataclass
class PlanningInputs:
    backbone: Backbone
    encoder: TextEncoder
    dataset: TextDataset
    label_map: LabelMap
    seed: int = 0
    progress: bool = True


@dataclass
class CutScores:
    """Per-cut scores (length L + 1) plus what the planner measured on the way."""

    scores: np.ndarray
    deviations: np.ndarray | None = None  # d_0..d_L
    gains: np.ndarray | None = None  # index k: d_{k-1} - d_k (NaN at k = 0)
    expected_gains: np.ndarray | None = None  # the method's per-layer estimate, also where a cut is not allowed
    diagnostics: dict[str, Any] = field(default_factory=dict)
    predicted_loss: np.ndarray | None = None  # accuracy points lost against the best cut (SALF's cheapest policy)
    resampled_scores: np.ndarray | None = None  # (B, L + 1): the scores on B bootstrap resamples of the sample
    loss_interval: np.ndarray | None = None  # (2, L + 1): 5th and 95th percentile of predicted_loss over resamples


def _num(x: Any) -> float | None:
    return None if x is None or not np.isfinite(x) else float(x)


class Planner(ABC):
    """Base class: subclasses set ``name`` and ``Config`` and implement :meth:`score_cuts`."""

    name: ClassVar[str]
    Config: ClassVar[type]

    def __init__(self, config: Any | None = None, **params: Any) -> None:
        self.config = config if config is not None else self.Config(**params)

    @abstractmethod
    def score_cuts(self, inputs: PlanningInputs) -> CutScores: ...

    def params(self) -> dict[str, Any]:
        return asdict(self.config)

    def plan(
        self,
        backbone: Backbone,
        encoder: TextEncoder,
        dataset: TextDataset,
        budget: Budget | None = None,
        cost: CostConfig | None = None,
        tuner: str = "full",
        tuner_params: dict[str, Any] | None = None,
        seed: int = 0,
        progress: bool = True,
        model_hash: str | None = None,
    ) -> Plan:
        start = time.perf_counter()
        budget = budget or Budget()
        label_map = dataset.label_map()
        if len(label_map) < 2:
            raise PlanError(f"{dataset.source}: need at least 2 labels to plan, found {list(label_map.labels)}")
        cost = cost or CostConfig(seq_len=encoder.max_length, num_examples=len(dataset))
        inputs = PlanningInputs(backbone, encoder, dataset, label_map, seed, progress)
        scored = self.score_cuts(inputs)
        arch = ArchSummary.from_backbone(backbone, len(label_map))
        costs = estimate_all(arch, cost, tuner_cost(backbone, tuner, tuner_params))
        cut = choose_cut(scored.scores, costs, budget)
        votes = resample_votes(scored.resampled_scores, costs, budget)
        interval = scored.loss_interval

        expected = scored.expected_gains
        rows = []
        for k, c in enumerate(costs):
            violations = budget.violations(c)
            rows.append(
                CutRow(
                    cut=k,
                    deviation=_num(scored.deviations[k]) if scored.deviations is not None else None,
                    gain=_num(scored.gains[k]) if scored.gains is not None else None,
                    expected_gain=_num(expected[k]) if expected is not None else None,
                    score=_num(scored.scores[k]),
                    predicted_loss=_num(scored.predicted_loss[k]) if scored.predicted_loss is not None else None,
                    trainable_params=c.trainable_params,
                    backward_flops=c.backward_flops,
                    backward_frac=c.backward_frac,
                    train_memory_mb=c.train_memory_mb,
                    device_seconds=c.device_seconds,
                    fits_budget=not violations,
                    budget_violations=violations,
                    predicted_loss_low=_num(interval[0][k]) if interval is not None else None,
                    predicted_loss_high=_num(interval[1][k]) if interval is not None else None,
                    chosen_share=float(votes[k] / votes.sum()) if votes is not None else None,
                )
            )
        return Plan(
            model_id=backbone.model_id,
            model_hash=model_hash or backbone.fingerprint(),
            model_type=backbone.config.model_type,
            num_layers=backbone.num_layers,
            hidden_size=backbone.hidden_size,
            labels=list(label_map.labels),
            cut=cut,
            planner=self.name,
            planner_params={**self.params(), "seed": seed, "fitted": scored.diagnostics},
            rows=rows,
            budget=budget.to_dict(),
            cost_config=cost.to_dict(),
            arch=arch.to_dict(),
            tuner=tuner,
            tuner_params=tuner_params or {},
            seconds=time.perf_counter() - start,
            max_length=encoder.max_length,
            confidence=None if votes is None else {"resamples": int(votes.sum()), "chosen": int(votes[cut])},
        )


def tuner_cost(backbone: Backbone, tuner: str, tuner_params: dict[str, Any] | None) -> TunerCost:
    """How ``tuner`` trains a block of ``backbone``, for pricing every cut."""
    from edgetune.tuners import get_tuner

    try:
        return get_tuner(tuner, **(tuner_params or {})).cost_profile(backbone.blocks[0], backbone.config.model_type)
    except ValueError as err:
        raise PlanError(str(err)) from None


def choose_cut(scores: np.ndarray, costs: list, budget: Budget) -> int:
    """Best-scoring allowed cut within budget; ties -> the higher (cheaper) cut."""
    allowed = [k for k in range(len(scores)) if np.isfinite(scores[k])]
    if not allowed:
        raise PlanError("the planner allowed no cut")
    fitting = [k for k in allowed if budget.fits(costs[k])]
    if not fitting:
        cheapest = max(allowed)
        raise PlanError(
            f"no cut fits the budget; the cheapest allowed cut ({cheapest}) has "
            + "; ".join(budget.violations(costs[cheapest]))
        )
    return best_cut(scores, fitting)


def best_cut(scores: np.ndarray, candidates: list[int] | None = None) -> int:
    """The best-scoring cut among ``candidates`` (every finite score by default); ties -> the higher (cheaper)."""
    keys = [k for k in range(len(scores)) if np.isfinite(scores[k])] if candidates is None else candidates
    best = max(scores[k] for k in keys)
    tol = 1e-9 * max(1.0, abs(best))
    return max(k for k in keys if scores[k] >= best - tol)


def resample_votes(resampled_scores: np.ndarray | None, costs: list, budget: Budget) -> np.ndarray | None:
    """How many resamples choose each cut, under the same budget as the plan; ``None`` without resamples."""
    if resampled_scores is None or len(resampled_scores) == 0:
        return None
    votes = np.zeros(resampled_scores.shape[1], dtype=np.int64)
    for row in resampled_scores:
        votes[choose_cut(row, costs, budget)] += 1
    return votes


def allowed_cuts_mask(num_layers: int, min_trainable_layers: int) -> np.ndarray:
    """Boolean mask over cuts 0..L: at least ``min_trainable_layers`` blocks stay trainable."""
    if not 0 <= min_trainable_layers <= num_layers:
        raise ValueError(f"min_trainable_layers must be in 0..{num_layers}, got {min_trainable_layers}")
    return np.arange(num_layers + 1) <= num_layers - min_trainable_layers
