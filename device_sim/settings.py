"""How a device personalizes: one settings object for every training backend, torch-free.

:class:`PersonalizeConfig` is what ``edgetune personalize`` builds from its
flags and what :meth:`device_sim.device.Device.personalize` takes, whichever
backend trains (torch, executorch, executorch-cpp); the torch backend turns
it into the training loop's :class:`~edgetune.training_config.TrainConfig`,
the ExecuTorch backends read its fields directly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from edgetune.training_config import CACHE_PLACES, TrainConfig, TrainingConfig  # noqa: F401 (CACHE_PLACES re-exported)

# The configurations the device chooses between (besides the global top itself), cheapest first: ties on the
# inner validation split go to the cheaper one. "cut": "plan" (the package's cut, or ``config.cut``) or "head"
# (the head only); "prior": the global head with its bias fitted to the user's label prior
# (:func:`device_sim.guard.prior_shift`), no training. The learning rates are prior choices (the head rate 0.1
# from an earlier sweep on simulated BBC users); they were not re-checked on users held apart from the benchmark's.
DEFAULT_CANDIDATES: tuple[dict[str, Any], ...] = (
    {"name": "prior", "kind": "prior"},
    {"name": "head", "cut": "head", "head_lr": 0.03},
    {"name": "head-fast", "cut": "head", "head_lr": 0.1},
    {"name": "lora", "tuner": "lora", "tuner_params": {"r": 8}, "lr": 1e-3, "head_lr": 0.03},
    {"name": "block", "lr": 1e-4, "head_lr": 3e-3},  # the plan's blocks with the plan's tuner
)
CANDIDATE_KEYS = {"name", "kind", "cut", "tuner", "tuner_params", "lr", "head_lr"}


@dataclass
class PersonalizeConfig(TrainingConfig):
    """How a device trains; the defaults suit a few hundred examples of one user on a phone-class CPU (the
    shared fields: :class:`edgetune.training_config.TrainingConfig`; the defaults that differ are re-stated)."""

    # A re-stated field without a help of its own keeps the base's (edgetune_cli.config_options).
    epochs: int = 8
    lr: float | None = field(
        default=1e-4,
        metadata={
            "help": "Learning rate of the trained blocks or their adapters (a job that selects between candidates "
            "uses each candidate's own)."
        },
    )
    head_lr: float | None = field(  # None: lr
        default=3e-3,
        metadata={
            "help": "Learning rate of the head and the final norm (a job that selects between candidates uses each "
            "candidate's own)."
        },
    )
    val_fraction: float = 0.15
    patience: int | None = field(
        default=3,
        metadata={"help": "Stop after this many epochs without validation improvement (when the job validates)."},
    )
    metric: str = "accuracy"
    # Texts per trunk call: the trunk's activations, not its weights, set the job's peak memory (MiniLM,
    # 128 tokens, 200 texts: peak RSS 944 MB at 32, 783 MB at 8, same trunk time on 2 cores).
    cache_batch_size: int = 8
    cut: int | None = field(
        default=None,
        metadata={"help": "Train above this block (default: the package's cut; higher trains less)."},
    )
    tuner: str | None = field(default=None, metadata={"help": "Tuner of the trained blocks (default: the plan's)."})
    tuner_params: dict[str, Any] | None = field(default=None, metadata={"help": "The tuner's settings."})
    precision: str = field(
        default="fp32",
        metadata={"help": "Trunk that computes the features: fp32, or int8 (when the package has it)."},
    )
    text_column: str | None = field(default=None, metadata={"help": "Text column (default: the plan's)."})
    label_column: str | None = field(default=None, metadata={"help": "Label column (default: the plan's)."})
    # Robust defaults: choose between candidate configurations on an inner validation split.
    select: bool = field(
        default=True,
        metadata={
            "help": "Choose between candidate configurations on an inner validation split (off: train the one "
            "configuration that cut, tuner, lr and head_lr give)."
        },
    )
    candidates: tuple[dict[str, Any], ...] | None = field(
        default=None,
        metadata={"help": "The configurations a selecting job chooses between (None: DEFAULT_CANDIDATES)."},
    )
    # The do-no-harm guard (device_sim.guard).
    guard_fraction: float = field(
        default=0.2,
        metadata={
            "help": "Share of the data held out for the do-no-harm guard, which keeps the global model unless the "
            "personal one is significantly better there (0: no guard)."
        },
    )
    guard_alpha: float = field(
        default=0.05, metadata={"help": "Significance level of the guard's one-sided exact McNemar test."}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.guard_fraction < 1.0:
            raise ValueError(f"guard_fraction must be in [0, 1), got {self.guard_fraction}")
        if not 0.0 < self.guard_alpha < 1.0:
            raise ValueError(f"guard_alpha must be in (0, 1), got {self.guard_alpha}")
        if self.candidates is not None:
            self.candidates = tuple(dict(c) for c in self.candidates)
            names = [c.get("name") for c in self.candidates]
            if not names or None in names or len(set(names)) != len(names):
                raise ValueError("candidates need unique names (and at least one candidate)")
            for c in self.candidates:
                unknown = set(c) - CANDIDATE_KEYS
                if unknown:
                    raise ValueError(f"candidate {c['name']!r}: unknown keys {sorted(unknown)}")
                if c.get("kind", "train") not in ("train", "prior"):
                    raise ValueError(f"candidate {c['name']!r}: kind must be 'train' or 'prior'")

    @classmethod
    def plain(cls, **settings: Any) -> PersonalizeConfig:
        """Train exactly as configured: no selection, no guard (what a baseline or a swap's re-training needs)."""
        return cls(**{"select": False, "guard_fraction": 0.0, **settings})

    def train_config(self, validating: bool) -> TrainConfig:
        """The torch trainer's settings for this job (cached mode on the CPU; no patience without validation)."""
        shared = self.shared_settings()
        shared.update(
            val_fraction=self.val_fraction if validating else 0.0,
            patience=self.patience if validating else None,
            cache="memory" if self.cache == "auto" else self.cache,
        )
        return TrainConfig(**shared, mode="cached", device="cpu")
