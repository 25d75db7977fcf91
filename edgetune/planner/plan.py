"""The Plan: what the planner decided, as a versioned dataclass <-> plan.json."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from edgetune.errors import EdgetuneError
from edgetune.io import atomic_write_json

PLAN_SCHEMA_VERSION = 1


class PlanError(EdgetuneError, ValueError):
    """A plan file is unreadable, of another schema, or inconsistent."""


@dataclass
class CutRow:
    """One row of the cost-benefit table: training above ``cut``."""

    cut: int
    deviation: float | None
    gain: float | None  # raw deviation removed by block ``cut`` (d_{cut-1} - d_cut)
    expected_gain: float | None  # SALF: expected fine-tuning gain G_l of layer ``cut``
    score: float | None  # the planner's preference for this cut (None: not allowed)
    trainable_params: int
    backward_flops: float
    backward_frac: float
    train_memory_mb: float
    device_seconds: float
    fits_budget: bool
    budget_violations: list[str] = field(default_factory=list)
    predicted_loss: float | None = None  # accuracy points below the best cut, predicted from the traces
    predicted_loss_low: float | None = None  # 5th percentile of predicted_loss over resamples of the sample
    predicted_loss_high: float | None = None  # 95th percentile
    chosen_share: float | None = None  # share of the resamples whose plan chose this cut


@dataclass
class Plan:
    model_id: str
    model_hash: str
    model_type: str
    num_layers: int
    hidden_size: int
    labels: list[str]
    cut: int
    planner: str
    planner_params: dict[str, Any]
    rows: list[CutRow]
    budget: dict[str, Any]
    cost_config: dict[str, Any]
    arch: dict[str, Any]
    tuner: str = "full"
    tuner_params: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    created_at: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    text_column: str = "text"
    label_column: str = "label"
    max_length: int = 128
    # how sure the choice is: {"resamples": B, "chosen": how many of them chose ``cut``}; None when the planner
    # does not resample (the baselines, SALF's argmax-gain rule)
    confidence: dict[str, int] | None = None
    schema_version: int = PLAN_SCHEMA_VERSION

    def __post_init__(self) -> None:
        if not 0 <= self.cut <= self.num_layers:
            raise PlanError(f"plan cut {self.cut} outside 0..{self.num_layers}")
        if not self.labels:
            raise PlanError("plan has no labels")

    @property
    def trainable_layers(self) -> list[int]:
        """1-based indices of the blocks that are trained (l*+1..L)."""
        return list(range(self.cut + 1, self.num_layers + 1))

    def confidence_text(self) -> str | None:
        """ "cut 4: chosen in 190 of 200 resamples (95%)", or None when the plan carries no confidence."""
        if not self.confidence or not self.confidence.get("resamples"):
            return None
        chosen, total = self.confidence["chosen"], self.confidence["resamples"]
        return f"cut {self.cut}: chosen in {chosen} of {total} resamples ({100 * chosen / total:.0f}%)"

    @property
    def chosen(self) -> CutRow:
        return next(r for r in self.rows if r.cut == self.cut)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {"schema_version": d.pop("schema_version"), **d}

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "<plan>") -> Plan:
        version = d.get("schema_version")
        if version != PLAN_SCHEMA_VERSION:
            raise PlanError(
                f"{source}: plan schema version {version!r} is not supported (expected {PLAN_SCHEMA_VERSION}); "
                "re-run `edgetune plan`"
            )
        names = {f.name for f in fields(cls)}
        missing = sorted(_REQUIRED - d.keys())
        if missing:
            raise PlanError(f"{source}: plan is missing fields {missing}")
        values = {k: v for k, v in d.items() if k in names}
        try:
            values["rows"] = [CutRow(**r) for r in values["rows"]]
            return cls(**values)
        except (TypeError, KeyError) as err:
            raise PlanError(f"{source}: malformed plan ({err})") from None

    def save(self, path: str | Path) -> Path:
        atomic_write_json(path, self.to_dict())
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> Plan:
        path = Path(path)
        if not path.exists():
            raise PlanError(f"{path}: plan file not found (create one with `edgetune plan`)")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise PlanError(f"{path}: not a valid plan JSON ({err})") from None
        if not isinstance(data, dict):
            raise PlanError(f"{path}: not a valid plan JSON (top level is not an object)")
        return cls.from_dict(data, source=str(path))


_REQUIRED = {
    "model_id",
    "model_hash",
    "model_type",
    "num_layers",
    "hidden_size",
    "labels",
    "cut",
    "planner",
    "planner_params",
    "rows",
    "budget",
    "cost_config",
    "arch",
}
