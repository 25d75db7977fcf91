"""The settings every training loop of the project shares, in one torch-free dataclass.

The server trainer (:class:`edgetune.train.TrainConfig`) and a device's personalization job
(:class:`device_sim.settings.PersonalizeConfig`) both derive from :class:`TrainingConfig`: the fields are
declared and checked here once; a subclass only adds its own fields and re-states the defaults that suit its
setting (a device trains a few hundred texts of one user for more epochs, with validation on by default).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

CACHE_PLACES = ("auto", "memory", "mmap")
# The metrics a run can select its best epoch on (edgetune.metrics computes them). Declared here, not there, so
# that reading a config (the command line builds one at start-up) does not import numpy.
METRICS = ("accuracy", "macro_f1")


@dataclass
class TrainingConfig:
    """Optimization, validation, feature cache and checkpoint settings of a top's training."""

    # Each field's ``help`` is the text of its command-line option (edgetune_cli.config_options builds the
    # options of `edgetune train` and `edgetune personalize` from these fields); ``choices``: the values
    # __post_init__ accepts.
    epochs: int = field(default=3, metadata={"help": "Training epochs (early stopping may end sooner)."})
    batch_size: int = field(default=16, metadata={"help": "Examples per optimizer step."})
    lr: float | None = field(
        default=None,
        metadata={
            "help": "Learning rate of the trained blocks or their adapters (default: the rule for what is trained, "
            "edgetune.learning_rates: 3e-4 up to half the blocks, down to 5e-5 for all; 5e-4 for adapters)."
        },
    )
    head_lr: float | None = field(
        default=None,
        metadata={
            "help": "Learning rate of the head and the final norm (default: the rule's head rate, 1e-3; 9e-3 when "
            "the head trains alone)."
        },
    )
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay."})
    warmup_ratio: float = field(
        default=0.06, metadata={"help": "Share of the steps over which the learning rate rises linearly."}
    )
    max_grad_norm: float | None = field(default=1.0, metadata={"help": "Gradient clipping norm (None: no clipping)."})
    seed: int = field(
        default=0, metadata={"help": "Seed of the head, adapters, batches, dropout and the validation split."}
    )
    val_fraction: float = field(
        default=0.0,
        metadata={"help": "Share of the training data held out to keep the best epoch and stop early (0: none)."},
    )
    patience: int | None = field(
        default=None,
        metadata={"help": "Stop after this many epochs without validation improvement (default: never stop early)."},
    )
    metric: str = field(
        default="macro_f1", metadata={"help": "Validation metric that picks the best epoch.", "choices": METRICS}
    )
    cache: str = field(
        default="auto",
        metadata={
            "help": "Feature cache: memory, mmap (a memory-mapped file in the output directory) or auto (memory "
            "when the features fit).",
            "choices": CACHE_PLACES,
        },
    )
    cache_dtype: str = field(default="float32", metadata={"help": "Cached feature storage: float32 or float16."})
    cache_batch_size: int = field(default=64, metadata={"help": "Texts per trunk call while the cache is built."})
    checkpoint_steps: int | None = field(
        default=None, metadata={"help": "Also checkpoint every N steps (always at each epoch's end)."}
    )
    progress: bool = field(default=True, metadata={"help": "Show progress bars."})

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
