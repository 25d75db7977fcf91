"""The settings every training loop of the project shares, in one torch-free dataclass.

The server trainer (:class:`edgetune.train.TrainConfig`) and a device's personalization job
(:class:`device_sim.settings.PersonalizeConfig`) both derive from :class:`TrainingConfig`: the fields are
declared and checked here once; a subclass only adds its own fields and re-states the defaults that suit its
setting (a device trains a few hundred texts of one user for more epochs, with validation on by default).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

CACHE_PLACES = ("auto", "memory", "mmap")
# The metrics a run can select its best epoch on (edgetune.metrics computes them). Declared here, not there, so
# that reading a config (the command line builds one at start-up) does not import numpy.
METRICS = ("accuracy", "macro_f1")


@dataclass
class TrainingConfig:
    """Optimization, validation, feature cache and checkpoint settings of a top's training."""

    epochs: int = 3
    batch_size: int = 16
    lr: float | None = None  # trained blocks (or their adapters); None: the rule in edgetune.learning_rates
    head_lr: float | None = None  # head and final norm; None: the rule's head rate
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    max_grad_norm: float | None = 1.0
    seed: int = 0
    val_fraction: float = 0.0  # held out of the training data for model selection / early stopping
    patience: int | None = None  # epochs without validation improvement before stopping
    metric: str = "macro_f1"
    cache: str = "auto"  # auto | memory | mmap
    cache_dtype: str = "float32"
    cache_batch_size: int = 64  # texts per trunk call while the cache is built
    checkpoint_steps: int | None = None  # also checkpoint every N steps (always at each epoch's end)
    progress: bool = True

    def __post_init__(self) -> None:
        if self.cache not in CACHE_PLACES:
            raise ValueError(f"cache must be one of {CACHE_PLACES}, got {self.cache!r}")
        if self.metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {self.metric!r}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"epochs and batch_size must be >= 1, got {self.epochs}, {self.batch_size}")
        if (self.lr is not None and self.lr <= 0) or (self.head_lr is not None and self.head_lr <= 0):
            raise ValueError("learning rates must be positive")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"patience must be >= 1, got {self.patience}")

    def shared_settings(self) -> dict[str, Any]:
        """The values of the fields declared here (what another config of the family takes over)."""
        return {f.name: getattr(self, f.name) for f in fields(TrainingConfig)}
